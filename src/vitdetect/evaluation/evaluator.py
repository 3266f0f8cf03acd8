"""`evaluate(settings)`: score a split with a checkpoint; save metrics.json, predictions.csv and figures.

Runs in one process or under `torchrun` / `accelerate launch`: every process scores its shard,
the P(FAKE) values are gathered (exactly one per image), and only the main process writes and prints.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import vitdetect.utils.tracking as tracking
from vitdetect.config.commands import EvaluateSettings
from vitdetect.config.labels import CLASS_NAMES
from vitdetect.config.run_files import METRICS_NAME, PREDICTIONS_NAME
from vitdetect.data.dataset import ImageSet, load_split_reported
from vitdetect.data.perturbations import resolve_suite
from vitdetect.errors import VitdetectError
from vitdetect.evaluation.calibration import FIT_KEY
from vitdetect.evaluation.robustness import robustness_report, write_robustness
from vitdetect.inference.scoring import TrainedModel, fake_probability, model_logits
from vitdetect.models.builtin import refuse_builtin, results_dir_for
from vitdetect.models.checkpoint import save_checkpoint
from vitdetect.reports.metrics import detector_metrics, predictions_csv, probability_metrics, threshold_at_fpr
from vitdetect.utils.atomic import atomic_write_text
from vitdetect.utils.distributed import make_accelerator, use_threads
from vitdetect.utils.locking import output_lock
from vitdetect.utils.progress import Reporter


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]
    output_dir: Path
    seconds: float  # decoding, scoring, metrics and figures
    images_per_second: float  # scoring alone
    figures: list[Path] = field(default_factory=list)
    stored_threshold: dict[str, Any] | None = None
    robustness: dict[str, Any] | None = None  # robustness.json's content, with --robustness


def evaluate(settings: EvaluateSettings, reporter: Reporter | None = None) -> EvaluationResult:
    """Evaluate, holding the output folder's lock (and the checkpoint's, when its threshold is rewritten).

    What `vitdetect evaluate` runs: scores `settings.data_dir / settings.split` with the checkpoint and writes
    metrics.json, predictions.csv and the figures (and robustness.json with `settings.robustness`).

    Args:
        settings: the checkpoint (a path, or "builtin"), the data and split, the output folder (None: the
            checkpoint's), and what else to compute.
        reporter: where progress and messages go; None: the console (quiet with `settings.quiet`).

    Returns:
        The metrics (metrics.json's content), the output folder, the figures written, the threshold stored by
            `set_threshold_at_fpr` and the robustness report, if asked for.

    Raises:
        VitdetectError: a missing or damaged checkpoint, bad data, a folder in use, a failed write.

    Examples:
        >>> from vitdetect import EvaluateSettings, evaluate
        >>> result = evaluate(EvaluateSettings(checkpoint="builtin", data_dir="data/cifake", output_dir="eval"))
        >>> result.metrics["accuracy"], result.metrics["roc_auc"]
    """
    started = time.perf_counter()
    suite = resolve_suite(settings.perturbations) if settings.robustness else []  # a bad name fails at once
    if settings.set_threshold_at_fpr is not None:
        refuse_builtin(settings.checkpoint, "store a threshold in")
    output_dir = settings.output_dir or results_dir_for(settings.checkpoint)
    settings = tracking.with_run_name(settings, output_dir, settings.split)
    use_threads(settings.threads)
    accelerator = make_accelerator(settings.cpu, **tracking.accelerator_options(settings, output_dir))
    trained = TrainedModel.load(settings.checkpoint)  # a bad checkpoint fails before any folder is touched
    if settings.explain_errors:
        from vitdetect.inference.explain import check_method, default_method

        settings = settings.model_copy(update={"explain_method": settings.explain_method
                                               or default_method(trained.model)})
        check_method(settings.explain_method)
    with ExitStack() as locks:
        for folder in folders_written(settings, output_dir):
            locks.enter_context(output_lock(folder, accelerator))
        if settings.set_threshold_at_fpr is not None:  # the checkpoint as it is now that no one else writes it
            trained = TrainedModel.load(settings.checkpoint)
        result = run_evaluation(settings, trained, output_dir, accelerator, reporter, suite)
    result.seconds = time.perf_counter() - started
    return result


def folders_written(settings: EvaluateSettings, output_dir: Path) -> list[Path]:
    """The output folder, and the checkpoint's folder when --set-threshold-at-fpr rewrites the checkpoint."""
    folders = [output_dir]
    checkpoint_dir = settings.checkpoint.parent
    if settings.set_threshold_at_fpr is not None and checkpoint_dir.resolve() != output_dir.resolve():
        folders.append(checkpoint_dir)
    return folders


def run_evaluation(settings: EvaluateSettings, trained: TrainedModel, output_dir: Path, accelerator,
                   reporter: Reporter | None, suite: list) -> EvaluationResult:
    main = accelerator.is_main_process
    reporter = reporter or Reporter(settings.quiet, enabled=main)
    with accelerator.local_main_process_first():  # one decoder per machine; the others read its cache
        images = load_split_reported(settings.data_dir, settings.split, trained.prep.storage_size,
                                     settings.cache_dir, output_dir, reporter)

    scoring_started = time.perf_counter()
    logits = model_logits(trained, images.images, settings.batch_size, accelerator, reporter,
                          f"scoring {settings.split}")
    images_per_second = len(logits) / max(time.perf_counter() - scoring_started, 1e-9)
    p_fake, p_uncalibrated = fake_probability(logits, trained.temperature), fake_probability(logits)
    labels = images.labels.numpy()

    threshold, stored = trained.threshold, None
    if settings.set_threshold_at_fpr is not None:
        stored = threshold_for_fpr(labels, p_fake, settings)
        threshold = stored["threshold"]
        if main:
            save_checkpoint(settings.checkpoint, {**trained.checkpoint, "threshold": threshold,
                                                  "threshold_source": stored})
    metrics, notes = detector_metrics(labels, p_fake, threshold, CLASS_NAMES)
    metrics.update(temperature=trained.temperature, temperature_fit=trained.checkpoint.get(FIT_KEY),
                   uncalibrated=probability_metrics(labels, p_uncalibrated))
    metrics.update(provenance(settings, trained, images))
    report = None
    if settings.robustness:
        report = robustness_report(trained, images, threshold, suite, settings, accelerator, reporter)
        report.update(provenance(settings, trained, images))
    figures: list[Path] = []
    if main:
        for note in notes:
            reporter.warn(note)
        write_results(output_dir, metrics, images.paths, labels, p_fake, p_uncalibrated)
        from vitdetect.reports.plots import evaluation_figures

        figures = evaluation_figures(output_dir, settings.format).written
        if settings.explain_errors:
            figures.append(draw_errors(trained, images, p_fake, threshold, settings, output_dir, reporter,
                                       accelerator.device))
        if report is not None:
            figures += write_robustness(output_dir, report, settings.format, reporter)
    tracking.log_evaluation(accelerator, settings, metrics, output_dir, figures)
    accelerator.wait_for_everyone()
    return EvaluationResult(metrics, output_dir, 0.0, images_per_second, figures, stored, report)


def threshold_for_fpr(labels: np.ndarray, p_fake: np.ndarray, settings: EvaluateSettings) -> dict[str, Any]:
    """The operating point at --set-threshold-at-fpr, with where it was measured."""
    point = threshold_at_fpr(labels, p_fake, settings.set_threshold_at_fpr)
    if point is None:
        raise VitdetectError(
            f"cannot set a threshold at FPR {settings.set_threshold_at_fpr}: the {settings.split} split "
            "needs both REAL and FAKE images"
        )
    return {**point, "target_fpr": settings.set_threshold_at_fpr, "split": settings.split,
            "data_dir": str(settings.data_dir)}


def provenance(settings: EvaluateSettings, trained: TrainedModel, images: ImageSet) -> dict[str, Any]:
    return {
        "checkpoint": str(settings.checkpoint),
        "checkpoint_epoch": trained.checkpoint.get("epoch"),
        "model": trained.checkpoint.get("settings", {}).get("model"),
        "split": settings.split,
        "data_dir": str(settings.data_dir),
        "skipped_images": len(images.skipped),
    }


def draw_errors(trained: TrainedModel, images: ImageSet, p_fake: np.ndarray, threshold: float,
                settings: EvaluateSettings, output_dir: Path, reporter: Reporter, device) -> Path:
    """errors.png: the most confident mistakes of each kind, with their heatmaps."""
    from vitdetect.config.run_files import ERRORS_FIGURE
    from vitdetect.inference.explain import confident_mistakes, error_gallery

    mistakes = confident_mistakes(images.labels.numpy(), p_fake, threshold, settings.explain_errors)
    reporter.info(f"explaining {sum(map(len, mistakes.values()))} confident mistake(s) with "
                  f"{settings.explain_method}")
    path = output_dir / f"{ERRORS_FIGURE}.{settings.format}"
    error_gallery(path, trained, images, mistakes, settings.explain_method, threshold, settings.format, device)
    return path


def write_results(output_dir: Path, metrics: dict[str, Any], paths: list[str], labels: np.ndarray,
                  p_fake: np.ndarray, p_uncalibrated: np.ndarray | None = None) -> None:
    text = predictions_csv(paths, labels, p_fake, metrics["threshold"], CLASS_NAMES, p_uncalibrated)
    atomic_write_text(output_dir / PREDICTIONS_NAME, text)
    atomic_write_text(output_dir / METRICS_NAME, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
