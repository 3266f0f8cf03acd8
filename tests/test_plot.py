"""`vitdetect plot` and the figures: rebuilt from files alone, without torch."""

import shutil
import subprocess
import sys
import textwrap

import numpy as np
from typer.testing import CliRunner

from vitdetect.cli import app
from vitdetect.reports.plots import fractional_epochs, moving_average

runner = CliRunner()
TRAINING = ("epoch_training_curves", "batch_training_curves")
EVALUATION = ("confusion_matrix", "roc_curve", "pr_curve", "score_histogram", "calibration", "risk_coverage")
RESULT_FILES = ("history.csv", "batch_history.csv", "metrics.json", "predictions.csv")
# Makes `import torch` fail the way it does where torch is not installed, then runs the CLI.
WITHOUT_TORCH = textwrap.dedent("""
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, BlockTorch())
    from vitdetect.cli import main
    try:
        main(sys.argv[1:])
    finally:
        print("torch imported:", "torch" in sys.modules)
""")


def results_only(evaluated_run, target):
    """The saved results of a run without its checkpoints or figures."""
    target.mkdir()
    for name in RESULT_FILES:
        shutil.copy(evaluated_run / name, target)
    return target


def test_train_and_evaluate_write_every_figure(evaluated_run):
    for name in TRAINING + EVALUATION:
        assert (evaluated_run / f"{name}.png").stat().st_size > 10_000, name


def test_plot_rebuilds_every_figure_without_torch_or_a_model(evaluated_run, tmp_path):
    results = results_only(evaluated_run, tmp_path / "results")
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "plot", "--results-dir", str(results)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torch imported: False" in proc.stdout
    for name in TRAINING + EVALUATION:
        assert (results / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_svg_and_pdf(evaluated_run, tmp_path):
    results = results_only(evaluated_run, tmp_path / "results")
    for fmt, magic in (("svg", b"<?xml"), ("pdf", b"%PDF")):
        result = runner.invoke(app, ["plot", "--results-dir", str(results), "--format", fmt])
        assert result.exit_code == 0, result.output
        for name in TRAINING + EVALUATION:
            assert (results / f"{name}.{fmt}").read_bytes().startswith(magic)


def test_missing_inputs_are_skipped_with_a_note(evaluated_run, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(evaluated_run / "history.csv", results)
    result = runner.invoke(app, ["plot", "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in results.glob("*.png")) == ["epoch_training_curves.png"]
    assert "skipped batch_training_curves.png: no batch_history.csv" in result.output
    assert "skipped roc_curve.png: no metrics.json or predictions.csv" in result.output


def test_nothing_to_plot_and_bad_files_are_one_line_errors(evaluated_run, tmp_path):
    for args, expected in ((["--results-dir", str(tmp_path / "absent")], "results dir not found"),
                           (["--results-dir", str(tmp_path)], "nothing to plot"),
                           (["--format", "gif"], "gif")):
        proc = subprocess.run([sys.executable, "-m", "vitdetect", "plot", *args], capture_output=True, text=True)
        assert proc.returncode != 0 and expected in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    results = results_only(evaluated_run, tmp_path / "results")
    (results / "predictions.csv").write_text("path,true_label\nx.jpg,MAYBE\n")
    result = runner.invoke(app, ["plot", "--results-dir", str(results)])
    assert result.exit_code == 1 and "not a vitdetect predictions file" in result.output
    assert not (results / "roc_curve.png").exists()


def test_batch_positions_and_smoothing():
    epochs, steps = np.array([1, 1, 1, 2, 2, 2]), np.array([1, 10, 20, 1, 10, 20])
    assert fractional_epochs(epochs, steps).tolist() == [0.05, 0.5, 1.0, 1.05, 1.5, 2.0]
    assert np.allclose(moving_average(np.full(7, 0.3), 5), 0.3)  # no sag at the ends
    assert np.allclose(moving_average(np.arange(9.0), 3)[1:-1], np.arange(1.0, 8.0))  # centred: no lag
