"""Resume and interruption: a run stopped part-way and resumed is the run that was never stopped."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vitdetect.training.trainer as training
from conftest import run_main, user_error
from vitdetect.models.checkpoint import load_checkpoint
from vitdetect.training.artifacts import resume_settings

pytestmark = pytest.mark.usefixtures("single_thread")


def epoch_rows(results):
    """history.csv as numbers, without the wall-clock column."""
    with open(results / "history.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def assert_same_run(expected_dir, resumed_dir):
    expected, resumed = epoch_rows(expected_dir), epoch_rows(resumed_dir)
    assert [row["epoch"] for row in resumed] == [row["epoch"] for row in expected] == [1, 2, 3, 4]
    for want, got in zip(expected, resumed, strict=True):
        assert want.keys() == got.keys()
        assert all(abs(want[key] - got[key]) <= 1e-6 for key in want), (want, got)
    assert (resumed_dir / "batch_history.csv").read_text() == (expected_dir / "batch_history.csv").read_text()
    want_best, got_best = (load_checkpoint(d / "best_model.pth") for d in (expected_dir, resumed_dir))
    assert got_best["epoch"] == want_best["epoch"]
    assert abs(got_best["metrics"]["loss"] - want_best["metrics"]["loss"]) <= 1e-6
    want_last, got_last = (load_checkpoint(d / "last.pth", kind="last") for d in (expected_dir, resumed_dir))
    assert got_last["train_state"]["best_val_loss"] == pytest.approx(want_last["train_state"]["best_val_loss"],
                                                                     abs=1e-6)
    for name, weight in want_last["state_dict"].items():
        assert torch.allclose(got_last["state_dict"][name], weight, atol=1e-6), name


def signal_after_epoch(monkeypatch, epoch, signum=signal.SIGINT):
    """Send this process signum right after epoch's last.pth is saved, as a Ctrl-C at that moment would."""
    save_last = training.save_last

    def save_then_signal(output_dir, model, settings, prep, state, *rest):
        save_last(output_dir, model, settings, prep, state, *rest)
        if state.epoch == epoch:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(training, "save_last", save_then_signal)


def test_full_training_interrupted_after_epoch_2_and_resumed_matches_an_uninterrupted_run(
    tiny_data, tmp_path, capsys, monkeypatch
):
    """Whole-model training with the scratch recipe (cosine schedule with warmup, augmentation)."""
    args = ["train", "--data-dir", tiny_data, "--model", "scratch:vit-micro-32", "--batch-size", "16",
            "--epochs", "4", "--seed", "7", "--log-every", "1", "--cache-dir", tmp_path / "cache", "--quiet",
            "--cpu"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_main(capsys, *args, "--output-dir", straight)[0] == 0

    with monkeypatch.context() as patch:
        signal_after_epoch(patch, 2)
        message = user_error(run_main(capsys, *args, "--output-dir", stopped), code=130)
    last = stopped / "last.pth"
    assert message == (f"error: interrupted during epoch 3; epoch 2 is saved in {last}. "
                       f"Resume with: vitdetect train --resume {last}")
    assert load_checkpoint(last, kind="last")["epoch"] == 2 and len(epoch_rows(stopped)) == 2

    assert run_main(capsys, "train", "--resume", last, "--epochs", "4")[0] == 0
    assert_same_run(straight, stopped)


def test_head_training_on_cached_features_resumed_with_more_epochs_matches_an_uninterrupted_run(
    tiny_data, tiny_model_dir, tmp_path, capsys
):
    """Frozen pretrained backbone, feature cache with 2 augmented views, constant schedule: a finished
    2-epoch run resumed with --epochs 4 is the 4-epoch run."""
    args = ["train", "--data-dir", tiny_data, "--model", tiny_model_dir, "--train-mode", "head", "--lr", "0.01",
            "--feature-views", "2", "--batch-size", "16", "--seed", "3", "--log-every", "1", "--cache-dir",
            tmp_path / "cache", "--quiet", "--cpu"]
    straight, short = tmp_path / "straight", tmp_path / "short"
    assert run_main(capsys, *args, "--epochs", "4", "--output-dir", straight)[0] == 0
    assert run_main(capsys, *args, "--epochs", "2", "--output-dir", short)[0] == 0
    assert run_main(capsys, "train", "--resume", short / "last.pth", "--epochs", "4")[0] == 0
    assert_same_run(straight, short)


def test_sigint_and_sigterm_mid_training_exit_128_plus_signum_and_say_how_to_resume(tiny_data, tmp_path):
    """Two runs at once (one per signal), each signalled once its first epoch is saved."""
    runs = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        results = tmp_path / signum.name
        runs[signum] = results, subprocess.Popen(
            [sys.executable, "-m", "vitdetect", "train", "--data-dir", str(tiny_data), "--output-dir", str(results),
             "--model", "scratch:vit-micro-32", "--batch-size", "4", "--epochs", "500", "--patience", "500",
             "--cache-dir", str(tmp_path / signum.name / "cache"), "--quiet", "--cpu"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    deadline = time.monotonic() + 180
    waiting = dict(runs)
    while waiting and time.monotonic() < deadline:
        for signum, (results, process) in list(waiting.items()):
            if (results / "last.pth").exists() or process.poll() is not None:
                process.send_signal(signum)
                del waiting[signum]
        time.sleep(0.05)

    for signum, (results, process) in runs.items():
        _, err = process.communicate(timeout=120)
        assert process.returncode == 128 + signum, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        last = re.escape(str(results / "last.pth"))
        match = re.fullmatch(rf"error: interrupted during epoch (\d+); epoch (\d+) is saved in {last}\. "
                             rf"Resume with: vitdetect train --resume {last}", err.strip())
        assert match and int(match[1]) == int(match[2]) + 1, err
        assert load_checkpoint(results / "last.pth", kind="last")["epoch"] == int(match[2])
        assert not list(results.glob(".*.tmp"))


def test_resume_refuses_changes_that_alter_the_run(tmp_path, capsys, evaluated_run):
    last = evaluated_run / "last.pth"
    config = tmp_path / "run.toml"
    config.write_text("epochs = 9\n")
    cases = [
        (["--lr", "0.5"], 2, "cannot change --lr when resuming"),
        (["--model", "scratch:vit-tiny-32", "--data-dir", tmp_path], 2, "cannot change --data-dir, --model"),
        (["--epochs", "0"], 2, "invalid value for --epochs"),
        (["--config", config], 2, "--config cannot be combined with --resume"),
        (["--overwrite"], 2, "--overwrite cannot be combined with --resume"),
    ]
    for flags, code, fragment in cases:
        assert fragment in user_error(run_main(capsys, "train", "--resume", last, *flags), code=code)
    assert "'best' checkpoint; expected a 'last' one" in user_error(
        run_main(capsys, "train", "--resume", evaluated_run / "best_model.pth"), code=1)


def test_resume_accepts_the_same_folders_written_another_way(evaluated_run, monkeypatch):
    """runs/x given again as /abs/runs/x (or the other way round) is the same run, not a change."""
    saved = load_checkpoint(evaluated_run / "last.pth", kind="last")["settings"]
    output_dir, data_dir = Path(saved["output_dir"]).resolve(), Path(saved["data_dir"]).resolve()
    monkeypatch.chdir(output_dir.parent)
    settings = resume_settings(evaluated_run / "last.pth", {"output_dir": Path(output_dir.name),
                                                             "data_dir": Path(os.path.relpath(data_dir))})
    assert settings.output_dir.resolve() == output_dir and settings.data_dir.resolve() == data_dir


def test_non_finite_loss_names_epoch_and_batch_and_keeps_the_last_good_checkpoint(
    train_args, tmp_path, capsys, monkeypatch
):
    """The loss turns NaN in the first batch of epoch 3: epochs 1 and 2 stay saved, untouched."""
    current = {}
    run_epoch, cross_entropy = training.run_epoch, training.F.cross_entropy

    def tracking_run_epoch(forward, loader, accelerator, reporter, settings, epoch, *args, **kwargs):
        current["epoch"] = epoch
        return run_epoch(forward, loader, accelerator, reporter, settings, epoch, *args, **kwargs)

    def poisoned(*args, **kwargs):
        loss = cross_entropy(*args, **kwargs)
        return loss * float("nan") if current["epoch"] == 3 else loss

    monkeypatch.setattr(training, "run_epoch", tracking_run_epoch)
    monkeypatch.setattr(training.F, "cross_entropy", poisoned)
    results = tmp_path / "results"
    message = user_error(run_main(capsys, *train_args, "--epochs", "5"), code=1)
    assert message == (f"error: non-finite loss at epoch 3, batch 1 (train); training stopped, epoch 2 is saved "
                       f"in {results / 'last.pth'} (try a lower --lr)")
    assert load_checkpoint(results / "last.pth", kind="last")["epoch"] == 2
    assert load_checkpoint(results / "best_model.pth")["epoch"] <= 2
    assert len(epoch_rows(results)) == 2 and not list(results.glob(".*.tmp"))


def test_a_diverging_first_epoch_saves_nothing(train_args, tmp_path, capsys):
    message = user_error(run_main(capsys, *train_args, "--lr", "1e30", "--grad-clip", "0"), code=1)
    assert re.fullmatch(r"error: non-finite loss at epoch 1, batch \d+ \(train\); training stopped, no epoch had "
                        r"completed, no checkpoint is saved \(try a lower --lr\)", message), message
    assert not list((tmp_path / "results").glob("*.pth"))
