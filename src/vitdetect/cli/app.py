"""The `vitdetect` Typer app: its commands (one module each in this package), and the console-script entry.

Each command parses flags into settings, calls the library and prints the result. Heavy libraries (torch,
transformers) are imported inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import typer

try:  # typer >= 0.20 ships its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:
    from click.exceptions import ClickException, NoArgsIsHelpError
from vitdetect.cli.calibrate import calibrate
from vitdetect.cli.download import download
from vitdetect.cli.evaluate import evaluate
from vitdetect.cli.export import export
from vitdetect.cli.plot import plot
from vitdetect.cli.predict import predict
from vitdetect.cli.serve import serve
from vitdetect.cli.support import WorkflowGroup, version_callback
from vitdetect.cli.train import train
from vitdetect.errors import Terminated

app = typer.Typer(
    name="vitdetect",
    cls=WorkflowGroup,
    help="Fine-tune a Vision Transformer to tell real photographs from AI-generated images (CIFAKE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, metavar="",
                                 help="Show the version and exit."),
) -> None:
    """Fine-tune a Vision Transformer to tell real photographs from AI-generated images (CIFAKE)."""


app.command()(train)
app.command()(predict)
app.command()(serve)
app.command()(evaluate)
app.command()(calibrate)
app.command()(plot)
app.command()(export)
app.command()(download)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: usage errors become one line on stderr with exit code 2."""
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        code = app(args=argv, standalone_mode=False)
    except NoArgsIsHelpError as exc:
        typer.echo(exc.format_message())
        code = 0
    except ClickException as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        code = exc.exit_code
    except typer.Abort:
        typer.echo("error: interrupted", err=True)
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.exit(code or 0)


def raise_terminated(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C: atomic writes remove their temp files, the exit code is 143."""
    raise Terminated
