"""kill -9 at random moments of training: what is on disk is always a complete old or new version."""

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from vitdetect.config.run_files import BEST_NAME, LAST_NAME, PRETRAINED_DIR_NAME
from vitdetect.models.build import model_from_config
from vitdetect.models.checkpoint import load_checkpoint
from vitdetect.utils.locking import LOCK_NAME

pytestmark = pytest.mark.usefixtures("single_thread")
KILLS = 4
# What a write killed mid-way may leave: hidden temp files and folders, never a file under a final name;
# and the lock file with the killed holder's name beside it (the lock itself died with the process).
LEFTOVER = re.compile(r"\..+\.(\w+\.tmp|old)|\.write-test|\.vitdetect\.lock(\.holder)?")


def assert_complete(results):
    """Every artifact present loads in full; anything else is a hidden leftover of a killed write."""
    if not results.exists():  # killed before training began
        return
    names = {path.name for path in results.iterdir()}
    assert all(LEFTOVER.fullmatch(name) for name in names if name.startswith(".")), sorted(names)
    assert {path.name for path in results.glob("*.pth")} <= {BEST_NAME, LAST_NAME}, sorted(names)
    for name, kind in ((BEST_NAME, "best"), (LAST_NAME, "last")):
        if (results / name).exists():
            payload = load_checkpoint(results / name, kind=kind)
            model_from_config(payload["model_config"], payload["state_dict"])
    if (results / PRETRAINED_DIR_NAME).exists():
        from transformers import ViTForImageClassification

        ViTForImageClassification.from_pretrained(results / PRETRAINED_DIR_NAME)
    if (results / "config.json").exists():
        json.loads((results / "config.json").read_text())
    for name in ("history.csv", "batch_history.csv"):
        if (results / name).exists():
            with open(results / name, newline="") as handle:
                assert len({len(row) for row in csv.reader(handle)}) <= 1, name  # no half-written row


def temp_names(results):
    """The atomic writes in flight: their hidden temp files and folders."""
    try:
        return {name for name in os.listdir(results) if name.endswith(".tmp")}
    except FileNotFoundError:
        return set()


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_only_complete_files_and_the_run_resumes(tiny_data, tmp_path):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    results = tmp_path / "results"

    def train(*flags, epochs=100_000):
        """Resume the run when an epoch is saved; else start again (--overwrite: a run killed between
        its first best_model.pth and last.pth left a model, with nothing to resume). A constant schedule,
        so that the run can be resumed with fewer epochs at the end."""
        if (results / LAST_NAME).exists():
            return [sys.executable, "-m", "vitdetect", "train", "--resume", str(results / LAST_NAME), *flags]
        return [sys.executable, "-m", "vitdetect", "train", "--data-dir", str(tiny_data), "--output-dir",
                str(results), "--model", "scratch:vit-micro-32", "--batch-size", "16", "--epochs", str(epochs),
                "--schedule", "constant", "--patience", "100000", "--log-every", "1", "--cache-dir",
                str(tmp_path / "cache"), "--quiet", "--cpu", "--overwrite"]

    kills = []
    for attempt in range(KILLS):
        process = subprocess.Popen(train(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started = time.monotonic()
        if attempt == 0:  # any moment of a first run: start-up and the decoded-image cache included
            time.sleep(rng.uniform(0, 10))
        else:  # in the middle of the n-th write of this run: a checkpoint, history, save_pretrained folder
            writes, seen = rng.randint(1, 15), set()
            while process.poll() is None and time.monotonic() - started < 120:
                in_flight = temp_names(results)
                seen |= in_flight
                if in_flight and len(seen) >= writes:
                    break
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.02))
        assert process.poll() is None, process.stderr.read().decode()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        process.stderr.close()
        kills.append(round(time.monotonic() - started, 2))
        try:
            assert_complete(results)
        except AssertionError as exc:
            raise AssertionError(f"random seed {seed}, kill -9 after {kills} s: {exc}") from exc

    epoch = load_checkpoint(results / LAST_NAME, kind="last")["epoch"] if (results / LAST_NAME).exists() else 0
    finished = subprocess.run(train("--epochs", str(epoch + 1)) if epoch else train(epochs=1),
                              capture_output=True, text=True)
    assert finished.returncode == 0, f"random seed {seed}, kill -9 after {kills} s: {finished.stderr}"
    assert load_checkpoint(results / LAST_NAME, kind="last")["epoch"] == epoch + 1
    assert [path.name for path in results.iterdir() if path.name.startswith(".")] == [LOCK_NAME]  # leftovers removed
