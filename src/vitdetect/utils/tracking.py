"""Experiment tracking, `--report-to tensorboard,mlflow,...`, through Accelerate's trackers.

Accelerate runs the trackers (`Accelerator(log_with=...)`, `init_trackers`, `log`); this module decides
what reaches them, in which run: the resolved settings as hyperparameters, batch and epoch metrics at the
global optimizer step, the best epoch, evaluation numbers and figures. Only the main process logs
(Accelerate's tracker calls do nothing on the others). Code for one tracker is kept to what Accelerate has
no API for: TensorBoard's run folder, MLflow's local store and finding a run by name, W&B's run id, images.

A run is its name. A training starts a new run under its name; a resumed training, and an evaluation given
that --run-name (with the same --logging-dir or tracking server), continue it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from vitdetect.config.run_files import ROBUSTNESS_NAME
from vitdetect.errors import UsageError, VitdetectError

PROJECT = "vitdetect"  # the MLflow experiment, the W&B project
MLFLOW_STORE = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
EXTRA = "pip install 'vitdetect[tracking]'"
INSTALL = {"tensorboard": EXTRA, "mlflow": EXTRA, "comet_ml": "pip install comet-ml"}  # else pip install NAME
EPOCH_KEYS = {"seconds": "epoch_seconds"}  # history.csv columns with another name in the trackers
BEST_KEYS = ("val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1")


def logging_dir(settings, output_dir: Path) -> Path:
    return settings.logging_dir or output_dir


def with_run_name(settings, folder: Path, *labels: str):
    """The settings with a run name when they report to a tracker: the given one, else the folder's name,
    the labels and the start time (a fresh run each time)."""
    if not settings.report_to or settings.run_name:
        return settings
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(folder).resolve().name).strip("-._")[:80] or PROJECT
    return settings.model_copy(update={"run_name": "-".join((stem, *labels, time.strftime("%Y%m%d-%H%M%S")))})


def training_options(settings, resumed_step: int | None) -> dict[str, Any]:
    """accelerator_options for `train`. TensorBoard hides a folder's events from purge_step on: a new training
    replaces an earlier run of its name, a resumed one the events of the epoch it was stopped in and repeats."""
    return accelerator_options(settings, settings.output_dir, 0 if resumed_step is None else resumed_step + 1)


def accelerator_options(settings, output_dir: Path, purge_step: int | None = None) -> dict[str, Any]:
    """Accelerator(...) arguments for settings.report_to, after checking that every tracker is installed."""
    if not settings.report_to:
        return {}
    check_trackers(settings.report_to)
    from accelerate.tracking import TensorBoardTracker
    from accelerate.utils import ProjectConfiguration

    folder = logging_dir(settings, output_dir)
    # Accelerate would name TensorBoard's folder after the project: built here, one folder per run.
    log_with = [TensorBoardTracker(settings.run_name, folder, purge_step=purge_step) if name == "tensorboard"
                else name for name in settings.report_to]
    return {"log_with": log_with,
            "project_config": ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(folder))}


def check_trackers(names: Iterable[str]) -> None:
    """One line before any work starts: an unknown tracker, or one whose package is missing."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    installed = {str(tracker) for tracker in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise UsageError(f"invalid value for --report-to: unknown tracker '{name}' (choose from "
                             f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}, or none)")
        if name not in installed:
            raise VitdetectError(f"--report-to {name} needs the {name} package: "
                                 f"{INSTALL.get(name, f'pip install {name}')}")
    if "mlflow" in names and not os.environ.get("MLFLOW_TRACKING_URI"):
        if not all(importlib.util.find_spec(module) for module in ("sqlalchemy", "alembic")):
            raise VitdetectError("--report-to mlflow keeps runs in a local SQLite store (no MLFLOW_TRACKING_URI "
                                 f"set), which needs SQLAlchemy and Alembic: {EXTRA}")


class Run:
    """The trackers' run, started on entering and finished on leaving, however the work ends. continues: join
    the run of this name where the tracker can find it, rather than start a new one."""

    def __init__(self, accelerator, settings, output_dir: Path, hyperparameters: dict[str, Any] | None = None,
                 continues: bool = True):
        self.accelerator = accelerator
        if not (settings.report_to and accelerator.is_main_process):
            return  # Accelerate's tracker calls do nothing on the other processes
        config = flatten_hyperparameters(hyperparameters) if hyperparameters else None
        try:
            options = run_options(settings.report_to, settings.run_name, logging_dir(settings, output_dir),
                                  continues)
            accelerator.init_trackers(PROJECT, config=config, init_kwargs=options)
        except Exception as exc:  # noqa: BLE001 - a server not reachable, a W&B run id taken, ...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VitdetectError(f"--report-to: the trackers could not start run '{settings.run_name}': "
                                 f"{reason}") from exc

    def log(self, values: dict[str, float], step: int | None = None) -> None:
        self.accelerator.log(values, step=step)

    def log_figures(self, paths: list[Path], step: int | None = None, folder: str = "figures") -> None:
        """Figures as images named FOLDER/STEM where the tracker takes images (as files in MLflow)."""
        for tracker in self.accelerator.trackers:
            if tracker.name in FIGURE_LOGGERS and paths:
                FIGURE_LOGGERS[tracker.name](tracker, paths, step, folder)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Not accelerator.end_training(): it also destroys the process group, which a Python caller running
        # evaluate after train in one launched process still needs.
        for tracker in self.accelerator.trackers:
            tracker.finish()


class TrainingRun(Run):
    """What `train` logs. A resumed run logs its hyperparameters again only if its run was not tracked
    before: MLflow refuses a changed value, and a resumed run may raise --epochs."""

    def __init__(self, accelerator, settings, config: dict[str, Any], resumed_settings: dict[str, Any] | None):
        tracked_before = bool(resumed_settings and resumed_settings.get("report_to")
                              and resumed_settings.get("run_name") == settings.run_name)
        super().__init__(accelerator, settings, settings.output_dir, None if tracked_before else config,
                         continues=resumed_settings is not None)

    def log_batch(self, row: dict[str, float], step: int) -> None:
        self.log({"batch/loss": row["loss"], "batch/accuracy": row["accuracy"]}, step)

    def log_epoch(self, row: dict[str, float], step: int) -> None:
        self.log({tracker_key(key): value for key, value in row.items()}, step)

    def log_summary(self, state, stopped_early: bool, figures: list[Path]) -> None:
        best = next(row for row in state.epochs if row["epoch"] == state.best_epoch)
        self.log({"best/epoch": state.best_epoch, **{f"best/{tracker_key(key)}": best[key] for key in BEST_KEYS},
                  "best/stopped_early": int(stopped_early)}, state.global_step)
        self.log_figures(figures, state.global_step)


def log_evaluation(accelerator, settings, metrics: dict[str, Any], output_dir: Path, figures: list[Path]) -> None:
    """metrics.json's numbers, the robustness table where there is one, and the figures: to the run named
    --run-name (the training run's name continues that run), else to a run of its own."""
    if not settings.report_to:
        return
    values = numbers({**metrics, "confusion_matrix": named_confusion_matrix(metrics)})
    robustness = output_dir / ROBUSTNESS_NAME
    if robustness.is_file():
        values.update(numbers(json.loads(robustness.read_text(encoding="utf-8")), "robustness/"))
    prefix = f"eval/{metrics['split']}/"
    with Run(accelerator, settings, output_dir) as run:
        run.log({prefix + key: value for key, value in values.items()})
        run.log_figures(figures, folder=prefix + "figures")


def tracker_key(column: str) -> str:
    """history.csv's column as a tracker key: train_loss -> train/loss, val_f1 -> val/f1."""
    if column.startswith(("train_", "val_")):
        return column.replace("_", "/", 1)
    return EPOCH_KEYS.get(column, column)


def flatten(values: dict[str, Any] | list[Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists of containers as one level, keys joined by '/'; lists of plain values stay."""
    flat: dict[str, Any] = {}
    for key, value in values.items() if isinstance(values, dict) else enumerate(values):
        nested = isinstance(value, dict) or (isinstance(value, list | tuple)
                                             and any(isinstance(item, dict | list | tuple) for item in value))
        if nested:
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flatten_hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """config.json as flat hyperparameters: the settings by their own names, the rest under its section."""
    settings = config.get("settings", {})
    rest = {key: value for key, value in config.items() if key != "settings"}
    return {key: ",".join(map(str, value)) if isinstance(value, list | tuple) else value
            for key, value in flatten({**settings, **rest}).items()}


def numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested result (null, text and flags left out)."""
    return {key: value for key, value in flatten(values, prefix).items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


def named_confusion_matrix(metrics: dict[str, Any]) -> dict[str, dict[str, int]]:
    """[[REAL as REAL, REAL as FAKE], ...] as {"REAL": {"REAL": n, "FAKE": n}, ...}: rows true, keys predicted."""
    names = metrics["class_names"]
    return {true: dict(zip(names, row, strict=True)) for true, row in zip(names, metrics["confusion_matrix"],
                                                                           strict=True)}


def run_options(names: tuple[str, ...], run_name: str, folder: Path, continues: bool) -> dict[str, dict[str, Any]]:
    """init_trackers' per-tracker options: the run's name, and the run of that name when continuing it."""
    options: dict[str, dict[str, Any]] = {}
    if "mlflow" in names:
        options["mlflow"] = mlflow_options(run_name, folder, continues)
    if "wandb" in names:  # the run id is the name: a new run refuses a taken one
        folder.mkdir(parents=True, exist_ok=True)
        options["wandb"] = {"name": run_name, "id": run_name, "resume": "allow" if continues else "never",
                            "dir": str(folder)}
    return options


def mlflow_options(run_name: str, folder: Path, continues: bool) -> dict[str, Any]:
    """The run's name, and when continuing, the latest MLflow run of that name if there is one. Without a
    tracking server (MLFLOW_TRACKING_URI), runs go to a SQLite store and artifacts to a folder, both in the
    logging dir: nothing touches the network."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # read when mlflow is first imported
    import mlflow

    options: dict[str, Any] = {"run_name": run_name}
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        folder.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(f"sqlite:///{(folder / MLFLOW_STORE).resolve()}")
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # mlflow exports it; the next run would take it for the user's
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating tables...": not news
        options["logging_dir"] = str((folder / MLFLOW_ARTIFACTS).resolve())  # artifact root of a new experiment
    experiment = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT))
    if continues and experiment is not None:
        runs = mlflow.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                                  order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        options["run_id"] = runs[0].info.run_id if runs else None
    return options


def read_rgb(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def pngs(paths: list[Path]) -> list[Path]:
    return [path for path in paths if path.suffix.lower() == ".png"]


def tensorboard_images(tracker, paths: list[Path], step: int | None, folder: str) -> None:
    tracker.log_images({f"{folder}/{path.stem}": read_rgb(path)[None] for path in pngs(paths)}, step,
                       dataformats="NHWC")


def wandb_images(tracker, paths: list[Path], step: int | None, folder: str) -> None:
    tracker.log_images({f"{folder}/{path.stem}": [read_rgb(path)] for path in pngs(paths)}, step)


def mlflow_files(tracker, paths: list[Path], step: int | None, folder: str) -> None:
    for path in paths:
        tracker.log_artifact(str(path), folder)


FIGURE_LOGGERS: dict[str, Callable[[Any, list[Path], int | None, str], None]] = {
    "tensorboard": tensorboard_images, "wandb": wandb_images, "mlflow": mlflow_files,
}
