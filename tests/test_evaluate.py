"""`vitdetect evaluate`: files, agreement with an independent recomputation, thresholds, errors."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vitdetect.cli import app
from vitdetect.data.decode import decode_rgb
from vitdetect.data.transforms import to_model_input
from vitdetect.inference.scoring import TrainedModel
from vitdetect.models.checkpoint import load_checkpoint
from vitdetect.utils.locking import LOCK_NAME

runner = CliRunner()
FIGURES = ("confusion_matrix", "roc_curve", "pr_curve", "score_histogram", "calibration", "risk_coverage")
METRIC_KEYS = {"positive_class", "class_names", "threshold", "n_images", "accuracy", "balanced_accuracy",
               "roc_auc", "pr_auc", "log_loss", "brier_score", "ece", "ece_bins", "tpr_at_fpr", "per_class",
               "confusion_matrix", "checkpoint", "checkpoint_epoch", "model", "split", "data_dir",
               "skipped_images", "temperature", "temperature_fit", "uncalibrated", "selective"}


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def recompute_metrics(predictions_path, threshold, bins=15, targets=(0.01, 0.05)):
    """Every metric again from predictions.csv alone, by routes independent of vitdetect.reports.metrics."""
    from sklearn import metrics as skm

    rows = read_rows(predictions_path)
    y = np.array([row["true_label"] == "FAKE" for row in rows], dtype=int)
    p = np.array([float(row["p_fake"]) for row in rows])
    pred = (p >= threshold).astype(int)
    report = skm.classification_report(y, pred, labels=[0, 1], target_names=["REAL", "FAKE"],
                                       output_dict=True, zero_division=0)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (p > low) & (p <= high) | ((low == 0) & (p <= high))
        if inside.any():
            ece += inside.mean() * abs(y[inside].mean() - p[inside].mean())
    tpr_at_fpr = {}
    for target in targets:
        ok = [t for t in np.unique(p) if (p[y == 0] >= t).mean() <= target]
        t = min(ok) if ok else np.nextafter(p.max(), np.inf)
        tpr_at_fpr[str(target)] = {"tpr": (p[y == 1] >= t).mean(), "fpr": (p[y == 0] >= t).mean(),
                                   "threshold": t}
    return {
        "n_images": len(rows),
        "accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": (report["REAL"]["recall"] + report["FAKE"]["recall"]) / 2,
        "roc_auc": skm.roc_auc_score(y, p),
        "pr_auc": skm.average_precision_score(y, p),
        "log_loss": skm.log_loss(y, np.column_stack([1 - p, p])),
        "brier_score": float(np.mean((p - y) ** 2)),
        "ece": ece,
        "tpr_at_fpr": tpr_at_fpr,
        "per_class": {name: {"precision": report[name]["precision"], "recall": report[name]["recall"],
                             "f1": report[name]["f1-score"],
                             "class_accuracy": float(np.mean(pred[y == i] == i)),
                             "support": int(report[name]["support"])}
                      for i, name in enumerate(["REAL", "FAKE"])},
        "confusion_matrix": [[int(np.sum((y == t) & (pred == q))) for q in (0, 1)] for t in (0, 1)],
        "predicted_labels_agree": all(row["predicted_label"] == ("FAKE" if q else "REAL")
                                      for row, q in zip(rows, pred, strict=True)),
    }


def mismatches(saved, recomputed, tolerance=1e-9, where=""):
    """Keys of recomputed whose saved value differs by more than tolerance (nested)."""
    if isinstance(recomputed, dict):
        return [m for key, value in recomputed.items()
                for m in mismatches(saved.get(key) if isinstance(saved, dict) else None, value, tolerance,
                                    f"{where}.{key}")]
    if isinstance(recomputed, list):
        return [] if saved == recomputed else [where]
    if saved is None or not math.isclose(saved, recomputed, rel_tol=0, abs_tol=tolerance):
        return [f"{where}: saved {saved} recomputed {recomputed}"]
    return []


def test_writes_metrics_predictions_and_figures(evaluated_run):
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    assert set(metrics) == METRIC_KEYS
    assert metrics["positive_class"] == "FAKE" and metrics["split"] == "test" and metrics["threshold"] == 0.5
    rows = read_rows(evaluated_run / "predictions.csv")
    expected = sorted(str(p) for p in (evaluated_run.parent / "cifake" / "test").rglob("*.jpg"))
    assert sorted(row["path"] for row in rows) == expected  # one row per image, no duplicate, none lost
    assert metrics["n_images"] == len(rows) == 46
    assert all(0 <= float(row["p_fake"]) <= 1 for row in rows)
    assert all(row["true_label"] == Path(row["path"]).parent.name for row in rows)
    for name in FIGURES:
        assert (evaluated_run / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_json_agrees_with_a_recomputation_from_predictions(evaluated_run):
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    recomputed = recompute_metrics(evaluated_run / "predictions.csv", metrics["threshold"])
    assert recomputed.pop("predicted_labels_agree")
    assert mismatches(metrics, recomputed) == []


def test_the_selective_table_agrees_with_a_brute_force_recomputation(evaluated_run):
    """For each coverage: the highest confidence cut that still decides that share, and the accuracy above it."""
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    rows = read_rows(evaluated_run / "predictions.csv")
    y = np.array([row["true_label"] == "FAKE" for row in rows], dtype=int)
    p = np.array([float(row["p_fake"]) for row in rows])
    called = (p >= metrics["threshold"]).astype(int)
    sure = np.where(called == 1, p, 1 - p)
    assert [row["target_coverage"] for row in metrics["selective"]] == [1.0, 0.99, 0.98, 0.95, 0.9, 0.8]
    for row in metrics["selective"]:
        cut = max(t for t in np.unique(sure) if np.mean(sure >= t) >= row["target_coverage"] - 1e-12)
        decided = sure >= cut
        assert row["min_confidence"] == cut and row["decided"] == decided.sum()
        assert row["coverage"] == pytest.approx(decided.mean()) and row["coverage"] >= row["target_coverage"]
        assert row["accuracy"] == pytest.approx(np.mean(called[decided] == y[decided]))
    assert metrics["selective"][0]["accuracy"] == pytest.approx(metrics["accuracy"])


def test_predictions_are_the_models_scores_for_those_files(evaluated_run):
    trained = TrainedModel.load(evaluated_run / "best_model.pth")
    rows = read_rows(evaluated_run / "predictions.csv")
    chosen = rows[:3] + rows[-3:]
    arrays = np.stack([decode_rgb(row["path"], trained.prep.storage_size) for row in chosen])
    batch = torch.as_tensor(arrays).permute(0, 3, 1, 2)
    with torch.inference_mode():
        logits = trained.model.eval()(pixel_values=to_model_input(batch, trained.prep)).logits
    direct = torch.softmax(logits / trained.temperature, dim=-1)[:, 1].numpy()
    assert np.allclose(direct, [float(row["p_fake"]) for row in chosen], atol=1e-6)


def test_set_threshold_at_fpr_is_stored_and_used(evaluated_run, tmp_path):
    checkpoint = tmp_path / "model.pth"
    shutil.copy(evaluated_run / "best_model.pth", checkpoint)
    data = evaluated_run.parent / "cifake"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(data), "--quiet",
            "--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, [*args, "--set-threshold-at-fpr", "0.1", "--output-dir", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "stored threshold" in result.output
    stored = load_checkpoint(checkpoint)["threshold"]
    assert TrainedModel.load(checkpoint).threshold == stored
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["threshold"] == stored
    rows = read_rows(tmp_path / "a" / "predictions.csv")
    real_called_fake = [row["predicted_label"] == "FAKE" for row in rows if row["true_label"] == "REAL"]
    assert np.mean(real_called_fake) <= 0.1
    # A later evaluate (and predict) classifies at the stored threshold by default.
    result = runner.invoke(app, [*args, "--output-dir", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["threshold"] == stored


def error_of(args, tmp_path):
    """The one-line error of an evaluate that must fail before writing anything."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["evaluate", *args, "--output-dir", str(out), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists() or [p.name for p in out.iterdir()] == [LOCK_NAME]  # nothing half-written
    return result.output


def test_missing_checkpoint_is_one_line_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vitdetect", "evaluate", "--checkpoint", "missing.pth"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: checkpoint not found: missing.pth (train one with `vitdetect train`)"


def test_errors_are_one_line(evaluated_run, tmp_path):
    data = str(evaluated_run.parent / "cifake")
    (tmp_path / "damaged.pth").write_bytes(os.urandom(2048))
    assert "damaged" in error_of(["--checkpoint", str(tmp_path / "damaged.pth"), "--data-dir", data], tmp_path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    assert "not a vitdetect checkpoint" in error_of(["--checkpoint", str(tmp_path / "other.pth")], tmp_path)
    checkpoint = str(evaluated_run / "best_model.pth")
    assert "no 'validation' folder" in error_of(["--checkpoint", checkpoint, "--data-dir", data,
                                                  "--split", "validation"], tmp_path)
    assert "data dir not found" in error_of(["--checkpoint", checkpoint, "--data-dir", str(tmp_path / "no")],
                                            tmp_path)
    assert "--set-threshold-at-fpr" in error_of(["--checkpoint", checkpoint, "--set-threshold-at-fpr", "1.5"],
                                                tmp_path)


@pytest.mark.slow
def test_two_processes_report_exactly_one_prediction_per_image(evaluated_run, tmp_path):
    """torchrun with 2 CPU processes: 46 images in batches of 8 pad the last shard; no duplicate survives."""
    data = evaluated_run.parent / "cifake"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "vitdetect",
         "evaluate", "--checkpoint", str(evaluated_run / "best_model.pth"), "--data-dir", str(data),
         "--batch-size", "8", "--output-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
         "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("evaluation: test split") == 1  # one summary, from the main process
    single = {row["path"]: float(row["p_fake"]) for row in read_rows(evaluated_run / "predictions.csv")}
    rows = read_rows(tmp_path / "predictions.csv")
    assert len(rows) == len(single) == len({row["path"] for row in rows})
    assert all(abs(float(row["p_fake"]) - single[row["path"]]) < 1e-6 for row in rows)
    assert json.loads((tmp_path / "metrics.json").read_text())["n_images"] == len(single)
