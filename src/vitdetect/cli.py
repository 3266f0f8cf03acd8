"""The `vitdetect` command line: parse flags, build settings, call the core, print results.

Heavy libraries (torch, transformers) are imported inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from vitdetect import __version__

try:  # typer >= 0.20 ships its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:
    from click.exceptions import ClickException, NoArgsIsHelpError
from vitdetect.errors import VitdetectError
from vitdetect.settings import MixedPrecision, Schedule, TrainMode, TrainSettings, build_settings

app = typer.Typer(
    name="vitdetect",
    help="Fine-tune a Vision Transformer to tell real photographs from AI-generated images (CIFAKE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stdout = Console(highlight=False)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Print a VitdetectError as one line on stderr and exit with its code: never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VitdetectError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def described(settings: type, name: str, *flags: str, **kwargs: Any) -> Any:
    """A typer Option whose help and shown default come from the settings model: one place for both."""
    info = settings.model_fields[name]
    default = info.default if info.default_factory is None else info.default_factory()
    shown = getattr(default, "value", default)
    return typer.Option(None, *flags, help=f"{info.description} [default: {shown}]", show_default=False, **kwargs)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vitdetect {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """Fine-tune a Vision Transformer to tell real photographs from AI-generated images (CIFAKE)."""


@app.command()
@user_errors
def train(
    data_dir: Path = described(TrainSettings, "data_dir", "--data-dir", "--data_dir"),
    output_dir: Path = described(TrainSettings, "output_dir", "--output-dir", "--output_dir"),
    model: str = described(TrainSettings, "model", "--model"),
    train_mode: TrainMode = described(TrainSettings, "train_mode", "--train-mode"),
    last_blocks: int = described(TrainSettings, "last_blocks", "--last-blocks"),
    epochs: int = described(TrainSettings, "epochs", "--epochs"),
    batch_size: int = described(TrainSettings, "batch_size", "--batch-size", "--batch_size"),
    lr: float = described(TrainSettings, "lr", "--lr", "--learning-rate"),
    weight_decay: float = described(TrainSettings, "weight_decay", "--weight-decay"),
    schedule: Schedule = described(TrainSettings, "schedule", "--schedule"),
    warmup_ratio: float = described(TrainSettings, "warmup_ratio", "--warmup-ratio"),
    grad_clip: float = described(TrainSettings, "grad_clip", "--grad-clip"),
    patience: int = described(TrainSettings, "patience", "--patience"),
    val_fraction: float = described(TrainSettings, "val_fraction", "--val-fraction", "--val_fraction"),
    seed: int = described(TrainSettings, "seed", "--seed"),
    augment: bool = described(TrainSettings, "augment", "--augment/--no-augment"),
    rotation_degrees: float = described(TrainSettings, "rotation_degrees", "--rotation-degrees"),
    feature_cache: bool = described(TrainSettings, "feature_cache", "--feature-cache/--no-feature-cache"),
    feature_views: int = described(TrainSettings, "feature_views", "--feature-views"),
    mixed_precision: MixedPrecision = described(TrainSettings, "mixed_precision", "--mixed-precision"),
    compile: bool = described(TrainSettings, "compile", "--compile/--no-compile"),
    cpu: bool = described(TrainSettings, "cpu", "--cpu/--no-cpu"),
    num_workers: int = described(TrainSettings, "num_workers", "--num-workers"),
    log_every: int = described(TrainSettings, "log_every", "--log-every"),
    max_images: int = described(TrainSettings, "max_images", "--max-images"),
    cache_dir: Path = described(TrainSettings, "cache_dir", "--cache-dir"),
    quiet: bool = described(TrainSettings, "quiet", "--quiet/--no-quiet", "-q"),
    config: Path = typer.Option(None, "--config", help="TOML or YAML file with the same keys; flags override it."),
    resume: Path = typer.Option(None, "--resume", help="Continue a run from its last.pth (e.g. results/last.pth)."),
) -> None:
    """Fine-tune the ViT on DATA_DIR/train (80/20 stratified train/validation split)."""
    flags = {k: v for k, v in locals().items() if k not in {"config", "resume"}}
    from vitdetect import train as training

    if resume is not None:
        settings = training.resume_settings(resume, flags)
    else:
        settings = build_settings(TrainSettings, config, **flags)
    result = training.train(settings, resume=resume)
    print_train_summary(result)


def print_train_summary(result) -> None:
    best = result.best
    table = Table(title="training summary", show_header=False)
    table.add_row("best epoch", f"{result.state.best_epoch} of {result.state.epoch}"
                  + (" (early stop)" if result.stopped_early else ""))
    for key in ("val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1"):
        table.add_row(key.replace("_", " "), f"{best[key]:.4f}")
    table.add_row("trainable parameters", f"{result.trainable:,} of {result.total:,}")
    table.add_row("wall time", f"{result.seconds:.1f} s")
    table.add_row("checkpoint", str(result.output_dir / "best_model.pth"))
    stdout.print(table)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: usage errors become one line on stderr with exit code 2."""
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
    sys.exit(code or 0)
