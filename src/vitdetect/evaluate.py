"""`evaluate(settings)`: score a split with a checkpoint; save metrics.json, predictions.csv and figures.

Runs in one process or under `torchrun` / `accelerate launch`: every process scores its shard,
the P(FAKE) values are gathered (exactly one per image), and only the main process writes and prints.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitdetect.atomic import atomic_write_text, ensure_writable_dir
from vitdetect.checkpoint import save_checkpoint
from vitdetect.data import ImageSet, load_split_reported
from vitdetect.distributed import make_accelerator
from vitdetect.errors import VitdetectError
from vitdetect.inference import TrainedModel, fake_probabilities
from vitdetect.labels import CLASS_NAMES
from vitdetect.metrics import (
    METRICS_NAME,
    PREDICTIONS_NAME,
    detector_metrics,
    predictions_csv,
    threshold_at_fpr,
)
from vitdetect.perturbations import resolve_suite
from vitdetect.progress import Reporter
from vitdetect.robustness import robustness_report, write_robustness
from vitdetect.settings import EvaluateSettings


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
    started = time.perf_counter()
    suite = resolve_suite(settings.perturbations) if settings.robustness else []  # a bad name fails at once
    accelerator = make_accelerator(settings.cpu)
    main = accelerator.is_main_process
    reporter = reporter or Reporter(settings.quiet, enabled=main)
    trained = TrainedModel.load(settings.checkpoint)
    output_dir = settings.output_dir or settings.checkpoint.parent
    if main:
        ensure_writable_dir(output_dir)
    with accelerator.local_main_process_first():  # one decoder per machine; the others read its cache
        images = load_split_reported(settings.data_dir, settings.split, trained.prep.storage_size,
                                     settings.cache_dir, output_dir, reporter)

    scoring_started = time.perf_counter()
    p_fake = fake_probabilities(trained, images.images, settings.batch_size, accelerator, reporter,
                                f"scoring {settings.split}")
    images_per_second = len(p_fake) / max(time.perf_counter() - scoring_started, 1e-9)
    labels = images.labels.numpy()

    threshold, stored = trained.threshold, None
    if settings.set_threshold_at_fpr is not None:
        stored = threshold_for_fpr(labels, p_fake, settings)
        threshold = stored["threshold"]
        if main:
            save_checkpoint(settings.checkpoint, {**trained.checkpoint, "threshold": threshold,
                                                  "threshold_source": stored})
    metrics, notes = detector_metrics(labels, p_fake, threshold, CLASS_NAMES)
    metrics.update(provenance(settings, trained, images))
    report = None
    if settings.robustness:
        report = robustness_report(trained, images, threshold, suite, settings, accelerator, reporter)
        report.update(provenance(settings, trained, images))
    figures: list[Path] = []
    if main:
        for note in notes:
            reporter.warn(note)
        write_results(output_dir, metrics, images.paths, labels, p_fake)
        from vitdetect.plots import evaluation_figures

        figures = evaluation_figures(output_dir, settings.format).written
        if report is not None:
            figures += write_robustness(output_dir, report, settings.format, reporter)
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - started
    return EvaluationResult(metrics, output_dir, seconds, images_per_second, figures, stored, report)


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


def write_results(output_dir: Path, metrics: dict[str, Any], paths: list[str], labels: np.ndarray,
                  p_fake: np.ndarray) -> None:
    text = predictions_csv(paths, labels, p_fake, metrics["threshold"], CLASS_NAMES)
    atomic_write_text(output_dir / PREDICTIONS_NAME, text)
    atomic_write_text(output_dir / METRICS_NAME, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
