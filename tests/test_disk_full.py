"""A disk that fills up during `vitdetect train`: the checkpoint write of epoch 2 runs out of space half-way.

The write is failed inside the real atomic write (vitdetect.utils.torch_files -> utils.atomic): the temp file gets
half a checkpoint, then ENOSPC. Epoch 1's best_model.pth and last.pth must stay byte for byte, the run must end
with one line (exit 1) and no temp file, and `--resume last.pth` must continue from epoch 1 to the end.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

import vitdetect.utils.torch_files as torch_files
from conftest import run_main, user_error
from vitdetect.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")
CHECKPOINTS = ("best_model.pth", "last.pth")
FAILING_WRITE = 3  # epoch 1 writes best_model.pth and last.pth; the third checkpoint write is epoch 2's first


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in CHECKPOINTS}


def fill_the_disk_at_write(number: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Make checkpoint write `number` fail with ENOSPC half-way; returns the digests of the checkpoints that were on
    disk at that moment (filled in when it happens)."""
    real_atomic_write, writes, before = torch_files.atomic_write, [], {}

    def atomic_write(path: Path, write) -> None:
        if path.name not in CHECKPOINTS:  # the decoded-image cache is written with torch too
            return real_atomic_write(path, write)
        writes.append(path)
        if len(writes) != number:
            return real_atomic_write(path, write)

        def half_then_full(tmp: Path) -> None:
            write(tmp)
            os.truncate(tmp, tmp.stat().st_size // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        before.update(digests(path.parent))
        return real_atomic_write(path, half_then_full)

    monkeypatch.setattr(torch_files, "atomic_write", atomic_write)
    return before


def test_a_full_disk_at_epoch_2_keeps_epoch_1s_checkpoints_and_resume_finishes_the_run(train_args, tmp_path,
                                                                                       capsys, monkeypatch):
    results = tmp_path / "results"
    with monkeypatch.context() as patch:
        before = fill_the_disk_at_write(FAILING_WRITE, patch)
        message = user_error(run_main(capsys, *train_args, "--epochs", "3"), code=1)
    assert message.startswith("error: ") and message.endswith(": No space left on device"), message
    assert str(results) in message
    assert before and digests(results) == before  # both untouched, byte for byte
    assert [load_checkpoint(results / name)["epoch"] for name in CHECKPOINTS] == [1, 1]
    assert not [path.name for path in results.rglob("*") if path.name.endswith(".tmp")]

    code, _, err = run_main(capsys, "train", "--resume", results / "last.pth", "--quiet")
    assert code == 0, err
    last = load_checkpoint(results / "last.pth", kind="last")
    assert last["epoch"] == 3 and [row["epoch"] for row in last["history"]["epochs"]] == [1, 2, 3]
