"""Atomic file writes: a reader (or a crash) only ever sees the old complete file or the new one."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vitdetect.errors import VitdetectError


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(temp_path) on a temp file beside path, fsync it, then rename it over path.

    On any failure (disk full, interrupt) the temp file is removed and path is untouched; an OSError
    names path, not the temp file.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make shared checkpoints unreadable to others
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def write_failures_as_os_errors() -> Iterator[None]:
    """torch's zip writer and safetensors report a failed write (disk full, quota) with their own
    exception types: raise it as the OSError it is, which atomic writes clean up and the CLI prints."""
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        text = str(exc)
        if not re.search(r"inline_container|PytorchStreamWriter|I/O error|os error \d+", text):
            raise
        number = re.search(r"os error (\d+)", text)
        if number:
            raise OSError(int(number[1]), os.strerror(int(number[1]))) from exc
        raise OSError(errno.EIO, "write failed (is the disk full?)") from exc


def atomic_write_dir(path: Path, write: Callable[[Path], object]) -> None:
    """Fill a temp folder beside path with write(temp_dir), then swap it in place of path.

    On Linux the swap is one atomic exchange; elsewhere the old folder is renamed aside first, which
    leaves a moment where path is missing (its old version then sits in .NAME.old).
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.with_name(f".{path.name}.old")
    try:
        os.chmod(tmp, 0o755)
        write(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync_file(file)
        if path.exists() and _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old version
        else:
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def remove_leftovers(directory: Path, names: Iterable[str]) -> None:
    """Delete what atomic writes of these names left in directory when a process was killed mid-way."""
    for name in names:
        for leftover in [*Path(directory).glob(f".{name}.*.tmp"), Path(directory) / f".{name}.old"]:
            remove_path(leftover)


def remove_path(path: Path) -> None:
    """Delete a file, link or folder tree; nothing when it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error (same errno, same subclass) naming the file the caller asked for."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_writable_dir(directory: Path) -> None:
    """Create directory if needed and prove it takes files, before any long work writes there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise VitdetectError(f"cannot write to output dir {directory}: {exc.strerror or exc}") from None


def ensure_writable_parent(path: Path, flag: str = "--output") -> None:
    """Create path's folder if needed and check it takes files, before any long work writes path there."""
    from vitdetect.errors import UsageError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the folder for {flag} {path}: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"cannot write {flag} {path}: its folder is not writable")
