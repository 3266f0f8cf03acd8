"""`evaluate --robustness`: score a stratified sample of the split under each perturbation of the suite.

Every perturbation is applied to the stored uint8 images, then scored through the same
`inference.fake_probabilities` as evaluate and predict (so whatever that applies, e.g. a calibration,
applies here too). Under `torchrun` every process perturbs the same sample with the same seed and
scores its shard; the gathered scores hold each image once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vitdetect.config.commands import EvaluateSettings
from vitdetect.config.labels import CLASS_NAMES
from vitdetect.config.run_files import ROBUSTNESS_NAME
from vitdetect.data.dataset import ImageSet, stratified_sample
from vitdetect.data.perturbations import Perturbation
from vitdetect.inference.scoring import TrainedModel, fake_probabilities
from vitdetect.reports.metrics import classify, rates_at_threshold, threshold_at_fpr
from vitdetect.reports.robustness import robustness_figures
from vitdetect.utils.atomic import atomic_write_text
from vitdetect.utils.progress import Reporter

TARGET_FPR = 0.05  # the operating point chosen on the clean scores, then held fixed under every perturbation
CLEAN_ROW = {"name": "clean", "family": "clean", "family_title": "clean", "level": 0, "parameter": "none"}


def robustness_report(
    trained: TrainedModel,
    images: ImageSet,
    threshold: float,
    suite: list[Perturbation],
    settings: EvaluateSettings,
    accelerator,
    reporter: Reporter,
) -> dict[str, Any]:
    """robustness.json's content: the sample, the operating points and one row per perturbation."""
    started = time.perf_counter()
    sample = images.subset(stratified_sample(images.labels, settings.robustness_images or len(images),
                                             settings.seed))
    labels = sample.labels.numpy()

    def score(pixels, what: str) -> tuple[np.ndarray, float]:
        scoring_started = time.perf_counter()
        p_fake = fake_probabilities(trained, pixels, settings.batch_size, accelerator, reporter,
                                    f"robustness: {what}")
        return p_fake, time.perf_counter() - scoring_started

    clean, seconds = score(sample.images, "clean")
    point = threshold_at_fpr(labels, clean, TARGET_FPR)
    fixed_threshold = None if point is None else point["threshold"]
    rows = [{**CLEAN_ROW, **row_metrics(labels, clean, clean, threshold, fixed_threshold), "seconds": seconds}]
    for perturbation in suite:
        perturbing_started = time.perf_counter()
        p_fake, _ = score(perturbation(sample.images, settings.seed), perturbation.name)
        rows.append({**describe(perturbation), **row_metrics(labels, p_fake, clean, threshold, fixed_threshold),
                     "seconds": time.perf_counter() - perturbing_started})
    return {
        "positive_class": CLASS_NAMES[1],
        "class_names": list(CLASS_NAMES),
        "threshold": float(threshold),
        "target_fpr": TARGET_FPR,
        "target_fpr_threshold": fixed_threshold,
        "n_images": len(sample),
        "support": {name: int(np.sum(labels == index)) for index, name in enumerate(CLASS_NAMES)},
        "split_images": len(images),
        "seed": settings.seed,
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }


def describe(perturbation: Perturbation) -> dict[str, Any]:
    return {"name": perturbation.name, "family": perturbation.family, "family_title": perturbation.family_title,
            "level": perturbation.level, "parameter": perturbation.parameter}


def row_metrics(labels: np.ndarray, p_fake: np.ndarray, clean: np.ndarray, threshold: float,
                fixed_threshold: float | None) -> dict[str, Any]:
    """One row: accuracy at the threshold, ROC AUC, TPR and FPR at the clean 5%-FPR threshold, flips
    against the clean verdicts, and the mean change of P(FAKE) per true class (null where undefined)."""
    from sklearn.metrics import roc_auc_score

    predicted = classify(p_fake, threshold)
    both_classes = len(np.unique(labels)) == 2
    fpr, tpr = (None, None) if fixed_threshold is None else rates_at_threshold(labels, p_fake, fixed_threshold)
    change = p_fake - clean
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "roc_auc": float(roc_auc_score(labels, p_fake)) if both_classes else None,
        "tpr_at_target_fpr": tpr,
        "fpr_at_target_fpr": fpr,
        "flip_share": float(np.mean(predicted != classify(clean, threshold))),
        "mean_p_fake_change": {name: float(change[labels == index].mean()) if np.any(labels == index) else None
                               for index, name in enumerate(CLASS_NAMES)},
        "max_abs_p_fake_change": float(np.max(np.abs(change))),
    }


def write_robustness(output_dir: Path, report: dict[str, Any], fmt: str, reporter: Reporter) -> list[Path]:
    """robustness.json (atomically) and its figure; a warning when the lossless row differs from clean."""
    identity = next((row for row in report["rows"] if row["family"] == "png"), None)
    if identity is not None and identity["max_abs_p_fake_change"] > 0:
        reporter.warn(f"the lossless PNG round trip changed P(FAKE) by up to {identity['max_abs_p_fake_change']:.2g}:"
                      " scoring is not deterministic on this device, so small changes in other rows are noise")
    atomic_write_text(output_dir / ROBUSTNESS_NAME, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return robustness_figures(output_dir, fmt).written
