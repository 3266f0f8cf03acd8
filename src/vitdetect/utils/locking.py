"""One writer per output folder: `output_lock(folder)` holds it for as long as a command writes there.

    from vitdetect.utils.locking import output_lock

    with output_lock(run_dir):      # FolderInUse (exit code 1) at once if another process holds run_dir
        ...                         # write the run's files

The lock is the operating system's lock (flock on Linux and macOS, LockFileEx on Windows, through the
`filelock` package) on FOLDER/.vitdetect.lock. The OS drops it when the holding process ends in any way,
kill -9 and power loss included, so a lock is never stale: the empty lock file stays in the folder (it is
not the lock; deleting it on release would let two processes lock two different files). The holder
writes who it is into FOLDER/.vitdetect.lock.holder, so that a process turned away can name it.

Under torchrun / accelerate launch, pass the accelerator: only the main process takes the lock, and if
it cannot, every process raises the same error.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vitdetect.errors import VitdetectError
from vitdetect.utils.atomic import atomic_write_text, ensure_writable_dir

LOCK_NAME = ".vitdetect.lock"
HOLDER_NAME = ".vitdetect.lock.holder"
COMMAND_CHARS = 160  # of the holder's command line, in the message of a process turned away
HOLDER_WAIT_S = 1.0  # a holder writes its name right after taking the lock: how long a loser waits to read it


class FolderInUse(VitdetectError):
    """Another process is writing into the folder; exit code 1."""


@contextmanager
def output_lock(folder: Path, accelerator=None) -> Iterator[None]:
    """Hold folder (created if missing) until the block ends; FolderInUse at once if another process holds it.

    With an accelerator of several processes, the main process holds it for all of them.
    """
    folder = Path(folder)
    if accelerator is None:
        lock = _acquire(folder)
    else:
        from vitdetect.utils.distributed import on_main_process

        lock = on_main_process(lambda: _acquire(folder), accelerator)
    try:
        yield
    finally:
        if lock is not None:
            (folder / HOLDER_NAME).unlink(missing_ok=True)
            lock.release()


def _acquire(folder: Path):
    from filelock import FileLock, Timeout

    ensure_writable_dir(folder)
    lock = FileLock(folder / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FolderInUse(f"output folder {folder} is in use by {_holder(folder)}: wait for it to finish, or "
                          "write into another folder") from None
    try:
        atomic_write_text(folder / HOLDER_NAME, json.dumps(_this_process()) + "\n")
    except BaseException:
        lock.release()
        raise
    return lock


def _this_process() -> dict[str, object]:
    program = Path(sys.argv[0])
    name = program.parent.name if program.name == "__main__.py" else program.name  # python -m vitdetect
    command = shlex.join([name, *sys.argv[1:]])
    if len(command) > COMMAND_CHARS:
        command = command[:COMMAND_CHARS - 3] + "..."
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _holder(folder: Path) -> str:
    """Who holds folder, as its holder file says; it may not be written yet in the first moments."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        try:
            holder = json.loads((folder / HOLDER_NAME).read_text(encoding="utf-8"))
            return (f"process {holder['pid']} on {holder['host']} ({holder['command']}, started "
                    f"{holder['started']})")
        except (OSError, ValueError, TypeError, KeyError):
            if time.monotonic() > deadline:
                return "another process"
            time.sleep(0.05)
