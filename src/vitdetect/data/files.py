"""Which files `vitdetect predict` judges: image files, folders and glob patterns, expanded."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitdetect.data.decode import IMAGE_EXTENSIONS, is_image_path
from vitdetect.errors import UsageError


@dataclass
class FoundImages:
    """The files to judge, and the files the given folders hold that are not images."""

    paths: list[Path]
    ignored: list[Path] = field(default_factory=list)


def find_images(patterns: Sequence[str | Path], recursive: bool = False) -> FoundImages:
    """Expand files, folders (images directly inside; all below with recursive) and glob patterns.

    A file named explicitly is judged whatever its name; in folders and glob matches only files with
    an image extension are, and hidden files (.DS_Store, macOS ._ copies) are skipped.

    Args:
        patterns: image files, folders and glob patterns (`"shots/*.png"`, `"shots/**/*.jpg"`).
        recursive: take the images of sub-folders too.

    Returns:
        The image paths, in order and without duplicates, and the non-image files the folders held (`ignored`).

    Raises:
        UsageError: no patterns, a path that does not exist and matches nothing, or no image found.

    Examples:
        >>> from vitdetect import Detector, find_images
        >>> found = find_images(["shots/"], recursive=True)
        >>> with Detector.from_checkpoint("builtin") as detector:
        ...     verdicts = detector.predict(found.paths)
    """
    if not patterns:
        raise UsageError("no images given: pass files, folders or glob patterns (vitdetect predict PATH...)")
    found = FoundImages([])
    for pattern in map(Path, patterns):
        if pattern.is_file():
            found.paths.append(pattern)
            continue
        for match in [pattern] if pattern.is_dir() else _glob(str(pattern)):
            for path in _folder_files(match, recursive) if match.is_dir() else [match]:
                (found.paths if is_image_path(path) else found.ignored).append(path)
    found.paths = list(dict.fromkeys(found.paths))
    if not found.paths:
        raise UsageError(f"no images found in {', '.join(map(str, patterns))} (looked for "
                         f"{', '.join(sorted(ext.lstrip('.') for ext in IMAGE_EXTENSIONS))}"
                         f"{'' if recursive else '; add --recursive for sub-folders'})")
    return found


def _glob(pattern: str) -> list[Path]:
    matches = sorted(map(Path, glob.glob(pattern, recursive=True)))
    if not matches:
        raise UsageError(f"no such file or folder, and no glob match: {pattern}")
    return matches


def _folder_files(folder: Path, recursive: bool) -> list[Path]:
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files.extend(Path(root, name) for name in names if not name.startswith("."))
    return sorted(files)
