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

from vitdetect.config.run_files import (
    BATCH_HISTORY_NAME,
    BEST_NAME,
    CONFIG_NAME,
    EPOCH_HISTORY_NAME,
    LAST_NAME,
    PRETRAINED_DIR_NAME,
    RUN_EVIDENCE,
    RUN_OUTPUTS,
)
from vitdetect.config.settings import Schedule, TrainSettings, build_settings
from vitdetect.data.transforms import Preprocessing
from vitdetect.errors import UsageError, VitdetectError
from vitdetect.models.checkpoint import (
    load_checkpoint,
    model_payload,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    save_pretrained_dir,
)
from vitdetect.utils.atomic import atomic_write_text, remove_leftovers, remove_path

# Settings a resumed run may change: none of them alters what the finished run means.
RESUMABLE_CHANGES = frozenset({"epochs", "quiet", "num_workers", "cache_dir", "report_to", "run_name", "logging_dir",
                               "calibrate"})


@dataclass
class TrainState:
    """Everything that changes from epoch to epoch; saved in last.pth."""

    epoch: int = 0  # the last completed epoch
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    global_step: int = 0  # optimizer steps (per process) up to the end of the last completed epoch
    epochs: list[dict[str, float]] = field(default_factory=list)
    batches: list[dict[str, float]] = field(default_factory=list)


def prepare_output_dir(output_dir: Path, overwrite: bool, resuming: bool) -> None:
    """Ready output_dir for a run; call it holding the folder's lock.

    A folder that holds a run is refused unless overwrite (its outputs are removed first) or resuming (a
    resumed run continues in its folder). Temp files that a killed run left are removed in every case.
    """
    found = [] if resuming else [name for name in RUN_EVIDENCE if (output_dir / name).exists()]
    if found and not overwrite:
        ways = ["--overwrite to replace it", "--output-dir to train into a new folder"]
        if LAST_NAME in found:
            ways.append(f"--resume {output_dir / LAST_NAME} to continue it")
        raise VitdetectError(f"output dir {output_dir} already holds a run ({', '.join(found)}): pass "
                             f"{', '.join(ways[:-1])}, or {ways[-1]}")
    if overwrite and not resuming:
        for name in RUN_OUTPUTS:
            remove_path(output_dir / name)
    remove_leftovers(output_dir, RUN_OUTPUTS)


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
                     "bad_epochs": state.bad_epochs, "global_step": state.global_step},
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
                      resumed_step(resumed), list(history["epochs"]), list(history["batches"]))


def resumed_step(resumed: dict[str, Any] | None) -> int | None:
    """The global step a resumed run starts from; None for a fresh run."""
    return None if resumed is None else resumed["train_state"].get("global_step", 0)  # 0: vitdetect 0.1


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
                     if not same_setting(getattr(requested, name), getattr(base, name))
                     and name not in RESUMABLE_CHANGES)
    if refused:
        names = ", ".join("--" + name.replace("_", "-") for name in refused)
        raise UsageError(f"cannot change {names} when resuming (the run would mean something else); "
                         f"only --epochs and output options may change")
    if base.schedule == Schedule.cosine and requested.epochs != base.epochs:
        raise UsageError(
            f"cannot change --epochs from {base.epochs} to {requested.epochs} when resuming a run with the cosine "
            f"schedule: its learning rate decays to 0 over the planned {base.epochs} epochs, so the resumed run "
            f"would be neither that run nor a {requested.epochs}-epoch one; start a new run with --epochs "
            f"{requested.epochs} (runs with --schedule constant can be extended)"
        )
    return requested


def same_setting(requested: Any, saved: Any) -> bool:
    """Equal settings; paths count as equal when they name the same place (runs/x and /abs/runs/x)."""
    if isinstance(requested, Path) and isinstance(saved, Path):
        return requested.resolve() == saved.resolve()
    return requested == saved


def resolved_config(settings: TrainSettings, prep: Preprocessing, trainable: int, total: int,
                    processes: int, teacher: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json: the run's settings and what they resolved to (teacher: where a --distill run's teacher comes
    from); also its hyperparameters in the trackers."""
    return {
        "settings": settings.to_json_dict(),
        "preprocessing": prep.to_dict(),
        "parameters": {"trainable": trainable, "total": total},
        "processes": processes,
        "images_per_step": processes * settings.batch_size,
        **({"teacher": teacher} if teacher else {}),
    }


def write_config(output_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_text(output_dir / CONFIG_NAME, json.dumps(config, indent=2) + "\n")


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

