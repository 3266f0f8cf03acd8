"""What the commands print on stdout when they finish: rich tables and short lines."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from vitdetect.config.run_files import BEST_NAME

stdout = Console(highlight=False)


def print_evaluation_summary(result) -> None:
    metrics = result.metrics
    shown = lambda value: "n/a" if value is None else f"{value:.4f}"  # noqa: E731 - null: undefined
    table = Table(title=f"evaluation: {metrics['split']} split, {metrics['n_images']:,} images "
                  f"(positive class {metrics['positive_class']})", show_header=False)
    table.add_row("threshold", f"P(FAKE) >= {metrics['threshold']:.4g} is FAKE")
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc"):
        table.add_row(key.replace("_", " "), shown(metrics[key]))
    for key in ("log_loss", "brier_score", "ece"):
        table.add_row(key.replace("_", " "), f"{shown(metrics[key])} ({shown(metrics['uncalibrated'][key])} "
                      f"before temperature scaling)" if metrics["temperature"] != 1 else shown(metrics[key]))
    table.add_row("temperature", f"{metrics['temperature']:.4f}" + (" (not calibrated)" if metrics["temperature"]
                                                                    == 1 else ""))
    for target, point in metrics["tpr_at_fpr"].items():
        table.add_row(f"TPR at FPR <= {float(target):.0%}", "n/a" if point is None else
                      f"{point['tpr']:.4f} (threshold {point['threshold']:.4g}, FPR {point['fpr']:.4f})")
    table.add_row("wall time", f"{result.seconds:.1f} s ({result.images_per_second:,.0f} images/s scoring)")
    table.add_row("results", str(result.output_dir))
    stdout.print(table)
    per_class = Table(title="per class")
    for column in ("class", "precision", "recall", "f1", "support", "predicted REAL", "predicted FAKE"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name, row in zip(metrics["class_names"], metrics["confusion_matrix"], strict=True):
        scores = metrics["per_class"][name]
        per_class.add_row(f"true {name}", *(shown(scores[k]) for k in ("precision", "recall", "f1")),
                          f"{scores['support']:,}", *(f"{count:,}" for count in row))
    stdout.print(per_class)
    if metrics["selective"]:
        stdout.print(selective_table(metrics["selective"]))
    if result.stored_threshold:
        stored = result.stored_threshold
        stdout.print(f"stored threshold {stored['threshold']:.6g} in {metrics['checkpoint']} "
                     f"(FPR {stored['fpr']:.4f}, TPR {stored['tpr']:.4f} on this split; the metrics above "
                     "use it, so they are optimistic)")


def selective_table(rows: list[dict]) -> Table:
    """metrics.json's selective-prediction rows: what `predict --min-confidence` buys in accuracy and costs in
    images left UNSURE."""
    table = Table(title="selective prediction: the least confident images UNSURE")
    for column in ("coverage", "--min-confidence", "accuracy on the decided", "decided"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['coverage']:.1%}", f"{row['min_confidence']:.4g}", f"{row['accuracy']:.4f}",
                      f"{row['decided']:,}")
    return table


def print_manifest_diff(diff, dest: Path, shown: int = 10) -> None:
    for kind in ("missing", "extra", "changed"):
        paths = getattr(diff, kind)
        for path in paths[:shown]:
            typer.echo(f"{kind}: {path}")
        if len(paths) > shown:
            typer.echo(f"{kind}: ... and {len(paths) - shown:,} more")
    if diff.clean:
        typer.echo(f"{dest}: all {diff.files:,} files match the manifest")


def print_train_summary(result) -> None:
    best = result.best
    table = Table(title="training summary", show_header=False)
    table.add_row("best epoch", f"{result.state.best_epoch} of {result.state.epoch}"
                  + (" (early stop)" if result.stopped_early else ""))
    for key in ("val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1"):
        table.add_row(key.replace("_", " "), f"{best[key]:.4f}")
    if result.calibration:
        fit = result.calibration
        table.add_row("temperature", f"{fit.temperature:.4f} (validation NLL {fit.nll_before:.4f} -> "
                      f"{fit.nll_after:.4f})")
    table.add_row("trainable parameters", f"{result.trainable:,} of {result.total:,}")
    table.add_row("wall time", f"{result.seconds:.1f} s")
    table.add_row("checkpoint", str(result.output_dir / BEST_NAME))
    stdout.print(table)
