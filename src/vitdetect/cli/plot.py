"""`vitdetect plot`: rebuild a run's figures from its saved results (no torch)."""

from __future__ import annotations

from pathlib import Path

import typer

from vitdetect.cli.summaries import stdout
from vitdetect.cli.support import described, user_errors
from vitdetect.config.commands import FigureFormat, PlotSettings
from vitdetect.config.settings import build_settings


@user_errors
def plot(
    results_dir: Path = described(PlotSettings, "results_dir", "--results-dir", "--results_dir"),
    format: FigureFormat = described(PlotSettings, "format", "--format"),
) -> None:
    """Rebuild every figure from the saved history, metrics.json and predictions.csv (no model, no torch)."""
    settings = build_settings(PlotSettings, None, **locals())
    from vitdetect.reports.plots import all_figures

    result = all_figures(settings.results_dir, settings.format)
    for note in result.skipped:
        typer.echo(f"note: {note}", err=True)
    for path in result.written:
        stdout.print(f"wrote {path}")
