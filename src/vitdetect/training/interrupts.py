"""Stopping a training run cleanly: Ctrl-C and SIGTERM become a flag the loop checks between batches."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vitdetect.config.run_files import LAST_NAME
from vitdetect.errors import Terminated, VitdetectError


class Interrupted(VitdetectError):
    """Ctrl-C or SIGTERM during training; exit code 128 + signal number, as shells expect."""


@contextmanager
def interruption_guard() -> Iterator[Callable[[], int]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks between batches (0 while none came)."""
    received = {"signum": 0}

    def handler(signum, _frame) -> None:
        if received["signum"]:  # asked twice: stop now rather than at the end of the batch
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        received["signum"] = signum

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: signals stay with the caller
            pass
    try:
        yield lambda: received["signum"]
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def interruption_message(signum: int, epoch: int, output_dir: Path) -> str:
    saved, saved_path = saved_so_far(epoch, output_dir), output_dir / LAST_NAME
    if epoch > 1:
        return f"interrupted during epoch {epoch}; {saved}. Resume with: vitdetect train --resume {saved_path}"
    return f"interrupted during epoch 1; {saved}: start again"


def saved_so_far(epoch: int, output_dir: Path) -> str:
    """What is on disk when epoch stops before its end: the previous epoch's last.pth, or nothing."""
    if epoch > 1:
        return f"epoch {epoch - 1} is saved in {output_dir / LAST_NAME}"
    return "no epoch had completed, no checkpoint is saved"


