"""`vitdetect train`: flags (or a config file, or a run to resume) -> TrainSettings -> `train()`."""

from __future__ import annotations

from pathlib import Path

import typer

from vitdetect.cli.summaries import print_train_summary
from vitdetect.cli.support import described, user_errors
from vitdetect.config.settings import MixedPrecision, Schedule, TrainMode, TrainSettings, build_settings
from vitdetect.errors import UsageError


@user_errors
def train(
    data_dir: Path = described(TrainSettings, "data_dir", "--data-dir", "--data_dir"),
    output_dir: Path = described(TrainSettings, "output_dir", "--output-dir", "--output_dir"),
    overwrite: bool = described(TrainSettings, "overwrite", "--overwrite/--no-overwrite"),
    model: str = described(TrainSettings, "model", "--model"),
    train_mode: TrainMode = described(TrainSettings, "train_mode", "--train-mode"),
    last_blocks: int = described(TrainSettings, "last_blocks", "--last-blocks"),
    epochs: int = described(TrainSettings, "epochs", "--epochs"),
    batch_size: int = described(TrainSettings, "batch_size", "--batch-size", "--batch_size"),
    lr: float = described(TrainSettings, "lr", "--lr", "--learning-rate"),
    weight_decay: float = described(TrainSettings, "weight_decay", "--weight-decay"),
    schedule: Schedule = described(TrainSettings, "schedule", "--schedule"),
    warmup_ratio: float = described(TrainSettings, "warmup_ratio", "--warmup-ratio"),
    grad_clip: float = described(TrainSettings, "grad_clip", "--grad-clip"),
    patience: int = described(TrainSettings, "patience", "--patience"),
    val_fraction: float = described(TrainSettings, "val_fraction", "--val-fraction", "--val_fraction"),
    seed: int = described(TrainSettings, "seed", "--seed"),
    augment: bool = described(TrainSettings, "augment", "--augment/--no-augment"),
    rotation_degrees: float = described(TrainSettings, "rotation_degrees", "--rotation-degrees"),
    color_jitter: bool = described(TrainSettings, "color_jitter", "--color-jitter/--no-color-jitter"),
    crop_padding: int = described(TrainSettings, "crop_padding", "--crop-padding"),
    label_smoothing: float = described(TrainSettings, "label_smoothing", "--label-smoothing"),
    augment_jpeg: float = described(TrainSettings, "augment_jpeg", "--augment-jpeg"),
    augment_jpeg_quality: tuple[float, float] = described(TrainSettings, "augment_jpeg_quality",
                                                          "--augment-jpeg-quality"),
    augment_blur: float = described(TrainSettings, "augment_blur", "--augment-blur"),
    augment_blur_sigma: tuple[float, float] = described(TrainSettings, "augment_blur_sigma", "--augment-blur-sigma"),
    augment_downscale: float = described(TrainSettings, "augment_downscale", "--augment-downscale"),
    augment_downscale_factor: tuple[float, float] = described(TrainSettings, "augment_downscale_factor",
                                                              "--augment-downscale-factor"),
    distill: bool = described(TrainSettings, "distill", "--distill/--no-distill"),
    distill_alpha: float = described(TrainSettings, "distill_alpha", "--distill-alpha"),
    distill_temperature: float = described(TrainSettings, "distill_temperature", "--distill-temperature"),
    teacher_epochs: int = described(TrainSettings, "teacher_epochs", "--teacher-epochs"),
    teacher: Path = described(TrainSettings, "teacher", "--teacher"),
    feature_cache: bool = described(TrainSettings, "feature_cache", "--feature-cache/--no-feature-cache"),
    feature_views: int = described(TrainSettings, "feature_views", "--feature-views"),
    mixed_precision: MixedPrecision = described(TrainSettings, "mixed_precision", "--mixed-precision"),
    compile: bool = described(TrainSettings, "compile", "--compile/--no-compile"),
    cpu: bool = described(TrainSettings, "cpu", "--cpu/--no-cpu"),
    num_workers: int = described(TrainSettings, "num_workers", "--num-workers"),
    log_every: int = described(TrainSettings, "log_every", "--log-every"),
    max_images: int = described(TrainSettings, "max_images", "--max-images"),
    cache_dir: Path = described(TrainSettings, "cache_dir", "--cache-dir"),
    calibrate: bool = described(TrainSettings, "calibrate", "--calibration/--no-calibration"),
    quiet: bool = described(TrainSettings, "quiet", "--quiet/--no-quiet", "-q"),
    report_to: str = described(TrainSettings, "report_to", "--report-to", metavar="NAME[,NAME]"),
    run_name: str = described(TrainSettings, "run_name", "--run-name"),
    logging_dir: Path = described(TrainSettings, "logging_dir", "--logging-dir"),
    config: Path = typer.Option(None, "--config", help="TOML or YAML file with the same keys; flags override it."),
    resume: Path = typer.Option(None, "--resume", help="Continue a run from its last.pth (e.g. results/last.pth)."),
) -> None:
    """Fine-tune the ViT on DATA_DIR/train (80/20 stratified train/validation split)."""
    flags = {k: v for k, v in locals().items() if k not in {"config", "resume"}}
    import vitdetect.training.trainer as training
    from vitdetect.training.artifacts import resume_settings
    from vitdetect.utils.distributed import is_main_process

    if resume is not None:
        if config is not None:
            raise UsageError("--config cannot be combined with --resume: a resumed run keeps its saved settings")
        if overwrite:
            raise UsageError("--overwrite cannot be combined with --resume: a resumed run continues the run in "
                             "its folder")
        settings = resume_settings(resume, flags)
    else:
        settings = build_settings(TrainSettings, config, **flags)
    result = training.train(settings, resume=resume)
    if is_main_process():  # under torchrun / accelerate launch, one summary, not one per process
        print_train_summary(result)
