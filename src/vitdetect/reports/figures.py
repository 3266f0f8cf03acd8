"""What every figure shares: colours, the seaborn style, writing atomically in one of the figure formats, and the
list of what a plotting call wrote or skipped. No torch, no pyplot state (Agg rendering on `Figure` objects)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vitdetect.config.labels import CLASS_NAMES
from vitdetect.config.run_files import FIGURE_FORMATS
from vitdetect.errors import VitdetectError
from vitdetect.utils.atomic import atomic_write

DPI = 150
# seaborn's colour-blind palette: blue, vermillion, green, pink; dark grey for reference lines.
CLASS_COLOURS = dict(zip(CLASS_NAMES, ("#0173b2", "#d55e00"), strict=True))
SPLIT_COLOURS = {"train": "#029e73", "validation": "#cc78bc"}
GUIDE = "#404040"


@dataclass
class PlotResult:
    """The figures written, and a note for each one skipped because its inputs are missing."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, other: PlotResult) -> PlotResult:
        return PlotResult(self.written + other.written, self.skipped + other.skipped)


@contextmanager
def style() -> Iterator[None]:
    """seaborn's whitegrid look for the figures drawn inside, without changing global settings."""
    import seaborn as sns

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        yield


def save(path: Path, fmt: str, draw: Callable) -> Path:
    """Draw on a fresh Figure and write it atomically as path."""
    if fmt not in FIGURE_FORMATS:
        raise VitdetectError(f"unknown figure format '{fmt}' (choose from {', '.join(FIGURE_FORMATS)})")
    from matplotlib.figure import Figure

    with style():
        figure = Figure(figsize=(7, 5.5), layout="constrained")
        draw(figure)
        atomic_write(path, lambda tmp: figure.savefig(tmp, format=fmt, dpi=DPI))
    return path
