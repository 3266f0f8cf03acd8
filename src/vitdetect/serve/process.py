"""Running `vitdetect serve` as a child process on a free port: for the browser test and the load benchmark."""

from __future__ import annotations

import ctypes
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vitdetect.serve.server import ANNOUNCE_PREFIX

READY_TIMEOUT_S = 300.0  # a busy machine takes minutes to import torch and load a model


@dataclass(frozen=True)
class RunningServer:
    url: str  # the base URL, ending in /
    pid: int


@contextmanager
def server_process(args: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    """Start `python -m vitdetect serve ARGS --port 0` and wait until /healthz answers.

    Everything the server prints goes to log_path; it is stopped with SIGTERM on the way out.
    """
    process = subprocess.Popen([sys.executable, "-m", "vitdetect", "serve", *args, "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                               preexec_fn=_stop_with_parent if sys.platform == "linux" else None)
    announced: queue.Queue[str] = queue.Queue()
    copier = threading.Thread(target=_copy_output, args=(process, Path(log_path), announced), daemon=True)
    copier.start()
    try:
        yield RunningServer(_wait_until_ready(process, announced, Path(log_path)), process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        copier.join(timeout=10)


def _stop_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies, even killed by a signal that skips
    the clean-up above (a timed-out test or benchmark), so no server is left behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _copy_output(process: subprocess.Popen, log_path: Path, announced: queue.Queue) -> None:
    """Copy the server's output to the log (a full pipe would stall it) and pass on the line with its URL."""
    assert process.stdout is not None
    with open(log_path, "w", encoding="utf-8") as log:
        for line in process.stdout:
            log.write(line)
            log.flush()
            if line.startswith(ANNOUNCE_PREFIX):
                announced.put(line.removeprefix(ANNOUNCE_PREFIX).split()[0])
    announced.put("")  # the server exited


def _wait_until_ready(process: subprocess.Popen, announced: queue.Queue, log_path: Path) -> str:
    base = announced.get(timeout=READY_TIMEOUT_S)
    if not base:
        process.wait(timeout=30)
        raise RuntimeError(f"vitdetect serve did not start (exit code {process.returncode}):\n"
                           + log_path.read_text(encoding="utf-8")[-2000:])
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(base + "healthz", timeout=5) as response:
                if response.status == 200:
                    return base
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)
