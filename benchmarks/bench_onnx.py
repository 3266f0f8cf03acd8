"""ONNX Runtime against PyTorch on the CPU: the same checkpoint, exported, judging the same CIFAKE test images.

    python benchmarks/bench_onnx.py --checkpoint results/best_model.pth

The checkpoint is exported with `vitdetect.export.exporter` into a temp dir (or --onnx names an exported file).
Both sides are `Detector`s with the same batch size and thread count (ONNX Runtime gets torch's, so
OMP_NUM_THREADS sets both): `Detector.from_checkpoint` (PyTorch) and `Detector.from_onnx` (ONNX Runtime).
Two measurements, sides alternating --repeats times in one process, best time counts:
  - scoring: P(FAKE) for images already decoded into a uint8 tensor (preprocessing + model): the backends alone;
  - end to end: `Detector.predict` on the files (read, decode, score), what `vitdetect predict` does.
Prints the rates, how far the P(FAKE) values are apart and how many verdicts differ, and the ratio last.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import REAL_CIFAKE, print_ratio, spread_sample, timer
from vitdetect import Detector
from vitdetect.config.commands import ExportSettings, PredictSettings
from vitdetect.data.dataset import decode_images, list_split
from vitdetect.export.exporter import export
from vitdetect.inference.scoring import fake_probabilities
from vitdetect.utils.distributed import make_accelerator

TARGET = 1.0  # ONNX Runtime should be at least as fast as PyTorch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=PredictSettings.model_fields["checkpoint"].default)
    parser.add_argument("--onnx", type=Path, help="an exported file of --checkpoint (default: export it now)")
    parser.add_argument("--data-dir", type=Path, default=REAL_CIFAKE, help="CIFAKE root with test/{REAL,FAKE}")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=PredictSettings.model_fields["batch_size"].default)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    paths = spread_sample(list_split(args.data_dir, "test").paths, args.images)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_file = args.onnx or Path(scratch) / "model.onnx"
        if args.onnx is None:
            export(ExportSettings(checkpoint=args.checkpoint, output=onnx_file))
        detectors = {
            "PyTorch": Detector.from_checkpoint(args.checkpoint, batch_size=args.batch_size,
                                                accelerator=make_accelerator(cpu=True)),
            "ONNX Runtime": Detector.from_onnx(onnx_file, cpu=True, batch_size=args.batch_size),
        }
    images, kept, failures = decode_images(paths, detectors["PyTorch"].trained.prep.storage_size)
    if failures:
        sys.exit(f"error: {len(failures)} test images failed to decode, e.g. {failures[0]}")
    torch_model, onnx_model = detectors["PyTorch"].trained, detectors["ONNX Runtime"].trained
    runs = {
        "scoring": {
            "PyTorch": lambda: fake_probabilities(torch_model, images, args.batch_size, make_accelerator(cpu=True)),
            "ONNX Runtime": lambda: onnx_model.fake_probabilities(images, args.batch_size),
        },
        "end to end": {name: (lambda d=detector: np.array([r.p_fake for r in d.predict(paths)]))
                       for name, detector in detectors.items()},
    }
    for sides in runs.values():  # warm-up: lazy initialisation, first-call allocations
        for run in sides.values():
            run()
    rates, p_fake = {}, {}
    for measure, sides in runs.items():
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, run in sides.items():
                with timer() as elapsed:
                    p_fake[measure, name] = run()
                seconds[name].append(elapsed["seconds"])
        rates[measure] = {name: len(paths) / min(times) for name, times in seconds.items()}
    report(args, len(paths), detectors, rates, p_fake)


def report(args: argparse.Namespace, images: int, detectors: dict, rates: dict, p_fake: dict) -> None:
    import onnxruntime
    import torch

    print(f"machine: {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads for both; python "
          f"{sys.version.split()[0]}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"{images:,} CIFAKE test images from {args.data_dir}, checkpoint {args.checkpoint}, batch "
          f"{args.batch_size}, best of {args.repeats}")
    for measure, rate in rates.items():
        for name, value in rate.items():
            print(f"{measure:>10} {name:>12}: {value:9,.1f} images/s")
    threshold = detectors["PyTorch"].threshold
    torch_scores, onnx_scores = p_fake["end to end", "PyTorch"], p_fake["end to end", "ONNX Runtime"]
    flips = int(((torch_scores >= threshold) != (onnx_scores >= threshold)).sum())
    print(f"max |P(FAKE) difference| ONNX Runtime vs PyTorch: {np.abs(torch_scores - onnx_scores).max():.2e}; "
          f"verdicts that differ at threshold {threshold:g}: {flips}")
    for measure in rates:
        print_ratio(f"{measure} images/s, ONNX Runtime / PyTorch",
                    rates[measure]["ONNX Runtime"] / rates[measure]["PyTorch"], TARGET)


if __name__ == "__main__":
    main()
