"""The files of a run's folder, in one registry: their names, which command writes each and what reads it back.

Every path that touches a run's folder asks this module: `train --overwrite` removes `RUN_OUTPUTS`, a new run
refuses a folder holding `RUN_EVIDENCE`, `vitdetect plot` and the trackers read the names below, and the table in
the documentation ("Output folders") is checked against `RUN_FILES` by the tests. A file that a command starts
writing into a run's folder is added here, or `--overwrite` leaves the old model's copy behind.

Example:
    >>> from vitdetect.config.run_files import RUN_FILES, BEST_NAME
    >>> [f.name for f in RUN_FILES if f.writer == "train"][:2]
    ['best_model.pth', 'last.pth']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_RUN_DIR = Path("results")  # where train writes and evaluate, predict and serve look by default
FIGURE_FORMATS = ("png", "svg", "pdf")

BEST_NAME = "best_model.pth"
LAST_NAME = "last.pth"
PRETRAINED_DIR_NAME = "best_model"
CONFIG_NAME = "config.json"
EPOCH_HISTORY_NAME = "history.csv"
BATCH_HISTORY_NAME = "batch_history.csv"
SKIPPED_NAME = "skipped_images.json"
TEACHER_NAME = "teacher.pth"
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.csv"
ROBUSTNESS_NAME = "robustness.json"

TRAINING_FIGURES = ("epoch_training_curves", "batch_training_curves")
EVALUATION_FIGURES = ("confusion_matrix", "roc_curve", "pr_curve", "score_histogram", "calibration", "risk_coverage")
ROBUSTNESS_FIGURE = "robustness"
ERRORS_FIGURE = "errors"


@dataclass(frozen=True)
class RunFile:
    """One entry of a run's folder. `name` is a figure's stem when `figure` (written as .png, .svg or .pdf);
    `evidence`: a new run into the folder would destroy it, so it is refused without --overwrite."""

    name: str
    writer: str
    reader: str
    evidence: bool = False
    figure: bool = False

    def paths(self) -> tuple[str, ...]:
        """The names this entry may take in the folder."""
        return tuple(f"{self.name}.{fmt}" for fmt in FIGURE_FORMATS) if self.figure else (self.name,)


RUN_FILES: tuple[RunFile, ...] = (
    RunFile(BEST_NAME, "train", "evaluate, predict, calibrate, export, serve", evidence=True),
    RunFile(LAST_NAME, "train", "train --resume", evidence=True),
    RunFile(PRETRAINED_DIR_NAME, "train", "from_pretrained, export", evidence=True),
    RunFile(CONFIG_NAME, "train", "train --resume, trackers"),
    RunFile(EPOCH_HISTORY_NAME, "train", "plot, train --resume", evidence=True),
    RunFile(BATCH_HISTORY_NAME, "train", "plot, train --resume", evidence=True),
    RunFile(TEACHER_NAME, "train --distill", "train --resume, train --teacher"),
    RunFile(SKIPPED_NAME, "train, evaluate", "you (images that could not be decoded)"),
    RunFile(METRICS_NAME, "evaluate", "plot, trackers", evidence=True),
    RunFile(PREDICTIONS_NAME, "evaluate", "plot", evidence=True),
    RunFile(ROBUSTNESS_NAME, "evaluate --robustness", "plot, trackers, benchmarks/robust_training.py", evidence=True),
    *(RunFile(name, "train", "you", figure=True) for name in TRAINING_FIGURES),
    *(RunFile(name, "evaluate", "you", figure=True) for name in EVALUATION_FIGURES),
    RunFile(ROBUSTNESS_FIGURE, "evaluate --robustness, plot", "you", figure=True),
    RunFile(ERRORS_FIGURE, "evaluate --explain-errors", "you", figure=True),
)
RUN_OUTPUTS: tuple[str, ...] = tuple(path for entry in RUN_FILES for path in entry.paths())
RUN_EVIDENCE: tuple[str, ...] = tuple(entry.name for entry in RUN_FILES if entry.evidence)


def markdown_table() -> str:
    """The registry as the Markdown table of the documentation's "Output folders" page (put there at build time
    by docs/hooks.py, so the page cannot drift from what --overwrite removes)."""
    rows = ["| file | written by | read by | a new run refuses the folder without --overwrite |",
            "| --- | --- | --- | --- |"]
    for entry in RUN_FILES:
        name = f"`{entry.name}.{{{','.join(FIGURE_FORMATS)}}}`" if entry.figure else f"`{entry.name}`"
        writers = ", ".join(f"`vitdetect {writer}`" for writer in entry.writer.split(", "))
        rows.append(f"| {name} | {writers} | {entry.reader} | {'yes' if entry.evidence else 'no'} |")
    return "\n".join(rows) + "\n"
