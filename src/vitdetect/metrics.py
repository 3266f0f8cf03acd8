"""Metrics from scikit-learn on gathered predictions. FAKE (label 1) is the positive class."""

from __future__ import annotations

import numpy as np


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
