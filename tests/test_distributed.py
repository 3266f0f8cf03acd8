"""One run in two processes (torchrun, gloo on the CPU) gives the numbers one process gives.

Each launch runs under a timeout: a process left waiting in a collective that another skipped
fails the test (and its processes are killed) instead of blocking the suite.
"""

from __future__ import annotations

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
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from conftest import make_dataset
from vitdetect.cli import app
from vitdetect.config.labels import CLASS_NAMES
from vitdetect.data.dataset import list_split, stratified_split
from vitdetect.utils.locking import LOCK_NAME, output_lock

pytestmark = pytest.mark.slow
LAUNCH_TIMEOUT_S = 240
PROCESSES = 2


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 ARGS` (a free port each time); fails on error or hang."""
    proc = launch(*args, cwd=cwd)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-5000:]}"
    return proc


def launch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 ARGS`, whatever its exit code; fails on a hang."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(PROCESSES), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        stdout, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        stdout, stderr = proc.communicate()
        pytest.fail(f"still running after {LAUNCH_TIMEOUT_S}s (a hang?):\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def kill_tree(pid: int) -> None:
    """torchrun and its workers, which run in sessions of their own (killpg would miss them)."""
    import psutil

    launcher = psutil.Process(pid)
    for process in [*launcher.children(recursive=True), launcher]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def evaluate_in_one_process(*args: str) -> None:
    result = CliRunner().invoke(app, ["evaluate", *args, "--quiet"])
    assert result.exit_code == 0, result.output


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_numbers(got, expected, path: str = "metrics") -> None:
    """Equal structure and values; floats to 1e-6, the last bits a different batch composition may move."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), path
        for key in expected:
            assert_same_numbers(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), path
        for index, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same_numbers(a, b, f"{path}[{index}]")
    elif isinstance(expected, float):
        assert math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9), f"{path}: {got} != {expected}"
    else:
        assert got == expected, path


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory):
    """`torchrun --nproc_per_node 2 -m vitdetect train` on 82 images (17 validation: an odd count)."""
    root = tmp_path_factory.mktemp("distributed")
    data = make_dataset(root / "cifake", per_class=41, splits=("train",))
    output = root / "results"
    flags = ["--data-dir", str(data), "--output-dir", str(output), "--model", "scratch:vit-micro-32",
             "--batch-size", "6", "--epochs", "2", "--log-every", "1", "--cache-dir", str(root / "cache"),
             "--report-to", "tensorboard", "--run-name", "two"]
    proc = torchrun("-m", "vitdetect", "train", *flags, cwd=root)
    return root, data, output, proc


def test_two_process_training_writes_once_and_its_validation_metrics_are_exact(two_process_run):
    root, data, output, proc = two_process_run
    # One writer, one voice: a single summary and a single line per epoch, from the main process.
    assert proc.stdout.count("training summary") == 1
    assert proc.stderr.count("2 process(es) x batch 6 = 12 images per step") == 1
    assert proc.stderr.count("epoch 2/2:") == 1
    config = json.loads((output / "config.json").read_text())
    assert (config["processes"], config["images_per_step"]) == (PROCESSES, 12)
    # One lock, taken by the main process; no probe, temp or holder file left.
    assert [p.name for p in output.iterdir() if p.name.startswith(".")] == [LOCK_NAME]
    history = read_rows(output / "history.csv")
    assert [int(row["epoch"]) for row in history] == [1, 2]
    # One TensorBoard writer, the main process's, with the gathered validation loss.
    assert len(list((output / "two").glob("events.*"))) == 1
    events = EventAccumulator(str(output / "two"))
    events.Reload()
    assert [event.value for event in events.Scalars("val/loss")] == [np.float32(row["val_loss"]) for row in history]
    best = min(history, key=lambda row: float(row["val_loss"]))

    # The same validation split, scored afterwards by one process through `vitdetect evaluate`.
    listed = list_split(data, "train")
    _, val_idx = stratified_split(torch.tensor(listed.labels), 0.2, 42)
    for index in val_idx:
        target = root / "validation-only" / "validation" / CLASS_NAMES[listed.labels[index]]
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(listed.paths[index], target / listed.paths[index].name)
    evaluate_in_one_process("--checkpoint", str(output / "best_model.pth"), "--data-dir",
                            str(root / "validation-only"), "--split", "validation", "--output-dir",
                            str(root / "evaluated"), "--cache-dir", str(root / "cache"))
    metrics = json.loads((root / "evaluated" / "metrics.json").read_text())
    fake = metrics["per_class"]["FAKE"]
    assert metrics["n_images"] == len(val_idx) == 17
    assert metrics["accuracy"] == float(best["val_accuracy"])
    assert (fake["precision"], fake["recall"], fake["f1"]) == tuple(
        float(best[f"val_{name}"]) for name in ("precision", "recall", "f1"))
    # Mean cross-entropy in float32 during training, sklearn's log loss in float64 here; before temperature
    # scaling, which the two processes fitted on the gathered validation logits, each image once.
    assert metrics["uncalibrated"]["log_loss"] == pytest.approx(float(best["val_loss"]), rel=1e-5)
    fit = metrics["temperature_fit"]
    assert (fit["n_images"], fit["split"], metrics["temperature"]) == (17, "validation", fit["temperature"])
    assert fit["nll_before"] == pytest.approx(float(best["val_loss"]), rel=1e-5)


def test_two_process_evaluation_of_101_images_matches_one_process(two_process_run, tmp_path):
    _, _, output, _ = two_process_run
    data = make_dataset(tmp_path / "cifake", per_class=51, splits=("test",))
    (data / "test" / "REAL" / "0.jpg").unlink()  # 101 images: the sampler pads the last batch
    common = ["--checkpoint", str(output / "best_model.pth"), "--data-dir", str(data), "--batch-size", "8",
              "--cache-dir", str(tmp_path / "cache"), "--robustness", "--robustness-images", "0",
              "--perturbations", "jpeg-50,noise-5,png"]
    proc = torchrun("-m", "vitdetect", "evaluate", *common, "--output-dir", str(tmp_path / "two"), cwd=tmp_path)
    assert proc.stdout.count("robustness: test split, 101 images") == 1
    evaluate_in_one_process(*common, "--output-dir", str(tmp_path / "one"))

    two, one = (read_rows(tmp_path / name / "predictions.csv") for name in ("two", "one"))
    assert len(two) == len(one) == 101
    assert len({row["path"] for row in two}) == 101  # no padded duplicate
    for got, expected in zip(two, one, strict=True):
        assert_same_numbers({**got, "p_fake": float(got["p_fake"])},
                            {**expected, "p_fake": float(expected["p_fake"])})
    two, one = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("two", "one"))
    assert two["n_images"] == 101
    assert_same_numbers(two, one)
    # The robustness rows too: each perturbed image scored once (n_images), the same numbers as one process.
    two, one = (json.loads((tmp_path / name / "robustness.json").read_text()) for name in ("two", "one"))
    assert two["n_images"] == 101 and [row["name"] for row in two["rows"]] == ["clean", "jpeg-50", "noise-5", "png"]
    for report in (two, one):
        for row in [report, *report["rows"]]:
            del row["seconds"]
    assert_same_numbers(two, one)


EARLY_STOP_SCRIPT = """
import json, os, sys
from pathlib import Path
from vitdetect.config.settings import TrainSettings
from vitdetect.training.trainer import train

result = train(TrainSettings(**json.loads(sys.argv[1])))
report = {"epoch": result.state.epoch, "stopped_early": result.stopped_early,
          "val_losses": [row["val_loss"] for row in result.state.epochs]}
Path(sys.argv[2], f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))
"""


def test_early_stopping_ends_every_process_at_the_same_epoch(tiny_data, tmp_path):
    # A learning rate far below float32 resolution: the validation loss cannot improve after epoch 1.
    settings = dict(data_dir=str(tiny_data), output_dir=str(tmp_path / "results"),
                    model="scratch:vit-micro-32", lr=1e-12, schedule="constant", patience=1, epochs=6,
                    batch_size=8, cache_dir=str(tmp_path / "cache"), quiet=True)
    script = tmp_path / "train_and_report.py"
    script.write_text(EARLY_STOP_SCRIPT)
    torchrun(str(script), json.dumps(settings), str(tmp_path), cwd=tmp_path)

    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(PROCESSES)]
    assert all(report["stopped_early"] for report in reports)
    assert reports[0]["epoch"] < settings["epochs"]
    assert reports[1] == reports[0]  # same epoch, same gathered validation losses
    assert len(read_rows(tmp_path / "results" / "history.csv")) == reports[0]["epoch"]


def test_a_folder_held_by_another_run_stops_every_process_with_the_same_line(tiny_data, tmp_path):
    """Only the main process tries the lock; the others learn its answer instead of waiting for it forever."""
    results = tmp_path / "results"
    with output_lock(results):  # as another run writing there would
        proc = launch("-m", "vitdetect", "train", "--data-dir", str(tiny_data), "--output-dir", str(results),
                      "--model", "scratch:vit-micro-32", "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == PROCESSES and len(set(errors)) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(f"error: output folder {results} is in use by process {os.getpid()} on ")
    assert [path.name for path in results.iterdir()] == [LOCK_NAME]  # nothing written by the refused run


def test_a_distilled_run_trains_one_teacher_that_every_process_learns_from(tiny_data, tmp_path):
    """--distill under torchrun: the main process trains and saves the teacher, every process loads that file."""
    results = tmp_path / "results"
    proc = torchrun("-m", "vitdetect", "train", "--data-dir", str(tiny_data), "--output-dir", str(results),
                    "--model", "scratch:vit-micro-32", "--batch-size", "8", "--epochs", "1", "--distill",
                    "--teacher-epochs", "2", "--no-calibration", "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert proc.stderr.count("teacher: small CNN, 2 epochs") == 1, proc.stderr
    assert (results / "teacher.pth").is_file() and (results / "best_model.pth").is_file()
    assert len(read_rows(results / "history.csv")) == 1
