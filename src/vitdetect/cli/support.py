"""The command line's plumbing: command order in --help, flags without <bool>, options described by the
settings models, and user errors as one line."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperGroup

from vitdetect import __version__
from vitdetect.errors import VitdetectError

# --help lists the commands in the order of the workflow; commands added later come after these.
WORKFLOW = ("download", "train", "evaluate", "predict", "plot")
F = TypeVar("F", bound=Callable[..., Any])


def _flag_without_metavar(option: Any) -> Any:
    if option is not None:
        option.metavar = ""  # a flag takes no value: no <bool> in --help
    return option


class WorkflowGroup(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: (WORKFLOW.index(name) if name in WORKFLOW else len(WORKFLOW)))

    def get_command(self, ctx: Any, name: str) -> Any:
        command = super().get_command(ctx, name)
        if command is not None:
            _flag_without_metavar(command.get_help_option(ctx))  # cached by the command
        return command

    def get_help_option(self, ctx: Any) -> Any:
        return _flag_without_metavar(super().get_help_option(ctx))


def user_errors(command: F) -> F:
    """Print a VitdetectError as one line on stderr and exit with its code: never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VitdetectError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # disk full, permission denied, ...: the system's reason and the path
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated) outside the training loop
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(getattr(exc, "exit_code", 130)) from None

    return wrapper  # type: ignore[return-value]


def described(settings: type, name: str, *flags: str, **kwargs: Any) -> Any:
    """A typer Option whose help and shown default come from the settings model: one place for both."""
    info = settings.model_fields[name]
    default = info.default if info.default_factory is None else info.default_factory()
    if isinstance(default, tuple):
        shown = ",".join(map(str, default)) or "none"
    else:
        shown = getattr(default, "value", default)
    if info.annotation is bool:
        kwargs.setdefault("metavar", "")  # a flag takes no value: no <bool> in --help
    text = escape(f"{info.description} (default: {shown})")  # help is rich markup: keep [onnx] as typed
    return typer.Option(None, *flags, help=text, show_default=False, **kwargs)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vitdetect {__version__}")
        raise typer.Exit()
