"""`vitdetect download`: CIFAKE from Kaggle, a Hugging Face mirror or a local zip, verified, with a manifest.

Every path fills a temp folder beside DEST, checks the counts, decodes every image, writes DEST/MANIFEST.tsv
(relative path, size, sha256) and only then renames the folder into place: an interrupted run never
leaves a DEST that looks complete. kagglehub and datasets are imported only when used.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vitdetect.config.commands import DownloadSettings
from vitdetect.config.labels import CLASS_NAMES
from vitdetect.data.decode import ImageDecodeError, decode_rgb, is_image_path
from vitdetect.data.download.archive import SPLITS, extract_archive
from vitdetect.data.download.sources import Counts, expected_counts, fetch_huggingface, fetch_kaggle
from vitdetect.errors import UsageError, VitdetectError
from vitdetect.utils.atomic import atomic_write_dir, atomic_write_text
from vitdetect.utils.progress import Reporter

MANIFEST_NAME = "MANIFEST.tsv"
MANIFEST_HEADER = "path\tsize\tsha256"

# kagglesdk sends its API calls without a timeout and huggingface_hub retries for ~25 s: a short TCP
# probe first turns "no network" into one prompt line instead of a long hang.
_FREE_SPACE = "disk full: free some space (CIFAKE needs about 0.3 GB) and run the command again"
_PERMISSION = "permission denied or read-only file system: choose another --dest"
WRITE_ERRORS = {errno.ENOSPC: _FREE_SPACE, errno.EDQUOT: _FREE_SPACE, errno.EACCES: _PERMISSION,
                errno.EPERM: _PERMISSION, errno.EROFS: _PERMISSION}


@dataclass
class DownloadResult:
    dest: Path
    counts: Counts
    action: str  # "downloaded", "imported" or "already in place"
    ignored: int = 0  # files of the source outside the CIFAKE tree


@dataclass
class ManifestDiff:
    """How DEST differs from its manifest (relative paths)."""

    files: int
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.changed)


# ---- the command -----------------------------------------------------------------------------------


def download(settings: DownloadSettings, reporter: Reporter) -> DownloadResult:
    """Get CIFAKE into settings.dest, verified; a dest that already matches its manifest is left alone."""
    dest = settings.dest
    if dest.exists() and not settings.force:
        if is_complete(dest):
            return DownloadResult(dest, count_images(dest), "already in place")
        if not dest.is_dir() or any(dest.iterdir()):
            raise VitdetectError(f"{dest} exists and is not a complete vitdetect download: pass --overwrite to "
                                 "replace it, or choose another --dest")
    fetch, action = _fetcher(settings, reporter)
    outcome: dict[str, DownloadResult] = {}

    def fill(folder: Path) -> None:
        ignored = fetch(folder)
        counts = check_counts(folder, settings.expect_counts, reporter)
        write_manifest(folder, verify_images(folder, reporter))
        outcome["result"] = DownloadResult(dest, counts, action, ignored)

    made = [folder for folder in dest.absolute().parents if not folder.exists()]  # deepest first
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_dir(dest, fill)
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        raise VitdetectError(f"cannot write {dest}: {WRITE_ERRORS[exc.errno]}; nothing was put in "
                             "place") from None
    finally:
        if not dest.exists():  # a failed run leaves no empty folders behind either
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return outcome["result"]


def _fetcher(settings: DownloadSettings, reporter: Reporter) -> tuple[Callable[[Path], int], str]:
    max_bytes = int(settings.max_unpacked_gb * 1e9)
    if settings.from_zip is not None:
        return (lambda folder: extract_archive(settings.from_zip, folder, max_bytes, reporter)), "imported"
    if settings.source == "huggingface":
        return (lambda folder: fetch_huggingface(settings, folder, reporter)), "downloaded"
    return (lambda folder: fetch_kaggle(settings, folder, reporter)), "downloaded"


# ---- counts, manifest, verification ----------------------------------------------------------------


def count_images(root: Path) -> Counts:
    counts: Counts = {}
    for split in SPLITS:
        counts[split] = {}
        for name in CLASS_NAMES:
            folder = root / split / name
            images = [p for p in folder.iterdir() if is_image_path(p)] if folder.is_dir() else []
            counts[split][name] = len(images)
    return counts


def describe_counts(counts: Counts) -> str:
    return ", ".join(f"{split} " + " + ".join(f"{counts[split][name]:,} {name}" for name in CLASS_NAMES)
                     for split in SPLITS)


def check_counts(root: Path, expect: str, reporter: Reporter) -> Counts:
    """Images per split and class; an error when they differ from --expect-counts (a warning for `any`)."""
    counts = count_images(root)
    empty = [f"{split}/{name}" for split in SPLITS for name in CLASS_NAMES if not counts[split][name]]
    if empty:
        raise VitdetectError(f"no images in {', '.join(empty)} ({describe_counts(counts)}): not a complete "
                             "CIFAKE copy")
    expected = expected_counts(expect)
    if expected is None:
        full = expected_counts("full")
        if counts != full:
            reporter.warn(f"{describe_counts(counts)}; the full CIFAKE has {describe_counts(full)}")
    elif counts != expected:
        raise VitdetectError(
            f"found {describe_counts(counts)}, expected {describe_counts(expected)}: the source is "
            "incomplete or not CIFAKE (for a subset pass --expect-counts TRAIN,TEST per class, or "
            "--expect-counts any)"
        )
    return counts


@dataclass(frozen=True)
class FileCheck:
    size: int
    sha256: str
    problem: str | None = None  # why the file is not a usable image


def _read_no_follow(path: Path) -> bytes:
    """The bytes of a regular file; a symlink raises instead of being followed out of the dest."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _check_file(path: Path, decode: bool) -> FileCheck:
    try:
        data = _read_no_follow(path)
    except OSError as exc:
        return FileCheck(-1, "", f"unreadable: {exc.strerror}")
    problem = None
    if decode:
        try:
            decode_rgb(data)
        except ImageDecodeError as exc:
            problem = str(exc)
    return FileCheck(len(data), hashlib.sha256(data).hexdigest(), problem)


def check_files(root: Path, relatives: list[str], reporter: Reporter, decode: bool) -> dict[str, FileCheck]:
    """Size, sha256 and (when decode) a decode of every file, in parallel threads, with a progress bar."""
    workers = min(8, (os.cpu_count() or 1) * 2)
    checks: dict[str, FileCheck] = {}
    with reporter.task("verify", len(relatives), unit="file") as task, ThreadPoolExecutor(workers) as pool:
        for relative, check in zip(relatives, pool.map(lambda r: _check_file(root / r, decode), relatives),
                                   strict=True):
            checks[relative] = check
            task.advance()
    return checks


def scan_files(root: Path) -> dict[str, int]:
    """Relative path -> size of every file under root but the manifest; symlinks get size -1."""
    found: dict[str, int] = {}
    for directory, _, files in os.walk(root):  # never descends into symlinked folders
        for name in files:
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            if relative != MANIFEST_NAME:
                found[relative] = -1 if path.is_symlink() else path.stat().st_size
    return found


def verify_images(root: Path, reporter: Reporter) -> dict[str, FileCheck]:
    """Every file must be an image that decodes; returns their checks for the manifest."""
    checks = check_files(root, sorted(scan_files(root)), reporter, decode=True)
    failed = {relative: check.problem for relative, check in checks.items() if check.problem}
    if failed:
        relative, problem = next(iter(failed.items()))
        raise VitdetectError(f"{len(failed):,} of {len(checks):,} files do not decode (first: {relative}: "
                             f"{problem}): the source is damaged, fetch it again")
    return checks


def write_manifest(root: Path, checks: dict[str, FileCheck]) -> None:
    rows = [f"{relative}\t{check.size}\t{check.sha256}" for relative, check in sorted(checks.items())]
    lines = [MANIFEST_HEADER, *rows]
    atomic_write_text(root / MANIFEST_NAME, "\n".join(lines) + "\n")


def read_manifest(root: Path) -> dict[str, tuple[int, str]]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise VitdetectError(f"no {MANIFEST_NAME} in {root}: not a folder written by `vitdetect download`")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != MANIFEST_HEADER:
        raise VitdetectError(f"{path} is not a vitdetect manifest (first line should be {MANIFEST_HEADER!r})")
    recorded: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 or not fields[1].isdigit():
            raise VitdetectError(f"{path}:{number}: malformed line (expected path, size, sha256)")
        recorded[fields[0]] = (int(fields[1]), fields[2])
    return recorded


def compare_with_manifest(root: Path, reporter: Reporter, hash_files: bool) -> ManifestDiff:
    """Missing, extra and changed files; by size only, or also by sha256 when hash_files."""
    recorded = read_manifest(root)
    present = scan_files(root)
    diff = ManifestDiff(len(recorded), sorted(recorded.keys() - present.keys()),
                        sorted(present.keys() - recorded.keys()))
    common = sorted(recorded.keys() & present.keys())
    diff.changed = [rel for rel in common if present[rel] != recorded[rel][0]]
    if hash_files:
        same_size = [rel for rel in common if present[rel] == recorded[rel][0]]
        checks = check_files(root, same_size, reporter, decode=False)
        altered = [rel for rel in same_size if checks[rel].sha256 != recorded[rel][1]]
        diff.changed = sorted(diff.changed + altered)
    return diff


def is_complete(dest: Path) -> bool:
    """A quick idempotence check: manifest present, same files, same sizes (no hashing)."""
    try:
        return compare_with_manifest(dest, Reporter(quiet=True), hash_files=False).clean
    except VitdetectError:
        return False


def verify(settings: DownloadSettings, reporter: Reporter) -> ManifestDiff:
    """`--verify-only`: re-hash every file of dest against its manifest."""
    dest = settings.dest
    if settings.from_zip is not None:
        raise UsageError("--verify-only checks DEST as it is: drop --from-zip")
    if not dest.is_dir():
        raise VitdetectError(f"nothing to verify: {dest} is not a folder")
    return compare_with_manifest(dest, reporter, hash_files=True)
