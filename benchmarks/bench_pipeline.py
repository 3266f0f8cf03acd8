"""Training images per second delivered at 224x224 with the reference augmentations.

baseline: torchvision ImageFolder + PIL transforms (Resize(224), RandomHorizontalFlip, RandomRotation(10),
ColorJitter(0.2, 0.2, 0.2, 0.05), ToTensor, Normalize(0.5)) + DataLoader(num_workers=2): every epoch
decodes, augments and resizes every image with PIL.
vitdetect: the images decoded once into a uint8 tensor (timed apart: it happens once per run, and is
cached on disk across runs), then per epoch the training DataLoader over that tensor (one gather per
batch) and `to_model_input` with the augmentation: batched tensor ops, here on the CPU.
Also measured: the uint8 gather alone, the CPU side's share when the tensor ops run on a GPU.

    python benchmarks/bench_pipeline.py                  # 1,000 images x 2 epochs, twice, 2 CPU cores: ~1 min
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from _common import (
    SUBSET_NAME,
    base_parser,
    cifake_subset,
    peak_rss_mb,
    print_ratio,
    rss_text,
    run_benchmark,
    timer,
)

TARGET = 1.5
GATHER_TARGET = 20_000
IMAGE_SIZE = 224


def parser() -> argparse.ArgumentParser:
    parser = base_parser(__doc__.splitlines()[0], ["baseline", "vitdetect"], images=1000, repeats=2)
    parser.add_argument("--epochs", type=int, default=2, help="passes over the images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers")
    parser.add_argument("--gather-images", type=int, default=100_000,
                        help="size of the uint8 set (the images repeated) that times the gather")
    return parser


def prepare(args: argparse.Namespace, work_dir: Path) -> None:
    cifake_subset(args.data_dir, args.images, work_dir / SUBSET_NAME)


def baseline(args: argparse.Namespace, work_dir: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    torch.manual_seed(0)
    transform = T.Compose([T.Resize(IMAGE_SIZE), T.RandomHorizontalFlip(), T.RandomRotation(10),
                           T.ColorJitter(0.2, 0.2, 0.2, 0.05), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    images = datasets.ImageFolder(work_dir / SUBSET_NAME / "train", transform=transform)
    loader = DataLoader(images, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    delivered = 0
    with timer() as elapsed:
        for _ in range(args.epochs):
            for pixels, _labels in loader:
                assert pixels.shape[-1] == IMAGE_SIZE
                delivered += len(pixels)
    return {"images_per_s": delivered / elapsed["seconds"], "images": delivered, "workers": args.workers}


def vitdetect_side(args: argparse.Namespace, work_dir: Path) -> dict:
    from vitdetect.config.settings import TrainSettings
    from vitdetect.data.dataset import load_split
    from vitdetect.data.transforms import Preprocessing, build_augmentation, to_model_input
    from vitdetect.training.trainer import make_accelerator

    with timer() as decode:
        decoded = load_split(work_dir / SUBSET_NAME, "train", None)
    settings = TrainSettings(batch_size=args.batch_size, cpu=True)
    accelerator = make_accelerator(settings)
    prep = Preprocessing(IMAGE_SIZE, int(decoded.images.shape[-1]), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    augmentation = build_augmentation(10.0)
    delivered = 0
    with timer() as pipeline:
        for batch in epochs_of_batches(decoded.images, decoded.labels, args.epochs, settings, accelerator):
            pixels = to_model_input(batch, prep, augmentation)
            assert pixels.shape[-1] == IMAGE_SIZE
            delivered += len(pixels)
    pipeline_rss = peak_rss_mb()["peak_rss_mb"]

    # The gather alone, over the images repeated to a full-size set (the rate does not depend on the
    # pixels; per-epoch overhead weighs as in a real run).
    repeats = -(-args.gather_images // len(decoded))
    images, labels = decoded.images.repeat(repeats, 1, 1, 1), decoded.labels.repeat(repeats)
    gathered = 0
    with timer() as gather:
        for batch in epochs_of_batches(images, labels, 2, settings, accelerator):
            gathered += len(batch)
    return {"images_per_s": delivered / pipeline["seconds"], "images": delivered, "workers": 0,
            "pipeline_rss_mb": pipeline_rss, "decode_seconds": decode["seconds"], "decoded": len(decoded),
            "gather_per_s": gathered / gather["seconds"], "gather_set": len(images)}


def epochs_of_batches(images, labels, epochs: int, settings, accelerator) -> Iterator:
    """The uint8 image batches of vitdetect's training DataLoader, epoch after epoch."""
    from vitdetect.training.trainer import make_loader

    loader = accelerator.prepare(make_loader(images, labels, settings, accelerator, shuffle=True))
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch, _labels in loader:
            yield batch


def report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    base, fast = results["baseline"], results["vitdetect"]
    print(f"\n{args.images} real CIFAKE images x {args.epochs} epochs at {IMAGE_SIZE}x{IMAGE_SIZE}, "
          f"batch {args.batch_size}, reference augmentations")
    print(f"vitdetect decode once: {fast['decoded']} images in {fast['decode_seconds']:.2f} s "
          f"(not in its per-epoch rate below)")
    gather_verdict = "meets" if fast["gather_per_s"] >= GATHER_TARGET else "MISSES"
    print(f"vitdetect uint8 gather alone: {fast['gather_per_s']:,.0f} images/s "
          f"(2 epochs over {fast['gather_set']:,} images, batch {args.batch_size}; "
          f"{gather_verdict} the target >= {GATHER_TARGET:,}); peak RSS with that set {fast['peak_rss_mb']:,.0f} MB")
    print(f" baseline: {base['images_per_s']:8,.0f} images/s   {rss_text(base)}")
    print(f"vitdetect: {fast['images_per_s']:8,.0f} images/s   {rss_text(fast, 'pipeline_rss_mb')}")
    print_ratio("images/s, vitdetect / baseline", fast["images_per_s"] / base["images_per_s"], TARGET)


if __name__ == "__main__":
    run_benchmark(parser(), prepare, {"baseline": baseline, "vitdetect": vitdetect_side}, report,
                  cost=lambda result: -result["images_per_s"])
