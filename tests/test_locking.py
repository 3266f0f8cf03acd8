"""One writer per output folder: a second writer is turned away at once, and a dead holder never blocks."""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import run_main, user_error
from vitdetect.models.checkpoint import load_checkpoint
from vitdetect.utils.locking import HOLDER_NAME, LOCK_NAME, FolderInUse, output_lock

pytestmark = pytest.mark.usefixtures("single_thread")
HOLD = "import sys, time\nfrom vitdetect.utils.locking import output_lock\nwith output_lock(sys.argv[1]):\n" \
       "    print('held', flush=True)\n    time.sleep(600)\n"


def in_use(folder, pid, command=".+"):
    """The one line a writer turned away from folder gets, as a pattern; command: a pattern of the holder's."""
    return (rf"output folder {re.escape(str(folder))} is in use by process {pid} on {re.escape(socket.gethostname())}"
            rf" \({command}, started [\d-]+ [\d:]+\): wait for it to finish, or write into another folder")


def train_command(data, results, cache, *flags):
    return [sys.executable, "-m", "vitdetect", "train", "--data-dir", str(data), "--output-dir", str(results),
            "--model", "scratch:vit-micro-32", "--batch-size", "16", "--cache-dir", str(cache), "--quiet", "--cpu",
            *flags]


def wait_until_held(folder, process, timeout=120):
    """Until process holds folder's lock (its holder file is written right after it takes the lock)."""
    deadline = time.monotonic() + timeout
    while not (folder / HOLDER_NAME).exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never took the lock"
        time.sleep(0.02)


def test_a_second_writer_is_turned_away_at_once_and_a_kill_9_frees_the_folder(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        started = time.monotonic()
        with pytest.raises(FolderInUse) as refused, output_lock(folder):
            pass
        assert time.monotonic() - started < 0.5
        assert re.fullmatch(in_use(folder, holder.pid, re.escape(f"-c {folder}")), str(refused.value)), refused.value
        assert refused.value.exit_code == 1
    finally:
        holder.kill()  # kill -9: no clean-up runs in the holder
        holder.wait()
    assert json.loads((folder / HOLDER_NAME).read_text())["pid"] == holder.pid  # a dead holder's name is left...
    with output_lock(folder):  # ...but its lock died with it
        assert json.loads((folder / HOLDER_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(FolderInUse, match=f"in use by process {os.getpid()} "), output_lock(folder):
            pass  # one holder, even within one process
    assert sorted(path.name for path in folder.iterdir()) == [LOCK_NAME]


def test_two_trains_on_one_folder_one_trains_the_other_exits_1_at_once(tiny_data, tmp_path):
    results, cache = tmp_path / "results", tmp_path / "cache"
    first = subprocess.Popen(train_command(tiny_data, results, cache, "--epochs", "2"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_until_held(results, first)
    # Pause the first run while the second starts: on a busy machine the second's start-up could otherwise
    # outlast the whole first run. A paused holder still holds its lock.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run(train_command(tiny_data, results, cache, "--epochs", "3", "--lr", "1e-3"),
                                capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 1, second.stderr
    pattern = in_use(results, first.pid, r"vitdetect train --data-dir .+")
    assert re.fullmatch("error: " + pattern, second.stderr.strip()), second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err

    # The folder holds exactly the first run: its settings and its epochs in every artifact.
    config = json.loads((results / "config.json").read_text())["settings"]
    best, last = load_checkpoint(results / "best_model.pth"), load_checkpoint(results / "last.pth", kind="last")
    assert config == best["settings"] == last["settings"]
    assert (config["epochs"], config["lr"]) == (2, 5e-4)
    with open(results / "history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in history] == [1, 2] and last["epoch"] == 2
    assert best["epoch"] == int(min(history, key=lambda row: float(row["val_loss"]))["epoch"])
    assert best["metrics"]["loss"] == pytest.approx(float(history[best["epoch"] - 1]["val_loss"]))
    assert [path.name for path in results.iterdir() if path.name.startswith(".")] == [LOCK_NAME]


def test_a_lock_left_by_a_kill_9d_run_does_not_block_the_next_run(tiny_data, tmp_path, capsys):
    results, cache = tmp_path / "results", tmp_path / "cache"
    command = train_command(tiny_data, results, cache, "--epochs", "50")
    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until_held(results, killed)
    killed.kill()
    killed.wait()
    killed.stderr.close()
    assert json.loads((results / HOLDER_NAME).read_text())["pid"] == killed.pid  # its lock file and name stay
    (results / ".last.pth.x1y2.tmp").write_bytes(b"half a checkpoint")  # as a write killed mid-way leaves

    assert run_main(capsys, *command[3:], "--epochs", "1")[0] == 0  # the same command again, here
    assert load_checkpoint(results / "last.pth", kind="last")["epoch"] == 1
    assert [path.name for path in results.iterdir() if path.name.startswith(".")] == [LOCK_NAME]


def test_evaluate_holds_its_output_folder_and_the_checkpoint_folder_it_rewrites(evaluated_run, tmp_path, capsys):
    run, elsewhere, data = tmp_path / "run", tmp_path / "elsewhere", evaluated_run.parent / "cifake"
    run.mkdir()
    (run / "best_model.pth").write_bytes((evaluated_run / "best_model.pth").read_bytes())
    evaluate = ["evaluate", "--checkpoint", run / "best_model.pth", "--data-dir", data, "--cache-dir",
                tmp_path / "cache", "--quiet"]
    with output_lock(run):  # as a training run into it would
        checkpoint = (run / "best_model.pth").read_bytes()
        for flags in ([], ["--set-threshold-at-fpr", "0.1", "--output-dir", elsewhere]):
            message = user_error(run_main(capsys, *evaluate, *flags), code=1)
            assert re.fullmatch("error: " + in_use(run, os.getpid()), message), message
        assert (run / "best_model.pth").read_bytes() == checkpoint
        assert not (elsewhere / "metrics.json").exists() and not (run / "metrics.json").exists()
    assert run_main(capsys, *evaluate, "--set-threshold-at-fpr", "0.1", "--output-dir", elsewhere)[0] == 0
    assert "threshold" in load_checkpoint(run / "best_model.pth") and (elsewhere / "metrics.json").is_file()
