"""`vitdetect download`: CIFAKE from Kaggle, a Hugging Face mirror or a local zip, verified, with a manifest.

Every path fills a temp folder beside DEST, checks the counts, decodes every image, writes DEST/MANIFEST.tsv
(relative path, size, sha256) and only then renames the folder into place: an interrupted run never
leaves a DEST that looks complete. kagglehub and datasets are imported only when used.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vitdetect.archive import SPLITS, extract_archive, move_tree
from vitdetect.atomic import atomic_write_dir, atomic_write_text
from vitdetect.errors import UsageError, VitdetectError
from vitdetect.images import ImageDecodeError, decode_rgb, is_image_path
from vitdetect.labels import CLASS_NAMES
from vitdetect.network import CONNECT_TIMEOUT_S, unreachable_reason
from vitdetect.progress import Reporter
from vitdetect.settings import DownloadSettings

MANIFEST_NAME = "MANIFEST.tsv"
MANIFEST_HEADER = "path\tsize\tsha256"
FULL_COUNTS = {"train": 50_000, "test": 10_000}  # images per class in the published CIFAKE
# kagglesdk sends its API calls without a timeout and huggingface_hub retries for ~25 s: a short TCP
# probe first turns "no network" into one prompt line instead of a long hang.
Counts = dict[str, dict[str, int]]  # split -> class -> images
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


def manual_route(settings: DownloadSettings) -> str:
    return (f"download the zip from https://www.kaggle.com/datasets/{settings.kaggle_dataset} and run "
            f"`vitdetect download --from-zip FILE`")


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


def expected_counts(expect: str) -> Counts | None:
    """full, TRAIN,TEST (per class) or any (None)."""
    if expect == "any":
        return None
    given = FULL_COUNTS.values() if expect == "full" else map(int, expect.split(","))
    per_split = dict(zip(SPLITS, given, strict=True))
    return {split: dict.fromkeys(CLASS_NAMES, per_split[split]) for split in SPLITS}


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


# ---- sources ---------------------------------------------------------------------------------------


def _import_client(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise VitdetectError(f"{module} is not installed: pip install \"vitdetect[download]\" "
                             "(or use --from-zip)") from None


def require_reachable(url: str, service: str, settings: DownloadSettings) -> None:
    """Fail with the manual route when url's host (or the proxy for it) cannot be reached."""
    failure = unreachable_reason(url, CONNECT_TIMEOUT_S)
    if failure is not None:
        address, reason = failure
        raise VitdetectError(f"cannot reach {service} at {address} ({reason}; no internet connection?): "
                             f"{manual_route(settings)}")


def fetch_kaggle(settings: DownloadSettings, folder: Path, reporter: Reporter) -> int:
    """kagglehub downloads and unpacks the dataset into folder/.kaggle; its images are moved into place."""
    kagglehub = _import_client("kagglehub")
    import requests
    from kagglehub import exceptions as kaggle_errors
    from kagglesdk.kaggle_env import get_endpoint, get_env

    require_reachable(get_endpoint(get_env()), "Kaggle", settings)
    staging = folder / ".kaggle"
    handle = settings.kaggle_dataset
    reporter.info(f"downloading {handle} from Kaggle")
    try:
        kagglehub.dataset_download(handle, output_dir=str(staging))
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise VitdetectError(f"lost the connection to Kaggle ({type(exc).__name__}): check the network, or "
                             f"{manual_route(settings)}") from None
    except kaggle_errors.UnauthenticatedError:
        raise _kaggle_refused(401, settings) from None
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        raise _kaggle_refused(status, settings) from None
    except kaggle_errors.DataCorruptionError:
        raise VitdetectError(f"the Kaggle download was corrupted (checksum mismatch): run the command again, "
                             f"or {manual_route(settings)}") from None
    ignored = move_tree(staging, folder, reporter)
    shutil.rmtree(staging)
    return ignored


def _kaggle_refused(status: int, settings: DownloadSettings) -> VitdetectError:
    if status in (401, 403):
        what = (f"Kaggle refused access (HTTP {status}): check KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN "
                "or ~/.kaggle/kaggle.json (a public dataset needs none; unset wrong ones)")
    elif status == 404:
        what = f"Kaggle dataset {settings.kaggle_dataset} not found (HTTP 404): check --kaggle-dataset"
    else:
        what = f"Kaggle answered HTTP {status}: try again later"
    return VitdetectError(f"{what}, or {manual_route(settings)}")


def fetch_huggingface(settings: DownloadSettings, folder: Path, reporter: Reporter) -> int:
    """A hub mirror through `datasets`, written out as files (the original encoded bytes, not re-encoded)."""
    datasets = _import_client("datasets")
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    repo = settings.hf_repo
    local = Path(repo).is_dir()
    if local:
        origin = "a local folder"
    elif constants.HF_HUB_OFFLINE:
        origin = "the local cache (HF_HUB_OFFLINE=1)"
    else:
        origin = constants.ENDPOINT
        require_reachable(constants.ENDPOINT, "the Hugging Face Hub", settings)
    reporter.info(f"loading {repo} from {origin}")
    try:
        builder = datasets.load_dataset_builder(repo)
        builder.download_and_prepare()
        splits = builder.as_dataset()
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        hint = "log in with `hf auth login` or set HF_TOKEN" if status in (401, 403) else "try again later"
        raise VitdetectError(f"the Hugging Face Hub refused {repo} (HTTP {status}): {hint}, or "
                             f"{manual_route(settings)}") from None
    except ConnectionError:
        cause = ("HF_HUB_OFFLINE=1 is set and it is not in the local cache: unset it"
                 if constants.HF_HUB_OFFLINE else "check the network")
        raise VitdetectError(f"cannot reach {repo} on the Hugging Face Hub ({cause}), or "
                             f"{manual_route(settings)}") from None
    except FileNotFoundError:
        raise VitdetectError(f"dataset {repo} not found on the Hugging Face Hub: check --hf-repo, or "
                             f"{manual_route(settings)}") from None
    for split in SPLITS:
        if split not in splits:
            raise VitdetectError(f"mirror {repo} has no '{split}' split (has {', '.join(splits)}): "
                                 "not CIFAKE, pick another --hf-repo")
        check_mirror_split(splits[split], split, settings)
    for split in SPLITS:
        write_mirror_split(splits[split], folder / split, reporter)
    return 0


def _mirror_columns(features) -> tuple[str, str]:
    """Names of the image column and of the class-label column of a `datasets` split."""
    import datasets

    images = [name for name, kind in features.items() if isinstance(kind, datasets.Image)]
    labels = [name for name, kind in features.items() if isinstance(kind, datasets.ClassLabel)]
    if not images or not labels:
        raise VitdetectError(f"mirror lacks an image column or a class-label column (has "
                             f"{', '.join(features)}): pick another --hf-repo")
    return images[0], labels[0]


def check_mirror_split(split_data, split: str, settings: DownloadSettings) -> None:
    """Refuse a mirror whose label names or split size do not match CIFAKE (labels are matched by name)."""
    _, label_column = _mirror_columns(split_data.features)
    names = [str(name).upper() for name in split_data.features[label_column].names]
    if sorted(names) != sorted(CLASS_NAMES):
        raise VitdetectError(f"mirror {settings.hf_repo} labels are {names}, not REAL and FAKE: "
                             "pick another --hf-repo")
    expected = expected_counts(settings.expect_counts)
    if expected is not None and split_data.num_rows != sum(expected[split].values()):
        raise VitdetectError(
            f"mirror {settings.hf_repo} has {split_data.num_rows:,} {split} images, CIFAKE has "
            f"{sum(expected[split].values()):,}: pick another --hf-repo (or pass --expect-counts any)"
        )


def write_mirror_split(split_data, folder: Path, reporter: Reporter) -> None:
    """Write each example's encoded image to folder/{REAL,FAKE}/NNNNNN.ext, its class taken by label name."""
    import datasets

    image_column, label_column = _mirror_columns(split_data.features)
    class_of = [str(name).upper() for name in split_data.features[label_column].names]
    raw = split_data.cast_column(image_column, datasets.Image(decode=False))
    for name in CLASS_NAMES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    with reporter.task(f"write {folder.name}", raw.num_rows, unit="img") as task:
        for index, row in enumerate(raw):
            data = _image_bytes(row[image_column])
            target = folder / class_of[row[label_column]] / f"{index:06d}{_image_suffix(data)}"
            target.write_bytes(data)
            task.advance()


def _image_bytes(image: dict) -> bytes:
    if image.get("bytes"):
        return image["bytes"]
    if image.get("path") and Path(image["path"]).is_file():
        return Path(image["path"]).read_bytes()
    raise VitdetectError("a mirror example has no image data: pick another --hf-repo")


def _image_suffix(data: bytes) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = (image.format or "").lower()
    except (UnidentifiedImageError, OSError):
        return ".bin"  # reported as undecodable by the verification that follows
    return {"jpeg": ".jpg", "mpo": ".jpg"}.get(kind, f".{kind}")
