"""Putting CIFAKE files into the layout `train` reads: from a zip (checked before anything is written)
or from a folder a downloader filled.

Both accept the tree at the top (`train/REAL/...`) or under one folder (`cifake/train/REAL/...`), match
folder names case-insensitively and write the canonical `{train,test}/{REAL,FAKE}/NAME`.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vitdetect.config.labels import CLASS_NAMES
from vitdetect.data.decode import is_image_path
from vitdetect.errors import VitdetectError
from vitdetect.utils.progress import Reporter

SPLITS = ("train", "test")
IGNORED_FOLDERS = frozenset({"__MACOSX"})  # resource forks that macOS's zip adds


@dataclass(frozen=True)
class Placement:
    """Where one file of the source tree goes: prefix is the folder above train/test."""

    prefix: tuple[str, ...]
    relative: str  # canonical, e.g. train/REAL/0001.jpg


def place(parts: tuple[str, ...]) -> Placement | None:
    """The canonical place of a file given its path parts; None for files outside the CIFAKE tree."""
    if not parts or parts[0] in IGNORED_FOLDERS or len(parts) not in (3, 4):
        return None
    prefix, (split, label, name) = parts[:-3], parts[-3:]
    split, label = split.lower(), label.upper()
    if split not in SPLITS or label not in CLASS_NAMES or not is_image_path(Path(name)):
        return None
    return Placement(prefix, f"{split}/{label}/{name}")


def _single_prefix(placements: list[Placement], source: str) -> None:
    prefixes = {p.prefix for p in placements}
    if not placements:
        raise VitdetectError(
            f"{source} holds no images under train/{{REAL,FAKE}} or test/{{REAL,FAKE}}: is it the CIFAKE zip?"
        )
    if len(prefixes) > 1:
        shown = ", ".join(sorted("/".join(p) or "." for p in prefixes))
        raise VitdetectError(f"{source} holds more than one CIFAKE tree ({shown}): keep one and retry")
    seen: set[str] = set()
    for placement in placements:
        key = placement.relative.lower()
        if key in seen:
            raise VitdetectError(f"{source} holds {placement.relative} twice (names differing only in case)")
        seen.add(key)


# ---- zip -------------------------------------------------------------------------------------------


@dataclass
class ArchivePlan:
    """The members of a checked archive, where each goes, and how much they unpack to."""

    members: list[tuple[zipfile.ZipInfo, Placement]]
    ignored: int
    unpacked_bytes: int


def _safe_parts(info: zipfile.ZipInfo, archive: Path) -> tuple[str, ...]:
    """Path parts of a member; refuses absolute paths, `..`, drive letters and symlinks (zip-slip)."""
    name = info.filename.replace("\\", "/")
    parts = tuple(part for part in PurePosixPath(name).parts if part not in ("", "."))
    unsafe = name.startswith("/") or ".." in parts or (parts and ":" in parts[0]) or "\0" in name
    if unsafe:
        raise VitdetectError(f"unsafe path in {archive}: {info.filename!r} (absolute or with '..'); "
                             "nothing extracted")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise VitdetectError(f"{archive} holds a symbolic link ({info.filename!r}); nothing extracted")
    return parts


def plan_archive(archive: zipfile.ZipFile, path: Path) -> ArchivePlan:
    """Check every member before anything is written; map the CIFAKE images to their canonical place."""
    members: list[tuple[zipfile.ZipInfo, Placement]] = []
    ignored = 0
    for info in archive.infolist():
        parts = _safe_parts(info, path)
        if info.is_dir():
            continue
        placement = place(parts)
        if placement is None:
            ignored += 1
        else:
            members.append((info, placement))
    _single_prefix([placement for _, placement in members], str(path))
    return ArchivePlan(members, ignored, sum(info.file_size for info, _ in members))


def _check_room(plan: ArchivePlan, path: Path, target: Path, max_unpacked_bytes: int) -> None:
    gigabytes = plan.unpacked_bytes / 1e9
    if plan.unpacked_bytes > max_unpacked_bytes:
        raise VitdetectError(
            f"{path} would unpack to {gigabytes:.1f} GB, more than --max-unpacked-gb "
            f"{max_unpacked_bytes / 1e9:g}: refusing it (CIFAKE is about 0.2 GB)"
        )
    free = shutil.disk_usage(target).free
    if plan.unpacked_bytes > free:
        raise VitdetectError(
            f"not enough disk space in {target}: {path} needs {gigabytes:.2f} GB, {free / 1e9:.2f} GB free"
        )


def extract_archive(path: Path, target: Path, max_unpacked_bytes: int, reporter: Reporter) -> int:
    """Unpack the CIFAKE images of the zip at path into target (canonical layout); returns files ignored."""
    if not path.is_file():
        raise VitdetectError(f"archive not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            plan = plan_archive(archive, path)
            _check_room(plan, path, target, max_unpacked_bytes)
            with reporter.task("extract", len(plan.members), unit="file") as task:
                for info, placement in plan.members:
                    destination = target / placement.relative
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    # zipfile stops reading at the declared size and checks the CRC: no bomb past the plan
                    with archive.open(info) as source, open(destination, "xb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)
                    task.advance()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise VitdetectError(f"{path} is not a readable zip archive ({exc}): download it again") from None
    return plan.ignored


# ---- folder ----------------------------------------------------------------------------------------


def move_tree(source: Path, target: Path, reporter: Reporter) -> int:
    """Move (rename, same file system) the CIFAKE images found under source into target's canonical
    layout; symlinks are never followed. Returns the number of files left out."""
    found: list[tuple[Path, Placement]] = []
    ignored = 0
    for directory, _, files in os.walk(source):  # os.walk does not descend into symlinked folders
        for name in files:
            path = Path(directory, name)
            placement = None if path.is_symlink() else place(path.relative_to(source).parts)
            if placement is None:
                ignored += 1
            else:
                found.append((path, placement))
    _single_prefix([placement for _, placement in found], str(source))
    with reporter.task("place", len(found), unit="file") as task:
        for path, placement in found:
            destination = target / placement.relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)
            task.advance()
    return ignored
