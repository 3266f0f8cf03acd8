"""The `vitdetect` command line: parse flags, build settings, call the core, print results.

Heavy libraries (torch, transformers) are imported inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import typer

try:  # typer >= 0.20 ships its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:
    from click.exceptions import ClickException, NoArgsIsHelpError
from vitdetect.cli.summaries import print_evaluation_summary, print_manifest_diff, print_train_summary, stdout
from vitdetect.cli.support import WorkflowGroup, described, user_errors, version_callback
from vitdetect.config.commands import (
    Backend,
    CalibrateSettings,
    DownloadSettings,
    EvaluateSettings,
    ExplainMethod,
    ExportFormat,
    ExportSettings,
    FigureFormat,
    OutputFormat,
    PlotSettings,
    PredictSettings,
    ServeSettings,
    Source,
)
from vitdetect.config.settings import MixedPrecision, Schedule, TrainMode, TrainSettings, build_settings
from vitdetect.errors import Terminated, UsageError, VitdetectError

app = typer.Typer(
    name="vitdetect",
    cls=WorkflowGroup,
    help="Fine-tune a Vision Transformer to tell real photographs from AI-generated images (CIFAKE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, metavar="",
                                 help="Show the version and exit."),
) -> None:
    """Fine-tune a Vision Transformer to tell real photographs from AI-generated images (CIFAKE)."""


@app.command()
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
    distill: bool = described(TrainSettings, "distill", "--distill/--no-distill"),
    distill_alpha: float = described(TrainSettings, "distill_alpha", "--distill-alpha"),
    distill_temperature: float = described(TrainSettings, "distill_temperature", "--distill-temperature"),
    teacher_epochs: int = described(TrainSettings, "teacher_epochs", "--teacher-epochs"),
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


@app.command()
@user_errors
def predict(
    paths: list[str] = typer.Argument(None, show_default=False,
                                      help="Image files, folders and glob patterns (quoted: 'shots/*.png')."),
    checkpoint: Path = described(PredictSettings, "checkpoint", "--checkpoint"),
    backend: Backend = described(PredictSettings, "backend", "--backend"),
    threshold: float = described(PredictSettings, "threshold", "--threshold"),
    format: OutputFormat = described(PredictSettings, "format", "--format"),
    output: Path = described(PredictSettings, "output", "--output", "-o"),
    batch_size: int = described(PredictSettings, "batch_size", "--batch-size", "--batch_size"),
    recursive: bool = described(PredictSettings, "recursive", "--recursive/--no-recursive", "-r"),
    explain: Path = described(PredictSettings, "explain", "--explain"),
    explain_method: ExplainMethod | None = described(PredictSettings, "explain_method", "--explain-method"),
    cpu: bool = described(PredictSettings, "cpu", "--cpu/--no-cpu"),
    quiet: bool = described(PredictSettings, "quiet", "--quiet/--no-quiet", "-q"),
) -> None:
    """Judge images: REAL or FAKE with P(FAKE). Exit code 0: all judged, 1: some unreadable, 2: bad usage."""
    flags = {k: v for k, v in locals().items() if k != "paths"}
    import vitdetect.inference.detector as predicting
    import vitdetect.inference.output as predict_output

    settings = build_settings(PredictSettings, None, **flags)
    result = predicting.run(settings, paths or [])
    if result.main_process:
        if settings.format == OutputFormat.table:
            stdout.print(predict_output.results_table(result.results, result.threshold))
        else:
            typer.echo(predict_output.render(result.results, settings.format), nl=False)
    if result.failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def serve(
    checkpoint: Path = described(ServeSettings, "checkpoint", "--checkpoint"),
    threshold: float = described(ServeSettings, "threshold", "--threshold"),
    host: str = described(ServeSettings, "host", "--host"),
    port: int = described(ServeSettings, "port", "--port"),
    max_batch: int = described(ServeSettings, "max_batch", "--max-batch"),
    max_wait_ms: float = described(ServeSettings, "max_wait_ms", "--max-wait-ms"),
    max_upload_mb: float = described(ServeSettings, "max_upload_mb", "--max-upload-mb"),
    max_files: int = described(ServeSettings, "max_files", "--max-files"),
    cpu: bool = described(ServeSettings, "cpu", "--cpu/--no-cpu"),
    quiet: bool = described(ServeSettings, "quiet", "--quiet/--no-quiet", "-q"),
) -> None:
    """Serve an HTTP API (POST /v1/predict, GET /v1/model, /healthz) and a web page for judging images."""
    settings = build_settings(ServeSettings, None, **locals())
    from vitdetect.serve import INSTALL_HINT, missing_packages

    if missing_packages():
        raise VitdetectError(f"vitdetect serve needs {', '.join(missing_packages())}: {INSTALL_HINT}")
    from vitdetect.serve.server import serve as run_server

    run_server(settings, announce=lambda line: typer.echo(line))


@app.command()
@user_errors
def evaluate(
    checkpoint: Path = described(EvaluateSettings, "checkpoint", "--checkpoint"),
    data_dir: Path = described(EvaluateSettings, "data_dir", "--data-dir", "--data_dir"),
    split: str = described(EvaluateSettings, "split", "--split"),
    output_dir: Path = described(EvaluateSettings, "output_dir", "--output-dir", "--output_dir"),
    batch_size: int = described(EvaluateSettings, "batch_size", "--batch-size", "--batch_size"),
    set_threshold_at_fpr: float = described(EvaluateSettings, "set_threshold_at_fpr",
                                            "--set-threshold-at-fpr"),
    explain_errors: int = described(EvaluateSettings, "explain_errors", "--explain-errors"),
    explain_method: ExplainMethod | None = described(EvaluateSettings, "explain_method", "--explain-method"),
    format: FigureFormat = described(EvaluateSettings, "format", "--format"),
    robustness: bool = described(EvaluateSettings, "robustness", "--robustness/--no-robustness"),
    perturbations: str = described(EvaluateSettings, "perturbations", "--perturbations"),
    robustness_images: int = described(EvaluateSettings, "robustness_images", "--robustness-images"),
    seed: int = described(EvaluateSettings, "seed", "--seed"),
    cpu: bool = described(EvaluateSettings, "cpu", "--cpu/--no-cpu"),
    cache_dir: Path = described(EvaluateSettings, "cache_dir", "--cache-dir"),
    quiet: bool = described(EvaluateSettings, "quiet", "--quiet/--no-quiet", "-q"),
    report_to: str = described(EvaluateSettings, "report_to", "--report-to", metavar="NAME[,NAME]"),
    run_name: str = described(EvaluateSettings, "run_name", "--run-name"),
    logging_dir: Path = described(EvaluateSettings, "logging_dir", "--logging-dir"),
) -> None:
    """Score DATA_DIR/SPLIT with a checkpoint: metrics.json, predictions.csv and figures (FAKE = positive)."""
    settings = build_settings(EvaluateSettings, None, **locals())
    from vitdetect.evaluation.evaluator import evaluate as run_evaluation
    from vitdetect.utils.distributed import is_main_process

    result = run_evaluation(settings)
    if is_main_process():
        print_evaluation_summary(result)
        if result.robustness is not None:
            from vitdetect.reports.robustness import robustness_table

            stdout.print(robustness_table(result.robustness))


@app.command()
@user_errors
def calibrate(
    checkpoint: Path = described(CalibrateSettings, "checkpoint", "--checkpoint"),
    data_dir: Path = described(CalibrateSettings, "data_dir", "--data-dir", "--data_dir"),
    split: str = described(CalibrateSettings, "split", "--split"),
    batch_size: int = described(CalibrateSettings, "batch_size", "--batch-size", "--batch_size"),
    cpu: bool = described(CalibrateSettings, "cpu", "--cpu/--no-cpu"),
    cache_dir: Path = described(CalibrateSettings, "cache_dir", "--cache-dir"),
    quiet: bool = described(CalibrateSettings, "quiet", "--quiet/--no-quiet", "-q"),
) -> None:
    """Refit the checkpoint's temperature (calibrated P(FAKE)) on DATA_DIR/SPLIT; the checkpoint is rewritten."""
    settings = build_settings(CalibrateSettings, None, **locals())
    from vitdetect.evaluation.calibration import calibrate as run_calibration
    from vitdetect.utils.distributed import is_main_process

    result = run_calibration(settings)
    if is_main_process():
        fit = result.fit
        stdout.print(f"temperature {result.previous_temperature:.4f} -> {fit.temperature:.4f}, fitted on "
                     f"{fit.n_images:,} images of {settings.data_dir / settings.split}: NLL {fit.nll_before:.4f} "
                     f"at T = 1 -> {fit.nll_after:.4f}; wrote {settings.checkpoint}")
        if result.threshold:
            old, new = result.threshold
            stdout.print(f"stored threshold {old:.6g} -> {new:.6g}: the same operating point (the same images "
                         "are called FAKE) on the new scale")
        if result.pretrained_dir:
            stdout.print(f"rewrote {result.pretrained_dir} with the temperature folded into its classifier")


@app.command()
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


@app.command()
@user_errors
def export(
    checkpoint: Path = described(ExportSettings, "checkpoint", "--checkpoint"),
    format: ExportFormat = described(ExportSettings, "format", "--format"),
    output: Path = typer.Option(..., "--output", "-o", show_default=False,
                                help=ExportSettings.model_fields["output"].description),
    overwrite: bool = described(ExportSettings, "overwrite", "--overwrite/--no-overwrite"),
) -> None:
    """Export a checkpoint: ONNX (for ONNX Runtime and friends) or a Hugging Face folder with a model card."""
    settings = build_settings(ExportSettings, None, **locals())
    from vitdetect.export.exporter import export as run_export

    result = run_export(settings)
    folded = "no calibration temperature" if result.temperature == 1.0 else \
        f"temperature {result.temperature:.4g} folded into the classifier"
    typer.echo(f"exported {settings.checkpoint} -> {result.output} ({result.format}, "
               f"{result.size_bytes / 2**20:,.1f} MB; {folded})")
    for note in result.notes:
        typer.echo(note)


@app.command()
@user_errors
def download(
    dest: Path = described(DownloadSettings, "dest", "--dest"),
    source: Source = described(DownloadSettings, "source", "--source"),
    from_zip: Path = described(DownloadSettings, "from_zip", "--from-zip"),
    kaggle_dataset: str = described(DownloadSettings, "kaggle_dataset", "--kaggle-dataset"),
    hf_repo: str = described(DownloadSettings, "hf_repo", "--hf-repo"),
    expect_counts: str = described(DownloadSettings, "expect_counts", "--expect-counts"),
    max_unpacked_gb: float = described(DownloadSettings, "max_unpacked_gb", "--max-unpacked-gb"),
    force: bool = described(DownloadSettings, "force", "--overwrite/--no-overwrite", "--force"),
    verify_only: bool = described(DownloadSettings, "verify_only", "--verify-only/--no-verify-only"),
    quiet: bool = described(DownloadSettings, "quiet", "--quiet/--no-quiet", "-q"),
) -> None:
    """Get CIFAKE into DEST/{train,test}/{REAL,FAKE}: download it, or import the Kaggle zip; verified."""
    settings = build_settings(DownloadSettings, None, **locals())
    import vitdetect.data.download.fetch as downloading
    from vitdetect.utils.progress import Reporter

    reporter = Reporter(quiet=settings.quiet)
    if settings.verify_only:
        diff = downloading.verify(settings, reporter)
        print_manifest_diff(diff, settings.dest)
        if not diff.clean:
            raise VitdetectError(f"{settings.dest} differs from its manifest: {len(diff.missing)} missing, "
                                 f"{len(diff.extra)} extra, {len(diff.changed)} changed; run `vitdetect "
                                 "download --overwrite` to fetch it again")
        return
    result = downloading.download(settings, reporter)
    typer.echo(f"CIFAKE {result.action} at {result.dest}: {downloading.describe_counts(result.counts)}")
    if result.ignored:
        typer.echo(f"left out {result.ignored:,} file(s) outside train/{{REAL,FAKE}} and test/{{REAL,FAKE}}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: usage errors become one line on stderr with exit code 2."""
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        code = app(args=argv, standalone_mode=False)
    except NoArgsIsHelpError as exc:
        typer.echo(exc.format_message())
        code = 0
    except ClickException as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        code = exc.exit_code
    except typer.Abort:
        typer.echo("error: interrupted", err=True)
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.exit(code or 0)


def raise_terminated(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C: atomic writes remove their temp files, the exit code is 143."""
    raise Terminated
