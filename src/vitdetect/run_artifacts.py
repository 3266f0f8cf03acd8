"""What a training run leaves in its output folder: checkpoints, config.json and the history CSVs,
and reading them back for `vitdetect train --resume`."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vitdetect.atomic import atomic_write_text
from vitdetect.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    PRETRAINED_DIR_NAME,
    load_checkpoint,
    model_payload,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    save_pretrained_dir,
)
from vitdetect.errors import UsageError, VitdetectError
from vitdetect.metrics import BATCH_HISTORY_NAME, EPOCH_HISTORY_NAME
from vitdetect.settings import TrainSettings, build_settings
from vitdetect.transforms import Preprocessing

CONFIG_NAME = "config.json"
ARTIFACT_NAMES = (BEST_NAME, LAST_NAME, PRETRAINED_DIR_NAME, CONFIG_NAME, EPOCH_HISTORY_NAME, BATCH_HISTORY_NAME)
# Settings a resumed run may change: none of them alters what the finished run means (calibrate acts after it).
RESUMABLE_CHANGES = frozenset({"epochs", "quiet", "num_workers", "cache_dir", "calibrate"})


@dataclass
class TrainState:
    """Everything that changes from epoch to epoch; saved in last.pth."""

    epoch: int = 0  # the last completed epoch
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    epochs: list[dict[str, float]] = field(default_factory=list)
    batches: list[dict[str, float]] = field(default_factory=list)


def save_best(output_dir: Path, model, settings, prep, epoch: int, metrics: dict[str, float]) -> None:
    save_checkpoint(output_dir / BEST_NAME, model_payload(model, settings.to_json_dict(), prep, epoch, metrics))
    save_pretrained_dir(output_dir / PRETRAINED_DIR_NAME, model, prep)


def save_last(output_dir: Path, model, settings, prep, state: TrainState, optimizer, scheduler, accelerator):
    payload = model_payload(model, settings.to_json_dict(), prep, state.epoch, state.epochs[-1])
    payload.update(
        kind="last",
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        scaler=accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        rng=rng_state(),
        train_state={"epoch": state.epoch, "best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch,
                     "bad_epochs": state.bad_epochs},
        history={"epochs": state.epochs, "batches": state.batches},
    )
    save_checkpoint(output_dir / LAST_NAME, payload)


def restore_training(resumed: dict[str, Any], optimizer, scheduler, accelerator) -> TrainState:
    optimizer.load_state_dict(resumed["optimizer"])
    scheduler.load_state_dict(resumed["scheduler"])
    if accelerator.scaler is not None and resumed.get("scaler"):
        accelerator.scaler.load_state_dict(resumed["scaler"])
    restore_rng_state(resumed["rng"])
    saved = resumed["train_state"]
    history = resumed["history"]
    return TrainState(saved["epoch"], saved["best_val_loss"], saved["best_epoch"], saved["bad_epochs"],
                      list(history["epochs"]), list(history["batches"]))


def resume_settings(checkpoint: Path, flags: dict[str, Any]) -> TrainSettings:
    """The settings saved in last.pth, with the given flags applied where they keep the run's meaning."""
    saved = load_checkpoint(checkpoint, kind="last")["settings"]
    try:
        base = TrainSettings(**saved)
    except (TypeError, ValidationError):
        raise VitdetectError(f"cannot resume from {checkpoint}: its saved settings are not valid for this "
                             "version of vitdetect") from None
    given = {name: value for name, value in flags.items() if value is not None}
    requested = build_settings(TrainSettings, None, **{**base.model_dump(), **given})
    refused = sorted(name for name in given
                     if getattr(requested, name) != getattr(base, name) and name not in RESUMABLE_CHANGES)
    if refused:
        names = ", ".join("--" + name.replace("_", "-") for name in refused)
        raise UsageError(f"cannot change {names} when resuming (the run would mean something else); "
                         f"only --epochs and output options may change")
    return requested


def write_config(output_dir: Path, settings: TrainSettings, prep: Preprocessing, trainable: int, total: int,
                 processes: int) -> None:
    resolved = {
        "settings": settings.to_json_dict(),
        "preprocessing": prep.to_dict(),
        "parameters": {"trainable": trainable, "total": total},
        "processes": processes,
        "images_per_step": processes * settings.batch_size,
    }
    atomic_write_text(output_dir / CONFIG_NAME, json.dumps(resolved, indent=2) + "\n")


def write_history(output_dir: Path, state: TrainState) -> None:
    atomic_write_text(output_dir / EPOCH_HISTORY_NAME, rows_to_csv(state.epochs))
    atomic_write_text(output_dir / BATCH_HISTORY_NAME, rows_to_csv(state.batches))


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()

