"""`vitdetect evaluate --robustness`: the report's rows, recomputed independently; its figure; its errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from conftest import run_main, user_error
from test_plot import WITHOUT_TORCH
from vitdetect.cli import app
from vitdetect.data.dataset import load_split, stratified_sample
from vitdetect.data.perturbations import PERTURBATIONS, has_webp
from vitdetect.errors import VitdetectError
from vitdetect.evaluation.robustness import row_metrics
from vitdetect.inference.scoring import TrainedModel, fake_probabilities
from vitdetect.reports.robustness import FAMILY_COLOURS, comparison_table, draw_robustness, read_robustness

runner = CliRunner()
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "robust_training.py"
REPORT_KEYS = {"positive_class", "class_names", "threshold", "target_fpr", "target_fpr_threshold", "n_images",
               "support", "split_images", "seed", "seconds", "rows", "checkpoint", "checkpoint_epoch", "model",
               "split", "data_dir", "skipped_images"}
ROW_KEYS = {"name", "family", "family_title", "level", "parameter", "accuracy", "roc_auc", "tpr_at_target_fpr",
            "fpr_at_target_fpr", "flip_share", "mean_p_fake_change", "max_abs_p_fake_change", "seconds"}
SAMPLE = 30  # of the 46 test images of evaluated_run


@pytest.fixture(scope="module")
def robustness_run(evaluated_run, tmp_path_factory):
    """evaluate --robustness on a 30-image sample: (output dir, CLI output)."""
    output = tmp_path_factory.mktemp("robustness")
    args = ["evaluate", "--checkpoint", str(evaluated_run / "best_model.pth"), "--data-dir",
            str(evaluated_run.parent / "cifake"), "--output-dir", str(output), "--batch-size", "8",
            "--cache-dir", str(evaluated_run.parent / "cache"), "--robustness", "--robustness-images", str(SAMPLE),
            "--quiet"]
    result = runner.invoke(app, args, terminal_width=100)
    assert result.exit_code == 0, result.output
    return output, result.output


def test_report_structure_and_table(robustness_run):
    output, printed = robustness_run
    report = json.loads((output / "robustness.json").read_text())
    assert set(report) == REPORT_KEYS
    assert [row["name"] for row in report["rows"]] == ["clean", *PERTURBATIONS]
    assert all(set(row) == ROW_KEYS for row in report["rows"])
    assert report["n_images"] == SAMPLE and report["split_images"] == 46
    assert report["support"] == {"REAL": 15, "FAKE": 15}  # stratified
    assert (report["positive_class"], report["target_fpr"], report["seed"]) == ("FAKE", 0.05, 42)
    assert (output / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert "robustness: test split, 30 images" in printed
    for name in ["clean", *PERTURBATIONS]:
        assert f"\n{name} " in printed


def test_figure_point_labels_never_overlap_even_when_families_coincide(robustness_run):
    """Every family at the clean score: the labels at one level are stacked, not drawn over each other."""
    import matplotlib.pyplot as plt

    report = read_robustness(robustness_run[0] / "robustness.json")
    for row in report["rows"]:
        row["accuracy"] = row["roc_auc"] = 0.9
    figure = plt.figure()
    draw_robustness(figure, report)
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        boxes = [text.get_window_extent(renderer) for text in ax.texts]
        assert len(boxes) == sum(row["family"] in FAMILY_COLOURS for row in report["rows"])
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(figure)


def test_clean_and_lossless_rows_change_nothing(robustness_run):
    rows = {row["name"]: row for row in read_robustness(robustness_run[0] / "robustness.json")["rows"]}
    assert {"jpeg-100"} | ({"webp-lossless", "webp-80"} if has_webp() else set()) <= set(rows)  # the format rows
    for name in ("clean", "png", *(["webp-lossless"] if has_webp() else [])):
        row = rows[name]
        assert row["flip_share"] == 0 and row["max_abs_p_fake_change"] == 0
        assert row["mean_p_fake_change"] == {"REAL": 0.0, "FAKE": 0.0}
        for key in ("accuracy", "roc_auc", "tpr_at_target_fpr", "fpr_at_target_fpr"):
            assert row[key] == rows["clean"][key]
    assert rows["clean"]["fpr_at_target_fpr"] <= 0.05
    assert rows["noise-10"]["max_abs_p_fake_change"] > 0  # the other rows really are perturbed


def test_rows_agree_with_an_independent_recomputation(evaluated_run, robustness_run):
    """Sample, perturb and score by hand; every number of two rows again with sklearn and numpy."""
    report = read_robustness(robustness_run[0] / "robustness.json")
    trained = TrainedModel.load(evaluated_run / "best_model.pth")
    images = load_split(evaluated_run.parent / "cifake", "test", trained.prep.storage_size)
    sample = images.subset(stratified_sample(images.labels, SAMPLE, 42))
    y = sample.labels.numpy()
    clean = fake_probabilities(trained, sample.images, 8)
    fixed = report["target_fpr_threshold"]
    # the clean operating point: the best TPR among thresholds whose clean FPR is at most 5%
    allowed = [t for t in np.unique(clean) if np.mean(clean[y == 0] >= t) <= 0.05]
    assert np.mean(clean[y == 0] >= fixed) <= 0.05
    assert np.mean(clean[y == 1] >= fixed) == max(np.mean(clean[y == 1] >= t) for t in allowed)
    rows = {row["name"]: row for row in report["rows"]}
    for name in ("jpeg-30", "noise-10"):
        p = fake_probabilities(trained, PERTURBATIONS[name](sample.images, 42), 8)
        row = rows[name]
        assert row["accuracy"] == pytest.approx(np.mean((p >= 0.5) == y))
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y, p))
        assert row["tpr_at_target_fpr"] == pytest.approx(np.mean(p[y == 1] >= fixed))
        assert row["fpr_at_target_fpr"] == pytest.approx(np.mean(p[y == 0] >= fixed))
        assert row["flip_share"] == pytest.approx(np.mean((p >= 0.5) != (clean >= 0.5)))
        for label, class_name in enumerate(("REAL", "FAKE")):
            assert row["mean_p_fake_change"][class_name] == pytest.approx(np.mean((p - clean)[y == label]), abs=1e-7)


def test_plot_rebuilds_the_figure_from_the_json_without_torch(robustness_run, tmp_path):
    shutil.copy(robustness_run[0] / "robustness.json", tmp_path)
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "plot", "--results-dir", str(tmp_path),
                           "--format", "svg"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torch imported: False" in proc.stdout
    assert (tmp_path / "robustness.svg").read_bytes().startswith(b"<?xml")
    assert "skipped roc_curve.svg" in proc.stderr  # the other figures' inputs are absent, not an error


def test_unknown_perturbations_and_misplaced_flags_are_usage_errors(evaluated_run, capsys, tmp_path):
    checkpoint = str(evaluated_run / "best_model.pth")
    common = ("evaluate", "--checkpoint", checkpoint, "--data-dir", evaluated_run.parent / "cifake",
              "--output-dir", tmp_path / "out")
    line = user_error(run_main(capsys, *common, "--robustness", "--perturbations", "jpeg,sharpen"), code=2)
    assert line.startswith("error: unknown perturbation 'sharpen' (choose from jpeg-95,")
    line = user_error(run_main(capsys, *common, "--perturbations", "jpeg"), code=2)
    assert line == "error: --perturbations: only used with --robustness"
    for bad in ("-5", "1"):
        line = user_error(run_main(capsys, *common, "--robustness", "--robustness-images", bad), code=2)
        assert line.startswith("error: invalid value for --robustness-images")
    assert not (tmp_path / "out").exists()


def test_comparison_table_of_two_reports(robustness_run, tmp_path):
    report = read_robustness(robustness_run[0] / "robustness.json")
    better = json.loads(json.dumps(report))
    for row in better["rows"][1:]:
        row["accuracy"] = min(1.0, row["accuracy"] + 0.1)
    table = comparison_table(report, better)
    lines = table.splitlines()
    assert lines[0].startswith("| perturbation | accuracy without | accuracy with | change |")
    assert len([line for line in lines if line.startswith("|")]) == 2 + len(report["rows"])
    assert lines[2].startswith("| clean |") and "+0.0000" in lines[2]
    jpeg = next(line for line in lines if line.startswith("| JPEG re-compression, quality 30 |"))
    assert f"{report['rows'][4]['accuracy']:.4f}" in jpeg
    perturbed = [row for row in report["rows"] if row["family"] not in ("clean", "png")]
    assert len(perturbed) == 13 + 2 * has_webp() and f"over {len(perturbed)} perturbations" in lines[-1]
    elsewhere = {**better, "data_dir": "/somewhere/else/cifake"}  # the same data on another machine
    assert comparison_table(report, elsewhere) == table
    better["seed"] = 7
    with pytest.raises(VitdetectError, match="different samples"):
        comparison_table(report, better)
    for name, content in (("a.json", report), ("b.json", report)):
        (tmp_path / name).write_text(json.dumps(content))
    proc = subprocess.run([sys.executable, str(BENCHMARK), "--compare", str(tmp_path / "a.json"),
                           str(tmp_path / "b.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| clean |" in proc.stdout and "(+0.0000)" in proc.stdout


def test_undefined_values_are_null_for_a_one_class_sample():
    labels, clean = np.ones(4, dtype=np.int64), np.array([0.2, 0.6, 0.7, 0.9])
    row = row_metrics(labels, clean - 0.15, clean, 0.5, None)
    assert row["roc_auc"] is None and row["tpr_at_target_fpr"] is None and row["fpr_at_target_fpr"] is None
    assert row["mean_p_fake_change"]["REAL"] is None
    assert row["mean_p_fake_change"]["FAKE"] == pytest.approx(-0.15)
    assert row["flip_share"] == 0.25 and row["accuracy"] == 0.5
