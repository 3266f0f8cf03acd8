import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitdetect.reports.metrics import (
    classify,
    detector_metrics,
    epoch_metrics,
    expected_calibration_error,
    predictions_csv,
    read_predictions,
    risk_coverage,
    selective_table,
    threshold_at_fpr,
)

NAMES = ("REAL", "FAKE")


def metrics_of(labels, p_fake, threshold=0.5):
    return detector_metrics(np.array(labels), np.array(p_fake, dtype=float), threshold, NAMES)


def test_perfect_detector():
    metrics, notes = metrics_of([0, 0, 1, 1], [0.0, 0.2, 0.8, 1.0])
    assert notes == []
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc"):
        assert metrics[key] == 1.0
    assert metrics["confusion_matrix"] == [[2, 0], [0, 2]]
    assert metrics["tpr_at_fpr"]["0.01"]["tpr"] == 1.0 and metrics["tpr_at_fpr"]["0.01"]["fpr"] == 0.0
    assert metrics["per_class"]["FAKE"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "class_accuracy": 1.0,
                                            "support": 2}
    assert metrics["brier_score"] == pytest.approx(np.mean([0, 0.04, 0.04, 0]))


def test_inverted_detector():
    metrics, _ = metrics_of([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])
    assert metrics["accuracy"] == 0.0 and metrics["roc_auc"] == 0.0
    assert metrics["confusion_matrix"] == [[0, 2], [2, 0]]
    # No threshold catches any FAKE without flagging a REAL first: the only point is "call nothing FAKE".
    point = metrics["tpr_at_fpr"]["0.05"]
    assert point["tpr"] == 0.0 and point["threshold"] > 0.9
    assert not classify(np.array([0.9]), point["threshold"]).any()


def test_constant_predictor():
    metrics, notes = metrics_of([0, 0, 0, 1], [0.5] * 4)
    assert metrics["roc_auc"] == 0.5
    assert metrics["pr_auc"] == pytest.approx(0.25)  # AP of a constant score is the FAKE prevalence
    assert metrics["confusion_matrix"] == [[0, 3], [0, 1]]  # P(FAKE) >= threshold counts as FAKE
    assert metrics["per_class"]["REAL"]["precision"] is None
    assert notes == ["REAL precision undefined (null): no image predicted REAL"]
    assert metrics["ece"] == pytest.approx(0.25)


@pytest.mark.parametrize("present", [0, 1])
def test_one_class_missing_gives_null_and_a_warning_not_a_crash(present):
    metrics, notes = metrics_of([present] * 3, [0.2, 0.6, 0.9])
    missing = NAMES[1 - present]
    assert metrics["roc_auc"] is None and metrics["pr_auc"] is None and metrics["balanced_accuracy"] is None
    assert metrics["tpr_at_fpr"] == {"0.01": None, "0.05": None}
    assert metrics["per_class"][missing]["recall"] is None and metrics["per_class"][missing]["support"] == 0
    assert any("roc_auc" in note for note in notes) and any(f"no {missing} images" in note for note in notes)
    json.dumps(metrics, allow_nan=False)  # null, never NaN


def brute_force_ece(labels, p_fake, bins=15):
    """ECE bin by bin with explicit loops: an independent check of the vectorised version."""
    total = 0.0
    for b in range(bins):
        low, high = np.linspace(0, 1, bins + 1)[b : b + 2]
        inside = [i for i, p in enumerate(p_fake) if (low < p <= high) or (b == 0 and p <= high)]
        if inside:
            gap = np.mean([labels[i] for i in inside]) - np.mean([p_fake[i] for i in inside])
            total += len(inside) / len(p_fake) * abs(gap)
    return total


scores = st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=2, max_size=60)


@settings(max_examples=60, deadline=None)
@given(scores, st.sampled_from([0.01, 0.05, 0.2]))
def test_properties_on_random_scores(pairs, target):
    labels, p_fake = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    metrics, _ = detector_metrics(labels, p_fake, 0.5, NAMES)
    json.dumps(metrics, allow_nan=False)
    assert sum(map(sum, metrics["confusion_matrix"])) == len(labels)
    ece = expected_calibration_error(labels, p_fake)
    assert ece == pytest.approx(brute_force_ece(labels, p_fake), abs=1e-12)
    point = threshold_at_fpr(labels, p_fake, target)
    if len(set(labels)) < 2:
        assert point is None
        return
    called = classify(p_fake, point["threshold"]).astype(bool)
    assert called[labels == 0].mean() == point["fpr"] <= target
    assert called[labels == 1].mean() == point["tpr"]
    # No threshold does better: every score, as a threshold, either exceeds the FPR or catches no more.
    for candidate in p_fake:
        flagged = p_fake >= candidate
        if flagged[labels == 0].mean() <= target:
            assert flagged[labels == 1].mean() <= point["tpr"]


def test_predictions_csv_round_trips_exactly(tmp_path):
    p_fake = np.array([0.1, 1 / 3, 0.999999999999, 0.5])
    path = tmp_path / "predictions.csv"
    paths = ["a,1.jpg", "b.jpg", "c.jpg", "d.jpg"]
    path.write_text(predictions_csv(paths, np.array([0, 1, 1, 0]), p_fake, 0.5, NAMES))
    back = read_predictions(path, list(NAMES))
    assert back.paths[0] == "a,1.jpg"
    assert np.array_equal(back.p_fake, p_fake)  # bit-exact, so recomputed metrics match to 1e-9
    assert back.predicted.tolist() == [0, 0, 1, 1]


def test_epoch_metrics_unchanged():
    result = epoch_metrics(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4]))
    expected = {"loss": 0.25, "accuracy": 0.75, "precision": 1.0, "recall": 0.5, "f1": 2 / 3}
    assert result == pytest.approx(expected)


def test_selective_prediction_decides_the_most_confident_first_and_ties_together():
    # confidences 0.9 (right), 0.8 (wrong), 0.8 (right), 0.6 (wrong), 0.55 (right)
    labels = np.array([1, 0, 0, 1, 1])
    p_fake = np.array([0.9, 0.8, 0.2, 0.4, 0.55])
    curve = risk_coverage(labels, p_fake, 0.5)
    assert curve["coverage"].tolist() == [0.2, 0.6, 0.8, 1.0]  # the two 0.8s are decided together
    assert curve["min_confidence"] == pytest.approx([0.9, 0.8, 0.6, 0.55])
    assert curve["risk"] == pytest.approx([0, 1 / 3, 2 / 4, 2 / 5])
    rows = {row["target_coverage"]: row for row in selective_table(labels, p_fake, 0.5, (1.0, 0.8, 0.5))}
    assert rows[1.0] == {"target_coverage": 1.0, "coverage": 1.0, "min_confidence": 0.55, "accuracy": 0.6,
                         "decided": 5}
    assert rows[0.8]["min_confidence"] == pytest.approx(0.6) and rows[0.8]["accuracy"] == 0.5
    assert rows[0.5]["coverage"] == 0.6 and rows[0.5]["decided"] == 3  # 50% falls inside the tie: both decided
    assert selective_table([], [], 0.5) == [] and metrics_of([0, 1], [0.1, 0.9])[0]["selective"][0]["accuracy"] == 1
