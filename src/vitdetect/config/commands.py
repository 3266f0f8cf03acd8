"""The settings of the commands that use a trained model: evaluate, plot, predict, calibrate, export, serve,
and of download. Training's own settings, the shared base and the config-file reader are in settings.py."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from vitdetect.config.run_files import BEST_NAME, DEFAULT_RUN_DIR
from vitdetect.config.settings import (
    MAX_BATCH_SIZE,
    MAX_SEED,
    TrainSettings,
    _Settings,
    _TrackingSettings,
    default_cache_dir,
)
from vitdetect.errors import UsageError


class FigureFormat(str, Enum):
    png = "png"
    svg = "svg"
    pdf = "pdf"


class ExplainMethod(str, Enum):
    rollout = "rollout"
    gradcam = "gradcam"
    occlusion = "occlusion"


EXPLAIN_METHOD_HELP = ("rollout: attention rollout over all blocks (where the [CLS] token gathers from); gradcam: "
                       "Grad-CAM on the last block's input (which patches push towards the verdict); occlusion: how "
                       "far the verdict falls when each region is hidden; unset: rollout for a ViT, occlusion for a "
                       "model without [CLS] token (pvt-v2-32).")


THREADS_FIELD = Field(
    None, ge=1, le=1024, description="CPU threads inside each operation, for PyTorch and ONNX Runtime alike "
    "(torch.set_num_threads, ORT's intra_op_num_threads); unset: PyTorch's default, one per physical core "
    "(OMP_NUM_THREADS when set), the fastest in benchmarks/bench_inference.py.",
)


class _FigureSettings(_Settings):
    format: FigureFormat = Field(FigureFormat.png, description="File format of the figures.")


class EvaluateSettings(_FigureSettings, _TrackingSettings):
    """`vitdetect evaluate`: score a split with a checkpoint, save metrics, predictions and figures.

    Each field is a flag of `vitdetect evaluate` with underscores for dashes, with the same default and description
    (`vitdetect evaluate --help`).

    Examples:
        >>> from vitdetect import EvaluateSettings
        >>> settings = EvaluateSettings(checkpoint="runs/pvt/best_model.pth", robustness=True)
        >>> settings.split, settings.data_dir
        ('test', PosixPath('data/cifake'))
    """

    checkpoint: Path = Field(
        DEFAULT_RUN_DIR / BEST_NAME,
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
    explain_method: ExplainMethod | None = Field(None, description=EXPLAIN_METHOD_HELP)
    robustness: bool = Field(
        False, description="Also score a sample of the split under the perturbation suite (JPEG, blur, "
        "down-scaling, noise, PNG round trip, re-saves as WebP and JPEG 100): robustness.json and robustness.png."
    )
    perturbations: str = Field(
        "all", min_length=1, description="With --robustness: the perturbations to run, comma-separated: jpeg-95, "
        "jpeg-75, jpeg-50, jpeg-30, blur-0.5, blur-1, blur-2, downscale-2, downscale-4, noise-2, noise-5, noise-10, "
        "png (lossless round trip: must equal clean), webp-lossless, jpeg-100, webp-80 (re-saves in another format; "
        "WebP where Pillow has it), or whole families: jpeg, blur, downscale, noise, resave; all: every one.",
    )
    robustness_images: int = Field(
        2000, ge=0, description="With --robustness: images scored per perturbation, a stratified seeded sample "
        "of the split; 0: all of them.",
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="With --robustness: seed of the sample and the noise.")
    cpu: bool = Field(False, description="Run on the CPU even when a GPU is available.")
    threads: int | None = THREADS_FIELD
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
    min_confidence: float = Field(
        0.0, ge=0, le=1, description="Label UNSURE an image whose calibrated probability of the predicted label is "
        "below this (e.g. 0.9); P(FAKE) is still shown. 0: every image gets REAL or FAKE.",
    )
    check_stability: bool = Field(
        False, description="Also judge each image after mild everyday edits (JPEG quality 75, blur sigma 0.5, "
        "down-scale to 1/2 and back) and label it UNSURE when one of them changes the verdict, naming the edit. "
        "Scoring takes 4 times as long.",
    )
    explain: Path | None = Field(
        None, description="Write one PNG per image into this folder: the image, its heatmap, verdict and P(FAKE)."
    )
    explain_method: ExplainMethod | None = Field(None, description=EXPLAIN_METHOD_HELP)
    cpu: bool = Field(False, description="Run on the CPU even when a GPU is available.")
    threads: int | None = THREADS_FIELD
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


class Quantization(str, Enum):
    none = "none"
    int8 = "int8"


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
    quantize: Quantization = Field(
        Quantization.none, description="int8: static int8 quantization with ONNX Runtime (--format onnx only), "
        "calibrated on --calibration-images images of the training split; the attention products stay fp32. "
        "none: float32.",
    )
    calibration_data: Path | None = Field(
        None, description="With --quantize int8: CIFAKE root whose train/{REAL,FAKE} calibrates the activation "
        "ranges; unset: the data_dir the checkpoint was trained on.",
    )
    calibration_images: int = Field(512, ge=1, le=100_000, description="With --quantize int8: images in the "
                                     "seeded, class-balanced calibration sample.")

    @model_validator(mode="after")
    def _quantization_needs_onnx(self) -> ExportSettings:
        given = sorted({"calibration_data", "calibration_images"} & self.model_fields_set)
        if self.quantize == Quantization.none and given:
            names = " and ".join("--" + name.replace("_", "-") for name in given)
            raise UsageError(f"{names}: only used with --quantize int8")
        if self.quantize != Quantization.none and self.format != ExportFormat.onnx:
            raise UsageError(f"--quantize {self.quantize} needs --format onnx: the int8 kernels are ONNX "
                             f"Runtime's, a --format {self.format} folder holds float32 weights")
        return self


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
    backend: Backend = PredictSettings.model_fields["backend"]
    read_timeout_s: float = Field(60.0, gt=0, le=3600,
                                  description="Seconds a client has to send a whole request body (slower: HTTP 408): "
                                  "a client uploading at a trickle cannot hold a request forever.")
    cpu: bool = PredictSettings.model_fields["cpu"]
    threads: int | None = PredictSettings.model_fields["threads"]
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
