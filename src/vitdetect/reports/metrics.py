"""Metrics from scikit-learn on gathered predictions, and the files evaluate saves them in.

FAKE (label 1) is the positive class of every score, curve and threshold. An image is classified
FAKE when P(FAKE) >= threshold, the rule scikit-learn's roc_curve uses for its thresholds.
This module imports no torch, so `vitdetect plot` can read the files without it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitdetect.errors import VitdetectError

PREDICTION_COLUMNS = ("path", "true_label", "p_fake", "predicted_label")
UNCALIBRATED_COLUMN = "p_fake_uncalibrated"  # P(FAKE) at T = 1, for the reliability diagram's "before" curve
CALIBRATION_BINS = 15
TARGET_FPRS = (0.01, 0.05)
SELECTIVE_COVERAGES = (1.0, 0.99, 0.98, 0.95, 0.90, 0.80)  # shares of images decided in metrics.json's "selective"


def epoch_metrics(labels: np.ndarray, predictions: np.ndarray, losses: np.ndarray) -> dict[str, float]:
    """Loss, accuracy, precision, recall and F1 of one epoch."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, pos_label=1, average="binary", zero_division=0
    )
    return {
        "loss": float(np.mean(losses)),
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def classify(p_fake: np.ndarray, threshold: float) -> np.ndarray:
    """Label ids: 1 (FAKE) where P(FAKE) >= threshold, else 0 (REAL)."""
    return (np.asarray(p_fake) >= threshold).astype(np.int64)


def confidence(p_fake: np.ndarray, threshold: float) -> np.ndarray:
    """The probability of the predicted class: P(FAKE) where the verdict is FAKE, else 1 - P(FAKE). The one
    definition of a verdict's confidence: predict shows it and compares it with --min-confidence, and evaluate's
    selective-prediction table decides the most confident images first by it."""
    p_fake = np.asarray(p_fake, dtype=np.float64)
    return np.where(classify(p_fake, threshold) == 1, p_fake, 1.0 - p_fake)


def risk_coverage(labels: np.ndarray, p_fake: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Selective prediction: a detector that answers UNSURE below a confidence decides its most confident images
    first. For each confidence it can stop at (the confidence of a decided image; equal confidences are decided
    together): the share of images decided (coverage), that confidence (the --min-confidence that decides them)
    and the error rate among them (risk). Most confident first; empty without images."""
    labels, p_fake = np.asarray(labels), np.asarray(p_fake, dtype=np.float64)
    sure = confidence(p_fake, threshold)
    order = np.argsort(-sure, kind="stable")
    ranked = sure[order]
    errors = np.cumsum(classify(p_fake, threshold)[order] != labels[order])
    decided = np.arange(1, len(labels) + 1)
    last_of_tie = np.r_[ranked[1:] < ranked[:-1], True] if len(labels) else np.zeros(0, dtype=bool)
    return {"coverage": decided[last_of_tie] / max(len(labels), 1), "min_confidence": ranked[last_of_tie],
            "risk": errors[last_of_tie] / decided[last_of_tie], "decided": decided[last_of_tie]}


def selective_table(labels: np.ndarray, p_fake: np.ndarray, threshold: float,
                    coverages: tuple[float, ...] = SELECTIVE_COVERAGES) -> list[dict[str, float]]:
    """For each target coverage, the highest --min-confidence that decides at least that share of the images, the
    share it decides (above the target only where equal confidences straddle it), and the accuracy on them."""
    curve = risk_coverage(labels, p_fake, threshold)
    rows = []
    for target in coverages if len(curve["coverage"]) else ():
        point = int(np.searchsorted(curve["coverage"], target - 1e-12))  # coverage rises along the curve
        rows.append({"target_coverage": target, "coverage": float(curve["coverage"][point]),
                     "min_confidence": float(curve["min_confidence"][point]),
                     "accuracy": float(1.0 - curve["risk"][point]), "decided": int(curve["decided"][point])})
    return rows


def rates_at_threshold(labels: np.ndarray, p_fake: np.ndarray, threshold: float) -> tuple[float, float]:
    """(FPR, TPR) of calling FAKE where P(FAKE) >= threshold: the share of REAL and of FAKE images called FAKE
    (nan for a class that is absent)."""
    labels, called_fake = np.asarray(labels), classify(p_fake, threshold).astype(bool)
    real, fake = labels == 0, labels == 1
    return (float(called_fake[real].mean()) if real.any() else math.nan,
            float(called_fake[fake].mean()) if fake.any() else math.nan)


def threshold_at_fpr(labels: np.ndarray, p_fake: np.ndarray, target_fpr: float) -> dict[str, float] | None:
    """The operating point with the highest TPR whose FPR is at most target_fpr; None without both classes.

    Its threshold reproduces that FPR and TPR through `classify`. When only "nothing is FAKE" meets the
    target, the threshold is the next float above the highest score.
    """
    from sklearn.metrics import roc_curve

    if len(np.unique(labels)) < 2:
        return None
    fpr, tpr, thresholds = roc_curve(labels, p_fake, pos_label=1, drop_intermediate=False)
    best = int(np.searchsorted(fpr, target_fpr, side="right")) - 1
    threshold = float(thresholds[best])
    if not math.isfinite(threshold):
        threshold = float(np.nextafter(np.max(p_fake), np.inf))
    return {"tpr": float(tpr[best]), "fpr": float(fpr[best]), "threshold": threshold}


@dataclass
class CalibrationBins:
    """Equal-width bins of P(FAKE): edges and image counts of all bins; the curve over the non-empty ones."""

    edges: np.ndarray
    counts: np.ndarray
    fraction_fake: np.ndarray  # per non-empty bin, from scikit-learn's calibration_curve
    mean_p_fake: np.ndarray


def calibration_bins(labels: np.ndarray, p_fake: np.ndarray,
                     n_bins: int = CALIBRATION_BINS) -> CalibrationBins:
    from sklearn.calibration import calibration_curve

    fraction_fake, mean_p_fake = calibration_curve(labels, p_fake, n_bins=n_bins, strategy="uniform",
                                                   pos_label=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # calibration_curve returns no counts: bin the way it does (searchsorted on the inner edges)
    counts = np.bincount(np.searchsorted(edges[1:-1], p_fake), minlength=n_bins)
    return CalibrationBins(edges, counts, fraction_fake, mean_p_fake)


def expected_calibration_error(labels: np.ndarray, p_fake: np.ndarray,
                               n_bins: int = CALIBRATION_BINS) -> float:
    """Sum over bins of (share of images) x |fraction FAKE - mean P(FAKE)|, the reliability diagram's gaps."""
    bins = calibration_bins(labels, p_fake, n_bins)
    shares = bins.counts[bins.counts > 0] / bins.counts.sum()
    return float(np.sum(shares * np.abs(bins.fraction_fake - bins.mean_p_fake)))


def detector_metrics(
    labels: np.ndarray, p_fake: np.ndarray, threshold: float, class_names: tuple[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Every score evaluate reports, as JSON-ready values, and warnings about the undefined ones (null)."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    labels, p_fake = np.asarray(labels, dtype=np.int64), np.asarray(p_fake, dtype=np.float64)
    predicted = classify(p_fake, threshold)
    notes: list[str] = []
    both_classes = len(np.unique(labels)) == 2
    if not both_classes:
        present = class_names[int(labels[0])] if len(labels) else "no"
        notes.append(f"only {present} images: roc_auc, pr_auc, balanced_accuracy and tpr_at_fpr "
                     "are undefined (null)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined values become null with our own note instead
        precision, recall, f1, support = precision_recall_fscore_support(
            labels, predicted, labels=[0, 1], zero_division=np.nan
        )
    per_class = {}
    for index, name in enumerate(class_names):
        scores = {"precision": precision[index], "recall": recall[index], "f1": f1[index],
                  "class_accuracy": recall[index]}
        undefined = [key for key, value in scores.items() if math.isnan(value)]
        if undefined:
            why = f"no {name} images" if support[index] == 0 else f"no image predicted {name}"
            notes.append(f"{name} {', '.join(undefined)} undefined (null): {why}")
        per_class[name] = {**{k: _number(v) for k, v in scores.items()}, "support": int(support[index])}
    metrics = {
        "positive_class": class_names[1],
        "class_names": list(class_names),
        "threshold": float(threshold),
        "n_images": len(labels),
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)) if both_classes else None,
        "roc_auc": float(roc_auc_score(labels, p_fake)) if both_classes else None,
        "pr_auc": float(average_precision_score(labels, p_fake, pos_label=1)) if both_classes else None,
        **probability_metrics(labels, p_fake),
        "ece_bins": CALIBRATION_BINS,
        "tpr_at_fpr": {str(target): threshold_at_fpr(labels, p_fake, target) for target in TARGET_FPRS},
        "selective": selective_table(labels, p_fake, threshold),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
    }
    return metrics, notes


def probability_metrics(labels: np.ndarray, p_fake: np.ndarray) -> dict[str, float]:
    """How good P(FAKE) is as a probability: log loss, Brier score and ECE (what temperature scaling changes)."""
    from sklearn.metrics import brier_score_loss, log_loss

    return {
        "log_loss": float(log_loss(labels, p_fake, labels=[0, 1])),
        "brier_score": float(brier_score_loss(labels, p_fake, pos_label=1)),
        "ece": expected_calibration_error(labels, p_fake),
    }


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass
class Predictions:
    """predictions.csv read back: label ids follow the order of class_names."""

    paths: list[str]
    labels: np.ndarray
    p_fake: np.ndarray
    predicted: np.ndarray
    p_fake_uncalibrated: np.ndarray | None = None  # P(FAKE) at T = 1, when the file has it


def predictions_csv(paths: list[str], labels: np.ndarray, p_fake: np.ndarray, threshold: float,
                    class_names: tuple[str, str], p_fake_uncalibrated: np.ndarray | None = None) -> str:
    """One row per image; P(FAKE) in repr form so reading it back gives the identical float. With
    p_fake_uncalibrated, a last column holds P(FAKE) before temperature scaling."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    extra = () if p_fake_uncalibrated is None else (UNCALIBRATED_COLUMN,)
    writer.writerow(PREDICTION_COLUMNS + extra)
    raw = [()] * len(paths) if p_fake_uncalibrated is None else [(repr(float(p)),) for p in p_fake_uncalibrated]
    rows = zip(paths, labels, p_fake, classify(p_fake, threshold), raw, strict=True)
    for path, label, score, guess, before in rows:
        writer.writerow((path, class_names[int(label)], repr(float(score)), class_names[int(guess)], *before))
    return buffer.getvalue()


def read_predictions(path: Path, class_names: list[str]) -> Predictions:
    ids = {name: index for index, name in enumerate(class_names)}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return Predictions(
            [row["path"] for row in rows],
            np.array([ids[row["true_label"]] for row in rows], dtype=np.int64),
            np.array([float(row["p_fake"]) for row in rows], dtype=np.float64),
            np.array([ids[row["predicted_label"]] for row in rows], dtype=np.int64),
            np.array([float(row[UNCALIBRATED_COLUMN]) for row in rows], dtype=np.float64)
            if rows and UNCALIBRATED_COLUMN in rows[0] else None,
        )
    except (OSError, KeyError, ValueError, TypeError, csv.Error) as exc:
        raise VitdetectError(f"cannot read {path}: not a vitdetect predictions file ({exc!r})") from None


def read_metrics(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(metrics, dict) or "class_names" not in metrics:
            raise ValueError("no class_names")
    except (OSError, ValueError) as exc:
        raise VitdetectError(f"cannot read {path}: not a vitdetect metrics file ({exc})") from None
    return metrics
