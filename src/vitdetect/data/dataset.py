"""Finding CIFAKE-style images, decoding them once into a uint8 tensor, and splitting them.

Layout: DATA_DIR/{train,test}/{REAL,FAKE}/*.  Labels are explicit: REAL = 0, FAKE = 1 (the positive class).
Folder names are matched case-insensitively (`real/`, `Fake/` work too).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vitdetect.config.labels import LABEL2ID
from vitdetect.config.run_files import SKIPPED_NAME
from vitdetect.data.decode import ImageDecodeError, decode_rgb, is_image_path, open_image
from vitdetect.errors import VitdetectError
from vitdetect.utils.atomic import atomic_write_text
from vitdetect.utils.progress import Reporter
from vitdetect.utils.torch_files import atomic_torch_save


@dataclass
class ImageList:
    """The image files of one split with their labels, before decoding."""

    paths: list[Path]
    labels: list[int]
    ignored: int = 0  # files that are not images


@dataclass
class ImageSet:
    """A decoded split: images[i] is a 3xSxS uint8 tensor with label labels[i] and file paths[i]."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) that failed to decode
    ignored: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> ImageSet:
        index = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(self.images.index_select(0, index), self.labels[index], [self.paths[i] for i in indices])


def _child_dir(parent: Path, name: str) -> Path | None:
    """The sub-folder of parent called name, ignoring case; None when there is none."""
    exact = parent / name
    if exact.is_dir():
        return exact
    matches = [p for p in parent.iterdir() if p.is_dir() and p.name.lower() == name.lower()]
    return matches[0] if matches else None


def list_split(data_dir: Path, split: str) -> ImageList:
    """All images of DATA_DIR/split/{REAL,FAKE}; clear errors for missing or empty folders."""
    if not data_dir.is_dir():
        raise VitdetectError(
            f"data dir not found: {data_dir} (run `vitdetect download` or pass --data-dir)"
        )
    split_dir = _child_dir(data_dir, split)
    if split_dir is None:
        raise VitdetectError(f"no '{split}' folder in data dir {data_dir} (expected {split}/REAL and {split}/FAKE)")
    paths: list[Path] = []
    labels: list[int] = []
    ignored = 0
    for name, label in LABEL2ID.items():
        class_dir = _child_dir(split_dir, name)
        if class_dir is None:
            raise VitdetectError(f"class folder missing: {split_dir / name} (expected REAL and FAKE)")
        files = sorted(p for p in class_dir.iterdir() if p.is_file())
        images = [p for p in files if is_image_path(p)]
        ignored += len(files) - len(images)
        if not images:
            raise VitdetectError(f"class folder has no images: {class_dir}")
        paths.extend(images)
        labels.extend([label] * len(images))
    return ImageList(paths, labels, ignored)


def common_size(paths: list[Path], sample: int = 64) -> int | None:
    """The side length most of a sample of images share (CIFAKE: 32); None if they are not square."""
    sizes: Counter[tuple[int, int]] = Counter()
    for path in paths[:: max(1, len(paths) // sample)][:sample]:
        try:
            with open_image(path) as image:
                sizes[image.size] += 1
        except Exception:  # noqa: BLE001 - unreadable files are reported when decoded
            continue
    if not sizes:
        return None
    (width, height), _ = sizes.most_common(1)[0]
    return width if width == height else None


def _decode_one(path: Path, size: int) -> np.ndarray | str:
    try:
        return decode_rgb(path, size)
    except ImageDecodeError as exc:
        return str(exc)


@functools.cache
def _decode_pool() -> ThreadPoolExecutor:
    """One pool of decoding threads for the process: starting 8 threads on every call cost small calls (a
    server's batches of a few dozen images) more than the decoding itself."""
    return ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2), thread_name_prefix="vitdetect-decode")


os.register_at_fork(after_in_child=_decode_pool.cache_clear)  # a forked child has none of the parent's threads


def decode_images(
    paths: list[Path], size: int, on_progress: Callable[[int], None] | None = None
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decode paths in parallel into an Nx3xSxS uint8 tensor; returns (images, kept indices, failures)."""
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    kept: list[int] = []
    failures: list[tuple[str, str]] = []
    for index, result in enumerate(_decode_pool().map(lambda p: _decode_one(p, size), paths, chunksize=64)):
        if isinstance(result, str):
            failures.append((str(paths[index]), result))
        else:
            images[len(kept)] = result
            kept.append(index)
        if on_progress is not None:
            on_progress(1)
    tensor = torch.from_numpy(images[: len(kept)]).permute(0, 3, 1, 2).contiguous()
    return tensor, kept, failures


def _cache_key(image_list: ImageList, size: int) -> str:
    digest = hashlib.sha256(f"v1|{size}".encode())
    for path, label in zip(image_list.paths, image_list.labels, strict=True):
        stat = path.stat()
        digest.update(f"|{path.resolve()}|{label}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def load_split(
    data_dir: Path,
    split: str,
    size: int | None,
    cache_dir: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> ImageSet:
    """Decode a split once (or read it from the on-disk cache keyed by file list, sizes and mtimes).

    size: the stored side length; None takes the most common size of the images themselves.
    """
    image_list = list_split(data_dir, split)
    size = size or common_size(image_list.paths) or 224
    cache_file = cache_dir / f"images-{_cache_key(image_list, size)}.pt" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        try:
            cached = torch.load(cache_file, weights_only=True)
            return _image_set(image_list, cached["images"], cached["kept"], cached["failures"])
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            pass
    if on_total is not None:
        on_total(len(image_list.paths))
    images, kept, failures = decode_images(image_list.paths, size, on_progress)
    if not kept:
        raise VitdetectError(f"no image in {data_dir / split} could be decoded")
    if cache_file is not None:
        payload = {"images": images, "kept": kept, "failures": [list(f) for f in failures]}
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(cache_file, payload)
        except OSError:
            pass  # the cache is an optimisation: an unwritable cache dir only costs time
    return _image_set(image_list, images, kept, failures)


def load_split_reported(
    data_dir: Path, split: str, size: int | None, cache_dir: Path | None, output_dir: Path, reporter: Reporter
) -> ImageSet:
    """load_split with a progress bar; non-images are counted and decode failures listed in output_dir."""
    with reporter.task(f"decoding {split} images", 0, transient=True) as bar:
        images = load_split(data_dir, split, size, cache_dir, bar.advance, bar.set_total)
    if images.ignored:
        reporter.info(f"ignored {images.ignored} non-image file(s) in {data_dir / split}")
    if images.skipped:
        listed = write_skipped(images, output_dir) if reporter.enabled else None
        where = f"; list in {listed}" if listed else ""
        reporter.warn(f"skipped {len(images.skipped)} image(s) that failed to decode{where}")
    return images


def _image_set(image_list: ImageList, images: torch.Tensor, kept: list[int], failures: list) -> ImageSet:
    labels = torch.tensor([image_list.labels[i] for i in kept], dtype=torch.long)
    paths = [str(image_list.paths[i]) for i in kept]
    skipped = [(str(path), str(reason)) for path, reason in failures]
    return ImageSet(images, labels, paths, skipped, image_list.ignored)


def write_skipped(image_set: ImageSet, output_dir: Path) -> Path | None:
    """List the files that failed to decode in output_dir/skipped_images.json; its path, or None."""
    if not image_set.skipped:
        return None
    target = output_dir / SKIPPED_NAME
    text = json.dumps([{"path": p, "reason": r} for p, r in image_set.skipped], indent=2)
    atomic_write_text(target, text)
    return target


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/validation indices (sorted): the same seed gives the same split."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    try:
        train_idx, val_idx = train_test_split(
            indices, test_size=val_fraction, random_state=seed, stratify=labels.numpy()
        )
    except ValueError as exc:
        raise VitdetectError(f"cannot split {len(labels)} images into train/validation: {exc}") from None
    return np.sort(train_idx), np.sort(val_idx)


def stratified_sample(labels: torch.Tensor, count: int, seed: int) -> np.ndarray:
    """At most count indices, drawn with the class balance of labels."""
    if count >= len(labels):
        return np.arange(len(labels))
    kept, _ = stratified_split(labels, 1 - count / len(labels), seed)
    return kept


class TensorBatches(torch.utils.data.Dataset):
    """Tensors indexed a whole batch at a time: one gather per batch instead of one per image."""

    def __init__(self, *tensors: torch.Tensor):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        # index_select copies whole rows; t[index] goes element by element, many times slower on the CPU
        return tuple(t.index_select(0, index.to(t.device)) for t in self.tensors)


def keep_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """collate_fn for TensorBatches: the batch is already gathered."""
    return batch
