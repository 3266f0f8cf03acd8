"""What the benchmarks share: real CIFAKE subsets, a saved random-init model, timing, peak RSS,
and running each side in its own process, so that each side's peak memory is its own.

A benchmark run without --side prepares the inputs once (image subset, model) in a temp work dir,
runs `python BENCH ... --side NAME --work-dir DIR` for each side, prints both results and the
ratio last. `--side NAME` alone runs one side by itself (e.g. vitdetect at full scale on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the models are local: never wait on the network

REAL_CIFAKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifake"
RESULT_PREFIX = "RESULT "
SUBSET_NAME = "cifake"
MODEL_NAME = "model"

Side = Callable[[argparse.Namespace, Path], dict]


def base_parser(description: str, sides: list[str], images: int, repeats: int = 1) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", type=Path, default=REAL_CIFAKE, help="CIFAKE root holding train/")
    parser.add_argument("--images", type=int, default=images, help="images drawn from train/, half per class")
    parser.add_argument("--repeats", type=int, default=repeats,
                        help="run the sides this many times, alternating, and keep each side's fastest run "
                        "(less noise from other load on the machine)")
    parser.add_argument("--side", choices=sides, help="run only this side")
    parser.add_argument("--work-dir", type=Path, help="inputs prepared by the parent run (internal)")
    return parser


def cifake_subset(data_dir: Path, images: int, dest: Path, seed: int = 0) -> Path:
    """dest/train/{REAL,FAKE} holding images/2 links per class to files drawn (seeded) from data_dir/train.

    Every file is read once here, so neither side pays for a cold disk.
    """
    rng = np.random.default_rng(seed)
    for name in ("REAL", "FAKE"):
        source = data_dir / "train" / name
        if not source.is_dir():
            sys.exit(f"error: no CIFAKE images at {source} (pass --data-dir)")
        files = sorted(source.iterdir())
        chosen = sorted(rng.choice(len(files), size=min(images // 2, len(files)), replace=False))
        target = dest / "train" / name
        target.mkdir(parents=True, exist_ok=True)
        for index in chosen:
            (target / files[index].name).symlink_to(files[index])
            files[index].read_bytes()
    return dest


def spread_sample(paths: list[Path], count: int) -> list[Path]:
    """count paths evenly spread over the list (both classes of a sorted split), in order."""
    return [paths[i] for i in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)]


def save_random_model(preset: str, dest: Path, seed: int = 0) -> Path:
    """A random-init two-class ViT of a vitdetect preset, saved with save_pretrained: both sides load it."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from vitdetect.config.labels import ID2LABEL, LABEL2ID
    from vitdetect.models.build import PRESETS

    torch.manual_seed(seed)
    config = ViTConfig(**PRESETS[preset], num_labels=2, id2label=dict(ID2LABEL), label2id=dict(LABEL2ID))
    ViTForImageClassification(config).save_pretrained(dest)
    return dest


def import_vitdetect_dependencies() -> None:
    """Import what vitdetect imports inside its functions (so that `vitdetect --help` stays instant):
    the benchmarks import every library before the clock starts, the baselines' as well as these."""
    import importlib

    for module in ("accelerate", "kornia.augmentation", "sklearn.metrics", "sklearn.model_selection",
                   "matplotlib.figure", "seaborn"):
        importlib.import_module(module)


def vitdetect_split(data_dir: Path):
    """The files of data_dir/train with vitdetect's seeded train/validation split: (listed, train_idx, val_idx).

    The baselines use it so that both sides train and validate on the same images.
    """
    import torch

    from vitdetect.config.settings import TrainSettings
    from vitdetect.data.dataset import list_split, stratified_split

    defaults = TrainSettings()
    listed = list_split(data_dir, "train")
    train_idx, val_idx = stratified_split(torch.tensor(listed.labels), defaults.val_fraction, defaults.seed)
    return listed, train_idx, val_idx


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished child (DataLoader workers), MB."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # ru_maxrss: KB on Linux, bytes on macOS
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        "peak_rss_child_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale,
    }


def rss_text(result: dict, peak_key: str = "peak_rss_mb") -> str:
    """Peak RSS of a side, with its DataLoader workers when it has some (they fork from it)."""
    workers = result.get("workers", 0)
    extra = f" + {workers} DataLoader workers, largest {result['peak_rss_child_mb']:,.0f} MB" if workers else ""
    return f"peak RSS {result[peak_key]:,.0f} MB{extra}"


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """with timer() as t: ...; then t["seconds"] holds the wall time and t["cpu_seconds"] the CPU time of this
    process and of its children that ended meanwhile (DataLoader workers): the work done, which other load on
    the machine changes far less than the wall time."""
    elapsed: dict[str, float] = {}
    started, cpu_started = time.perf_counter(), cpu_seconds()
    try:
        yield elapsed
    finally:
        elapsed["seconds"] = time.perf_counter() - started
        elapsed["cpu_seconds"] = cpu_seconds() - cpu_started


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def fresh_dir(work_dir: Path, name: str) -> Path:
    """A new folder in the work dir: every run of a side starts without the outputs and caches of another."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work_dir))


Prepare = Callable[[argparse.Namespace, Path], None]
Report = Callable[[argparse.Namespace, dict[str, dict]], None]


def run_benchmark(parser: argparse.ArgumentParser, prepare: Prepare, sides: dict[str, Side], report: Report,
                  cost: Callable[[dict], float]) -> None:
    """Prepare the inputs, run each side in its own process (or only --side), then report.

    With --repeats N the sides run N times, alternating, and each side's run of lowest cost is reported.
    """
    args = parser.parse_args()
    if args.side:
        with prepared_dir(args, prepare) as work_dir:
            result = {**sides[args.side](args, work_dir), **peak_rss_mb()}
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return
    print(f"machine: {os.cpu_count()} CPU cores, {machine_accelerator()}; python {sys.version.split()[0]}")
    with prepared_dir(args, prepare) as work_dir:
        runs = [{side: run_side(side, work_dir) for side in sides} for _ in range(args.repeats)]
    if args.repeats > 1:
        print(f"\neach side's best of {args.repeats} alternating runs:")
    report(args, {side: min((run[side] for run in runs), key=cost) for side in sides})


@contextmanager
def prepared_dir(args: argparse.Namespace, prepare: Prepare) -> Iterator[Path]:
    if args.work_dir is not None:
        yield args.work_dir
        return
    work_dir = Path(tempfile.mkdtemp(prefix="vitdetect-bench-"))
    try:
        prepare(args, work_dir)
        yield work_dir
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def run_side(side: str, work_dir: Path) -> dict:
    """Run this script again with --side; echo its output and return its RESULT line."""
    command = [sys.executable, sys.argv[0], *sys.argv[1:], "--side", side, "--work-dir", str(work_dir)]
    print(f"--- {side}", flush=True)
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    result = None
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line.removeprefix(RESULT_PREFIX))
        else:
            print(f"    {line}")
    if completed.returncode != 0 or result is None:
        sys.exit(f"error: the {side} side failed (exit code {completed.returncode})")
    return result


def machine_accelerator() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"


def print_ratio(what: str, ratio: float, target: float) -> None:
    """The last line of every benchmark."""
    verdict = "meets" if ratio >= target else "MISSES"
    print(f"ratio ({what}): {ratio:.2f}x  ({verdict} the target >= {target:g}x)")
