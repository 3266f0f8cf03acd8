"""`Detector` against `transformers.pipeline("image-classification")`: same model, same images, CPU.

    python benchmarks/bench_predict.py --checkpoint results/best_model.pth

Every side judges the same CIFAKE test files (evenly spread over test/REAL and test/FAKE), reading
and decoding them itself; loading the model is not timed. The pipeline gets the checkpoint's model
saved with save_pretrained and its ViTImageProcessor (what `vitdetect train` writes to
results/best_model/), and runs twice: as called by default (`classifier(paths)`: batch size 1) and
with the Detector's batch size. The sides alternate --repeats times in one process, so they share
the machine's load; each side's best time counts. Prints the rates, how far the P(FAKE) values are
apart, and the ratios last.
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
from vitdetect.config.commands import PredictSettings
from vitdetect.config.labels import POSITIVE_CLASS
from vitdetect.data.dataset import list_split
from vitdetect.models.checkpoint import save_pretrained_dir
from vitdetect.utils.distributed import make_accelerator

TARGET = 1.5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=PredictSettings.model_fields["checkpoint"].default)
    parser.add_argument("--data-dir", type=Path, default=REAL_CIFAKE, help="CIFAKE root with test/{REAL,FAKE}")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=PredictSettings.model_fields["batch_size"].default)
    parser.add_argument("--repeats", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    args = parse_args()
    paths = spread_sample(list_split(args.data_dir, "test").paths, args.images)
    names = [str(path) for path in paths]
    detector = Detector.from_checkpoint(args.checkpoint, batch_size=args.batch_size,
                                        accelerator=make_accelerator(cpu=True))
    with tempfile.TemporaryDirectory() as scratch:
        save_pretrained_dir(Path(scratch) / "model", detector.trained.model, detector.trained.prep)
        classifier = pipeline("image-classification", model=str(Path(scratch) / "model"), device="cpu")
    sides = {  # each judges the first n images and returns their P(FAKE)
        "vitdetect Detector": lambda n: [r.p_fake for r in detector.predict(paths[:n])],
        f"pipeline, batch size {args.batch_size}": lambda n: fake_scores(
            classifier(names[:n], batch_size=args.batch_size, top_k=2)),
        "pipeline, default batch size 1": lambda n: fake_scores(classifier(names[:n], top_k=2)),
    }
    for run in sides.values():  # warm-up: lazy initialisation
        run(16)
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    p_fake = {}
    for _ in range(args.repeats):
        for name, run in sides.items():
            with timer() as elapsed:
                p_fake[name] = np.array(run(len(paths)))
            seconds[name].append(elapsed["seconds"])
    report(args, len(paths), {name: len(paths) / min(times) for name, times in seconds.items()}, p_fake)


def fake_scores(outputs: list[list[dict]]) -> list[float]:
    return [next(o["score"] for o in output if o["label"] == POSITIVE_CLASS) for output in outputs]


def report(args: argparse.Namespace, images: int, rate: dict[str, float], p_fake: dict) -> None:
    import torch

    print(f"machine: {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, all sides on the CPU; "
          f"python {sys.version.split()[0]}, torch {torch.__version__}")
    print(f"{images:,} CIFAKE test images from {args.data_dir}, checkpoint {args.checkpoint}, "
          f"best of {args.repeats}")
    for name, value in rate.items():
        print(f"{name:>32}: {value:8,.1f} images/s")
    ours, *pipelines = rate
    gap = max(np.abs(p_fake[ours] - p_fake[name]).max() for name in pipelines)
    print(f"max |P(FAKE) difference| vitdetect vs pipeline: {gap:.2e}")
    for name in reversed(pipelines):
        print_ratio(f"images/s, vitdetect / {name}", rate[ours] / rate[name], TARGET)


if __name__ == "__main__":
    main()
