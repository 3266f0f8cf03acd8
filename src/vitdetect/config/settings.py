"""Settings: the shared base, training's settings, and reading them from flags and a config file.

Config flows one way: CLI flags and an optional config file -> these pydantic models -> the core. The other
commands' settings are in command_settings.py. Both stay cheap to import (no torch), so that `vitdetect --help`
is instant.
"""

from __future__ import annotations

import json
import os
import re
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from vitdetect.config.presets import recipe_for
from vitdetect.config.run_files import DEFAULT_RUN_DIR
from vitdetect.errors import UsageError

DEFAULT_MODEL = "google/vit-base-patch16-224"



# NumPy seeds must stay below 2**32 after adding the epoch and process index.
MAX_SEED = 2**31 - 1
MAX_BATCH_SIZE = 2**20
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Allowed (lowest, highest) of the robust-training ranges: JPEG quality 1-100; a blur sigma above 0 and
# at most 10 pixels of the stored image (beyond that a 32x32 image is a flat colour).
RANGE_LIMITS = {"augment_jpeg_quality": (1.0, 100.0), "augment_blur_sigma": (0.01, 10.0),
                "augment_downscale_factor": (1.0, 16.0)}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vitdetect"


class TrainMode(str, Enum):
    head = "head"
    full = "full"
    last_blocks = "last-blocks"


class MixedPrecision(str, Enum):
    auto = "auto"
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True, validate_default=True,
                              allow_inf_nan=False)

    def to_json_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


class _TrackingSettings(_Settings):
    """Where `train` and `evaluate` report their numbers, through Accelerate's experiment trackers."""

    report_to: tuple[str, ...] = Field(
        (), description="Experiment trackers, comma-separated: tensorboard, mlflow, wandb, or any other that "
        "Accelerate supports (comet_ml, aim, clearml, dvclive, ...); none: no tracker."
    )
    run_name: str | None = Field(
        None, description="Name of the run in the trackers; the same name continues the same run (unset: the output "
        "folder's name and the start time).",
    )
    logging_dir: Path | None = Field(
        None, description="Folder for the trackers that write files (TensorBoard events, the MLflow store); "
        "unset: the output dir."
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _tracker_names(cls, value: Any) -> Any:
        names = value.split(",") if isinstance(value, str) else value
        if not isinstance(names, list | tuple):
            return value
        names = [str(name).strip().lower() for name in names]
        if names in (["none"], [""]):
            return ()
        if "none" in names or "" in names:
            raise ValueError("give tracker names separated by commas, or none")
        return tuple(dict.fromkeys(names))

    @field_validator("run_name")
    @classmethod
    def _safe_run_name(cls, value: str | None) -> str | None:
        # It names a folder (TensorBoard) and a run id (W&B): no separators, nothing to escape.
        if value is not None and not RUN_NAME.fullmatch(value):
            raise ValueError("use letters, digits, '_', '.' and '-', starting with a letter or digit, at most "
                             "128 characters")
        return value


class TrainSettings(_TrackingSettings):
    """`vitdetect train`. Defaults are the reference recipe: frozen backbone, head only.

    Each field is a flag of `vitdetect train` with underscores for dashes (`--batch-size` is `batch_size`), with the
    same default and the same description (`vitdetect train --help`); a `scratch:` preset in `model` brings its recipe
    for every field not given. Settings are validated when made and cannot be changed afterwards.

    Examples:
        >>> from vitdetect import TrainSettings
        >>> settings = TrainSettings(model="scratch:pvt-v2-32", output_dir="runs/pvt")
        >>> settings.epochs, settings.lr, settings.train_mode  # the preset's recipe
        (40, 0.002, 'full')
    """

    data_dir: Path = Field(Path("data/cifake"), description="CIFAKE root holding train/{REAL,FAKE}.")
    output_dir: Path = Field(DEFAULT_RUN_DIR, description="Where checkpoints, history and figures go.")
    overwrite: bool = Field(
        False, description="Replace the run already in the output dir (its checkpoints, history, metrics and "
        "figures) instead of refusing to train there."
    )
    model: str = Field(
        DEFAULT_MODEL,
        description="Hub id, local save_pretrained directory, or scratch preset (e.g. scratch:vit-tiny-32; "
        "presets default to full training, lr 5e-4, weight decay 0.05, cosine schedule, 10% warmup, flip-only "
        "augmentation).",
    )
    train_mode: TrainMode = Field(
        TrainMode.head, description="head: backbone frozen; full: everything; last-blocks: last K blocks + head."
    )
    last_blocks: int = Field(2, ge=1, description="K for --train-mode last-blocks.")
    epochs: int = Field(2, ge=1, description="Maximum number of epochs.")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH_SIZE, description="Images per batch and per process.")
    lr: float = Field(2e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases and LayerNorm).")
    schedule: Schedule = Field(Schedule.constant, description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps spent warming up (cosine).")
    grad_clip: float = Field(1.0, ge=0, description="Gradient-norm clipping; 0 turns it off.")
    patience: int = Field(5, ge=1, description="Early stopping: epochs without a better validation loss.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of train held out for validation.")
    seed: int = Field(42, ge=0, le=MAX_SEED,
                      description="Seed for the split, initialisation, shuffling, augmentation.")
    augment: bool = Field(True, description="Random flip, rotation and colour jitter on training images.")
    rotation_degrees: float = Field(10.0, ge=0, le=180, description="RandomRotation range, in degrees.")
    color_jitter: bool = Field(True, description="ColorJitter (brightness, contrast, saturation, hue) in augmentation.")
    crop_padding: int = Field(0, ge=0, le=16, description="Random crop at the stored size after reflect-padding "
                              "by this many pixels (0: off); shifts the image without resampling it.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the training loss "
                                   "(validation loss stays plain cross-entropy).")
    augment_jpeg: float = Field(
        0.0, ge=0, le=1, description="Robust training: probability that a training image is JPEG re-compressed "
        "(kornia RandomJPEG, on the stored image before the resize).",
    )
    augment_jpeg_quality: tuple[float, float] = Field(
        (30.0, 95.0), description="Robust training: the JPEG quality range of --augment-jpeg, drawn uniformly."
    )
    augment_blur: float = Field(
        0.0, ge=0, le=1, description="Robust training: probability that a training image is Gaussian-blurred "
        "(kornia RandomGaussianBlur, on the stored image before the resize).",
    )
    augment_blur_sigma: tuple[float, float] = Field(
        (0.1, 2.0), description="Robust training: the blur sigma range of --augment-blur, in stored-image pixels, "
        "drawn uniformly."
    )
    augment_downscale: float = Field(
        0.0, ge=0, le=1, description="Robust training: probability that a training image is down-scaled and "
        "scaled back up (antialiased bilinear, as the robustness suite's down-scale family).",
    )
    augment_downscale_factor: tuple[float, float] = Field(
        (1.5, 4.0), description="Robust training: the factor range of --augment-downscale (2: half the side), "
        "drawn uniformly per batch."
    )
    distill: bool = Field(
        False, description="Knowledge distillation: first train the small CNN teacher (288k parameters) on the same "
        "training split, then train the model on the labels mixed with the teacher's softened probabilities."
    )
    distill_alpha: float = Field(0.5, ge=0, le=1, description="--distill: weight of the teacher's term in the "
                                 "training loss (the labels get 1 - alpha).")
    distill_temperature: float = Field(2.0, gt=0, le=20, description="--distill: temperature that softens both "
                                       "probability distributions in the teacher's term.")
    teacher_epochs: int = Field(12, ge=1, description="--distill: epochs of the teacher's training.")
    teacher: Path | None = Field(
        None, description="--distill: distil from this teacher.pth of an earlier run instead of training one (it "
        "must have been trained on images of this run's size and labels); it is copied into the output dir."
    )
    feature_cache: bool = Field(
        True, description="Head-only mode: run the frozen backbone once per image view, then train the head."
    )
    feature_views: int = Field(
        1, ge=1, le=100, description="Feature cache: augmented views per training image, computed once; epoch e "
        "uses view e mod V. More views, more augmentation diversity, V times the one-time backbone cost."
    )
    mixed_precision: MixedPrecision = Field(
        MixedPrecision.auto, description="auto: bf16 on GPUs that support it, else fp16 on GPU, none on CPU."
    )
    compile: bool = Field(False, description="torch.compile the model.")
    cpu: bool = Field(False, description="Train on the CPU even when a GPU is available.")
    num_workers: int = Field(0, ge=0, le=256,
                             description="DataLoader workers (batches are gathered from memory).")
    log_every: int = Field(10, ge=1, description="Record batch-wise loss and accuracy every N batches.")
    max_images: int | None = Field(
        None, ge=2, description="Use at most N training images (stratified sample), for quick runs."
    )
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Decoded-image cache.")
    calibrate: bool = Field(
        True, description="After training, fit a temperature on the validation split so P(FAKE) is calibrated "
        "(stored in best_model.pth); off: T = 1."
    )
    quiet: bool = Field(False, description="Print only errors and the final summary.")

    @field_validator("augment_jpeg_quality", "augment_blur_sigma", "augment_downscale_factor")
    @classmethod
    def _increasing_range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        low, high = value
        lowest, highest = RANGE_LIMITS[info.field_name]
        if not lowest <= low <= high <= highest:
            raise ValueError(f"needs LOW HIGH with {lowest:g} <= LOW <= HIGH <= {highest:g}")
        return value

    @model_validator(mode="after")
    def _robust_augmentations_need_augment(self) -> TrainSettings:
        if not self.augment and (self.augment_jpeg or self.augment_blur or self.augment_downscale):
            raise UsageError("--augment-jpeg, --augment-blur and --augment-downscale are augmentations: they cannot "
                             "be combined with --no-augment")
        return self

    @model_validator(mode="after")
    def _distill_needs_pixels(self) -> TrainSettings:
        if self.distill and self.train_mode == TrainMode.head:
            raise UsageError("--distill trains on images, not on cached features: use --train-mode full or "
                             "last-blocks")
        return self

    @model_validator(mode="after")
    def _teacher_needs_distill(self) -> TrainSettings:
        if self.teacher is not None and not self.distill:
            raise UsageError("--teacher is the teacher of --distill: add --distill (or drop --teacher)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _scratch_recipe(cls, values: Any) -> Any:
        if isinstance(values, dict):
            return {**recipe_for(str(values.get("model", ""))), **values}
        return values


S = TypeVar("S", bound=_Settings)


def read_config_file(path: Path) -> dict[str, Any]:
    """Keys of a TOML or YAML file, with dashes read as underscores (`batch-size` = `batch_size`)."""
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise UsageError(f"config file must be .toml, .yaml or .yml: {path}")
    except UsageError:
        raise
    except Exception as exc:  # the parsers raise their own error types
        raise UsageError(f"cannot parse config file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a table of settings")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def build_settings(cls: type[S], config_file: Path | None = None, **flags: Any) -> S:
    """Settings from the config file, overridden by the flags that were given (not None)."""
    values = read_config_file(config_file) if config_file else {}
    values.update({key: value for key, value in flags.items() if value is not None})
    try:
        return cls(**values)
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the first bad setting the way a user types it on the command line."""
    error = exc.errors()[0]
    name = ".".join(str(part) for part in error["loc"]) or "settings"
    flag = "--" + name.replace("_", "-")
    if error["type"] == "extra_forbidden":
        return f"unknown setting '{name}'"
    message = error["msg"].removeprefix("Value error, ")
    got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
    return f"invalid value for {flag}: {message}{got}"
