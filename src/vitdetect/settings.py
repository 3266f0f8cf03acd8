"""Every setting, its default and its validation, in one place.

Config flows one way: CLI flags and an optional config file -> these pydantic models -> the core.
This module must stay cheap to import (no torch), so that `vitdetect --help` is instant.
"""

from __future__ import annotations

import json
import os
import re
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from vitdetect.errors import UsageError
from vitdetect.presets import recipe_for

DEFAULT_MODEL = "google/vit-base-patch16-224"



# NumPy seeds must stay below 2**32 after adding the epoch and process index.
MAX_SEED = 2**31 - 1
MAX_BATCH_SIZE = 2**20
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Allowed (lowest, highest) of the robust-training ranges: JPEG quality 1-100; a blur sigma above 0 and
# at most 10 pixels of the stored image (beyond that a 32x32 image is a flat colour).
RANGE_LIMITS = {"augment_jpeg_quality": (1.0, 100.0), "augment_blur_sigma": (0.01, 10.0)}


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
    """`vitdetect train`. Defaults are the reference recipe: frozen backbone, head only."""

    data_dir: Path = Field(Path("data/cifake"), description="CIFAKE root holding train/{REAL,FAKE}.")
    output_dir: Path = Field(Path("results"), description="Where checkpoints, history and figures go.")
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
    distill: bool = Field(
        False, description="Knowledge distillation: first train the small CNN teacher (288k parameters) on the same "
        "training split, then train the model on the labels mixed with the teacher's softened probabilities."
    )
    distill_alpha: float = Field(0.5, ge=0, le=1, description="--distill: weight of the teacher's term in the "
                                 "training loss (the labels get 1 - alpha).")
    distill_temperature: float = Field(2.0, gt=0, le=20, description="--distill: temperature that softens both "
                                       "probability distributions in the teacher's term.")
    teacher_epochs: int = Field(12, ge=1, description="--distill: epochs of the teacher's training.")
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

    @field_validator("augment_jpeg_quality", "augment_blur_sigma")
    @classmethod
    def _increasing_range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        low, high = value
        lowest, highest = RANGE_LIMITS[info.field_name]
        if not lowest <= low <= high <= highest:
            raise ValueError(f"needs LOW HIGH with {lowest:g} <= LOW <= HIGH <= {highest:g}")
        return value

    @model_validator(mode="after")
    def _robust_augmentations_need_augment(self) -> TrainSettings:
        if not self.augment and (self.augment_jpeg or self.augment_blur):
            raise UsageError("--augment-jpeg and --augment-blur are augmentations: they cannot be combined with "
                             "--no-augment")
        return self

    @model_validator(mode="after")
    def _distill_needs_pixels(self) -> TrainSettings:
        if self.distill and self.train_mode == TrainMode.head:
            raise UsageError("--distill trains on images, not on cached features: use --train-mode full or "
                             "last-blocks")
        return self

    @model_validator(mode="before")
    @classmethod
    def _scratch_recipe(cls, values: Any) -> Any:
        if isinstance(values, dict):
            return {**recipe_for(str(values.get("model", ""))), **values}
        return values


class FigureFormat(str, Enum):
    png = "png"
    svg = "svg"
    pdf = "pdf"


class ExplainMethod(str, Enum):
    rollout = "rollout"
    gradcam = "gradcam"


EXPLAIN_METHOD_HELP = ("rollout: attention rollout over all blocks (where the [CLS] token gathers from); gradcam: "
                       "Grad-CAM on the last block's input (which patches push towards the verdict).")


class _FigureSettings(_Settings):
    format: FigureFormat = Field(FigureFormat.png, description="File format of the figures.")


class EvaluateSettings(_FigureSettings, _TrackingSettings):
    """`vitdetect evaluate`: score a split with a checkpoint, save metrics, predictions and figures."""

    checkpoint: Path = Field(
        TrainSettings.model_fields["output_dir"].default / "best_model.pth",
        description="Checkpoint written by `vitdetect train`, or `builtin` (the detector shipped with vitdetect).",
    )
    data_dir: Path = Field(
        TrainSettings.model_fields["data_dir"].default, description="CIFAKE root holding SPLIT/{REAL,FAKE}."
    )
    split: str = Field("test", min_length=1, description="Folder of DATA_DIR to evaluate.")
    output_dir: Path | None = Field(
        None, description="Where metrics.json, predictions.csv and the figures go; unset: the checkpoint's "
        "folder."
    )
    batch_size: int = Field(256, ge=1, le=MAX_BATCH_SIZE, description="Images per batch and per process.")
    set_threshold_at_fpr: float | None = Field(
        None, gt=0, lt=1, description="Store in the checkpoint the P(FAKE) threshold that gives this false "
        "positive rate on the split (e.g. 0.05); evaluate and predict then classify with it.",
    )
    explain_errors: int = Field(
        0, ge=0, le=50, description="Draw errors.png: the N most confident mistakes of each kind (REAL called "
        "FAKE, FAKE called REAL) with their heatmaps; 0: none."
    )
    explain_method: ExplainMethod = Field(ExplainMethod.rollout, description=EXPLAIN_METHOD_HELP)
    robustness: bool = Field(
        False, description="Also score a sample of the split under the perturbation suite (JPEG, blur, "
        "down-scaling, noise, PNG round trip): robustness.json and robustness.png."
    )
    perturbations: str = Field(
        "all", min_length=1, description="With --robustness: the perturbations to run, comma-separated: jpeg-95, "
        "jpeg-75, jpeg-50, jpeg-30, blur-0.5, blur-1, blur-2, downscale-2, downscale-4, noise-2, noise-5, noise-10, "
        "png (lossless round trip: must equal clean), or whole families: jpeg, blur, downscale, noise; all: every one.",
    )
    robustness_images: int = Field(
        2000, ge=0, description="With --robustness: images scored per perturbation, a stratified seeded sample "
        "of the split; 0: all of them.",
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="With --robustness: seed of the sample and the noise.")
    cpu: bool = Field(False, description="Run on the CPU even when a GPU is available.")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Decoded-image cache.")
    quiet: bool = Field(False, description="Print only errors and the final summary.")

    @field_validator("robustness_images")
    @classmethod
    def _all_or_both_classes(cls, value: int) -> int:
        if value == 1:
            raise ValueError("needs 0 (all images) or at least 2 (one per class)")
        return value

    @model_validator(mode="after")
    def _robustness_options_need_robustness(self) -> EvaluateSettings:
        given = sorted({"perturbations", "robustness_images", "seed"} & self.model_fields_set)
        if given and not self.robustness:
            names = " and ".join("--" + name.replace("_", "-") for name in given)
            raise UsageError(f"{names}: only used with --robustness")
        return self


class PlotSettings(_FigureSettings):
    """`vitdetect plot`: rebuild every figure from the files in a results dir."""

    results_dir: Path = Field(
        TrainSettings.model_fields["output_dir"].default,
        description="Folder with history.csv, batch_history.csv, metrics.json, predictions.csv.",
    )


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Backend(str, Enum):
    torch = "torch"
    onnx = "onnx"


class PredictSettings(_Settings):
    """`vitdetect predict`: judge image files, folders and glob patterns with a checkpoint."""

    checkpoint: Path | None = Field(
        None, description="Checkpoint written by `vitdetect train`, or `builtin` (with --backend onnx: a file "
        "written by `vitdetect export --format onnx`); unset: results/best_model.pth when it exists, else the "
        "built-in detector.",
    )
    backend: Backend = Field(
        Backend.torch, description="torch: run the checkpoint with PyTorch; onnx: run an exported .onnx file "
        "with ONNX Runtime (pip install 'vitdetect[onnx]'), one process.",
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="FAKE when P(FAKE) >= this; unset: the checkpoint's, else 0.5."
    )
    format: OutputFormat = Field(
        OutputFormat.table, description="On stdout: table (rich), json (JSON lines) or csv."
    )
    output: Path | None = Field(
        None, description="Also write the results to this file, in --format (for table: JSON lines when "
        "it ends in .json/.jsonl, else CSV).",
    )
    batch_size: int = Field(EvaluateSettings.model_fields["batch_size"].default, ge=1, le=MAX_BATCH_SIZE,
                            description="Images per batch and per process.")
    recursive: bool = Field(False, description="Also look for images in sub-folders of the given folders.")
    explain: Path | None = Field(
        None, description="Write one PNG per image into this folder: the image, its heatmap, verdict and P(FAKE)."
    )
    explain_method: ExplainMethod = Field(ExplainMethod.rollout, description=EXPLAIN_METHOD_HELP)
    cpu: bool = Field(False, description="Run on the CPU even when a GPU is available.")
    quiet: bool = Field(False, description="No progress bar and summary on stderr; only the results.")


class CalibrateSettings(_Settings):
    """`vitdetect calibrate`: refit a checkpoint's temperature on a held-out split."""

    checkpoint: Path = Field(
        EvaluateSettings.model_fields["checkpoint"].default, description="Checkpoint to recalibrate (rewritten)."
    )
    data_dir: Path = Field(
        TrainSettings.model_fields["data_dir"].default, description="Root holding SPLIT/{REAL,FAKE}."
    )
    split: str = Field(
        "val", min_length=1, description="Held-out folder of DATA_DIR to fit on; not the split you report."
    )
    batch_size: int = Field(EvaluateSettings.model_fields["batch_size"].default, ge=1, le=MAX_BATCH_SIZE,
                            description="Images per batch and per process.")
    cpu: bool = Field(False, description="Run on the CPU even when a GPU is available.")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Decoded-image cache.")
    quiet: bool = Field(False, description="Print only errors and the final summary.")


class ExportFormat(str, Enum):
    onnx = "onnx"
    hf = "hf"


class ExportSettings(_Settings):
    """`vitdetect export`: a checkpoint as an ONNX file or a Hugging Face model folder with a model card."""

    checkpoint: Path = Field(
        EvaluateSettings.model_fields["checkpoint"].default,
        description="Checkpoint written by `vitdetect train` (or `builtin`).",
    )
    format: ExportFormat = Field(
        ExportFormat.onnx, description="onnx: one .onnx file (pip install 'vitdetect[onnx]'); hf: a "
        "save_pretrained folder with its image processor and a model card README.md.",
    )
    output: Path = Field(description="The .onnx file, or the folder for --format hf.")
    overwrite: bool = Field(False, description="Replace --output when it already exists.")


class ServeSettings(_Settings):
    """`vitdetect serve`: the HTTP API and web page for judging images with a checkpoint."""

    checkpoint: Path | None = PredictSettings.model_fields["checkpoint"]
    threshold: float | None = PredictSettings.model_fields["threshold"]
    host: str = Field("127.0.0.1", min_length=1,
                      description="Address to listen on; 0.0.0.0 makes the server reachable from other machines.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0: any free port, printed).")
    max_batch: int = Field(64, ge=1, le=4096,
                           description="Images scored together: requests arriving together share a batch.")
    max_wait_ms: float = Field(5.0, ge=0, le=10_000,
                               description="How long a batch waits for more requests before it is scored.")
    max_upload_mb: float = Field(20.0, gt=0, le=4096,
                                 description="Largest request body accepted, in MB (larger: HTTP 413).")
    max_files: int = Field(64, ge=1, le=10_000, description="Most images in one request (more: HTTP 413).")
    cpu: bool = PredictSettings.model_fields["cpu"]
    quiet: bool = Field(False, description="No access log: only warnings and errors from the server.")


class Source(str, Enum):
    kaggle = "kaggle"
    huggingface = "huggingface"


class DownloadSettings(_Settings):
    """`vitdetect download`: CIFAKE into DEST/{train,test}/{REAL,FAKE}, verified, with a manifest."""

    dest: Path = Field(TrainSettings.model_fields["data_dir"].default, description="Where CIFAKE goes.")
    source: Source = Field(Source.kaggle, description="kaggle (kagglehub) or huggingface (a hub mirror).")
    from_zip: Path | None = Field(
        None, description="Import this manually downloaded Kaggle zip instead of downloading (no network)."
    )
    kaggle_dataset: str = Field(
        "birdy654/cifake-real-and-ai-generated-synthetic-images", min_length=3, description="Kaggle handle."
    )
    hf_repo: str = Field(
        "dragonintelligence/CIFAKE-image-dataset", min_length=1,
        description="Hugging Face dataset repo (or local folder in hub layout) for --source huggingface.",
    )
    expect_counts: str = Field(
        "full", pattern=r"^(full|any|\d+,\d+)$",
        description="Images per class: full (train 50,000, test 10,000), TRAIN,TEST (e.g. 10000,10000 for a "
        "subset), or any (report a difference as a warning).",
    )
    max_unpacked_gb: float = Field(5.0, gt=0, description="Refuse archives that unpack to more than this.")
    force: bool = Field(False, description="Replace DEST even when it already holds a verified download.")
    verify_only: bool = Field(False, description="Only re-check DEST against its manifest; download nothing.")
    quiet: bool = Field(False, description="Print only errors and the final summary.")


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
