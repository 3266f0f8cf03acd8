"""Judging images on the CPU: PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8, where the time goes, and how
far each is from the machine's ceiling.

    python benchmarks/bench_inference.py --checkpoint builtin --calibration-data ../shared/data/cifake --accuracy

The checkpoint is exported twice with `vitdetect.export.exporter` (fp32, and `--quantize int8` calibrated on the
training split of --calibration-data) into a temp dir. All three backends are `Detector`s with the same batch size
and intra-op thread count. Measurements, sides alternating --repeats times in one process, best time counts:
  - scoring: P(FAKE) for images already decoded into a uint8 tensor (preprocessing + model), at each --threads;
  - end to end: `Detector.predict` on the files (read, decode in its threads, score), what `vitdetect predict` does;
  - --profile: one pass split into stages, run one after another in this thread (read the file, decode to 32x32
    RGB with the size note's header read, preprocess into the model's input, the model's forward pass, output:
    P(FAKE), verdict, Prediction rows), in ms per image; `Detector.predict` overlaps decoding with scoring;
  - the ceiling: FLOPs per image (torch.utils.flop_counter, multiply-add = 2) and the machine's fp32 peak (a
    2048x2048 matmul in this process at the same threads): achieved GFLOP/s and share of peak per backend;
  - --accuracy: accuracy of each on the full official test split and verdict agreement with PyTorch fp32.
Prints the load average at the start and the end, and the ratios to PyTorch last.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from _common import REAL_CIFAKE, print_ratio, spread_sample
from vitdetect import Detector
from vitdetect.config.commands import ExportSettings, PredictSettings
from vitdetect.data.dataset import decode_images, list_split
from vitdetect.data.decode import decode_rgb
from vitdetect.data.transforms import to_model_input
from vitdetect.export.exporter import export
from vitdetect.inference.detector import Prediction, UnsureRule, decide, scale_note
from vitdetect.inference.onnx import OnnxModel
from vitdetect.inference.scoring import fake_probability
from vitdetect.reports.metrics import classify
from vitdetect.utils.distributed import make_accelerator

TARGET = 2.0  # int8 images/s over PyTorch fp32, scoring and end to end
BACKENDS = ("PyTorch fp32", "ONNX fp32", "ONNX int8")
STAGES = ("read", "decode", "preprocess", "forward", "output")
PEAK_SIDE = 2048


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="builtin")
    parser.add_argument("--data-dir", type=Path, default=REAL_CIFAKE, help="CIFAKE root with test/{REAL,FAKE}")
    parser.add_argument("--calibration-data", type=Path, help="CIFAKE root whose train/ calibrates int8 "
                        "(default: --data-dir)")
    parser.add_argument("--images", type=int, default=1000, help="test images timed (evenly spread)")
    parser.add_argument("--batch-size", type=int, default=PredictSettings.model_fields["batch_size"].default)
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}",
                        help="intra-op thread counts for scoring, comma-separated; the last one for the rest")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="split the time per image into stages")
    parser.add_argument("--accuracy", action="store_true", help="score the full official test split")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print(f"load average at the start: {load()}; {os.cpu_count()} CPU cores; python {sys.version.split()[0]}, "
          f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}")
    listed = list_split(args.data_dir, "test")
    paths = spread_sample(listed.paths, args.images)
    threads = [int(count) for count in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        files = export_both(args, Path(scratch))
        print(f"{len(paths):,} official test images from {args.data_dir}, checkpoint {args.checkpoint}, batch "
              f"{args.batch_size}, best of {args.repeats}, sides alternating")
        rates, peaks = {}, {}
        for count in threads:
            detectors = open_detectors(args, files, count)
            images, _, _ = decode_images(paths, detectors[BACKENDS[0]].trained.prep.storage_size)
            rates[count] = {"scoring": best_rates({name: lambda d=d, x=images: d.probabilities(x)
                                                   for name, d in detectors.items()}, len(paths), args.repeats),
                            "end to end": best_rates({name: lambda d=d: d.predict(paths)
                                                      for name, d in detectors.items()}, len(paths), args.repeats)}
            peaks[count] = matmul_gflops(count)
        report_rates(rates)
        report_ceiling(detectors, rates, peaks)
        if args.profile:
            for count in threads:
                report_profile(open_detectors(args, files, count), paths, args, count)
        if args.accuracy:
            report_accuracy(detectors, listed)
    print(f"load average at the end: {load()}")
    for count, measures in rates.items():
        for measure, rate in measures.items():
            print_ratio(f"{measure} images/s at {count} thread(s), ONNX int8 / PyTorch fp32",
                        rate["ONNX int8"] / rate["PyTorch fp32"], TARGET)


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def export_both(args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    """The checkpoint as fp32 and int8 ONNX files; the export's notes (int8 agreement on calibration) printed."""
    files = {"ONNX fp32": folder / "fp32.onnx", "ONNX int8": folder / "int8.onnx"}
    export(ExportSettings(checkpoint=args.checkpoint, output=files["ONNX fp32"]))
    started = time.perf_counter()
    result = export(ExportSettings(checkpoint=args.checkpoint, output=files["ONNX int8"], quantize="int8",
                                   calibration_data=args.calibration_data or args.data_dir))
    print(f"int8 export {time.perf_counter() - started:.1f} s, {result.size_bytes / 2**20:.1f} MB: "
          + "; ".join(result.notes[2:]))
    return files


def open_detectors(args: argparse.Namespace, files: dict[str, Path], threads: int) -> dict[str, Detector]:
    """The three backends at `threads` intra-op threads (torch's count set, ORT sessions opened at it)."""
    torch.set_num_threads(threads)
    options = dict(batch_size=args.batch_size, accelerator=make_accelerator(cpu=True))
    return {name: Detector.from_checkpoint(args.checkpoint, **options) if name == "PyTorch fp32" else
            Detector.from_onnx(files[name], cpu=True, threads=threads, **options) for name in BACKENDS}


def best_rates(runs: dict[str, Callable], count: int, repeats: int) -> dict[str, float]:
    """images/s of each run's fastest of `repeats`, the runs alternating; one warm-up call each first."""
    for run in runs.values():
        run()
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    return {name: count / min(times) for name, times in seconds.items()}


def report_rates(rates: dict[int, dict[str, dict[str, float]]]) -> None:
    print("\nimages/s                    " + "".join(f"{name:>14}" for name in BACKENDS))
    for count, measures in rates.items():
        for measure, rate in measures.items():
            print(f"{measure + f', {count} thread(s)':<28}" + "".join(f"{rate[name]:14,.1f}" for name in BACKENDS))


def report_ceiling(detectors: dict[str, Detector], rates: dict, peaks: dict[int, float]) -> None:
    """FLOPs per image x scoring images/s against a large fp32 matmul's GFLOP/s, same process and threads."""
    from torch.utils.flop_counter import FlopCounterMode

    trained = detectors["PyTorch fp32"].trained
    side = trained.prep.image_size
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        trained.model(pixel_values=torch.zeros(1, 3, side, side))
    flops = counter.get_total_flops()
    print(f"\nceiling: {flops / 1e6:,.1f} MFLOP per image (multiply-add = 2; matmuls and convolutions); int8 runs "
          "the same FLOPs as integer multiply-adds, which AVX2 does at up to twice the fp32 rate")
    for count, peak in peaks.items():
        achieved = {name: flops * rates[count]["scoring"][name] / 1e9 for name in BACKENDS}
        print(f"  {count} thread(s): fp32 peak {peak:,.1f} GFLOP/s ({PEAK_SIDE}x{PEAK_SIDE} matmul); scoring "
              + ", ".join(f"{name} {value:.2f} GFLOP/s = {value / peak:.1%}" for name, value in achieved.items()))


def matmul_gflops(threads: int, repeats: int = 5) -> float:
    """The best GFLOP/s of a square fp32 matmul at `threads`: the machine's reachable peak as this process sees it."""
    torch.set_num_threads(threads)
    a, b = torch.randn(PEAK_SIDE, PEAK_SIDE), torch.randn(PEAK_SIDE, PEAK_SIDE)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * PEAK_SIDE**3 / best / 1e9


def report_profile(detectors: dict[str, Detector], paths: list[Path], args: argparse.Namespace, threads: int):
    """ms per image in each stage, best of --repeats per stage, the backends alternating."""
    best = {name: dict.fromkeys(STAGES, float("inf")) for name in BACKENDS}
    for _ in range(args.repeats):
        for name, detector in detectors.items():
            for stage, seconds in stage_seconds(detector, paths).items():
                best[name][stage] = min(best[name][stage], seconds)
    print(f"\nms per image, stages one after another in one thread (model at {threads} threads, batch "
          f"{args.batch_size}, {len(paths):,} images, best of {args.repeats})")
    print(f"{'':>14}" + "".join(f"{stage:>12}" for stage in STAGES) + f"{'total':>10}{'model share':>13}")
    for name, stages in best.items():
        total = sum(stages.values())
        print(f"{name:>14}" + "".join(f"{1e3 * stages[s] / len(paths):12.3f}" for s in STAGES)
              + f"{1e3 * total / len(paths):10.3f}{stages['forward'] / total:13.1%}")


def stage_seconds(detector: Detector, paths: list[Path]) -> dict[str, float]:
    """One pass of what `Detector.predict` does, stage by stage, each stage timed over all images."""
    trained, size = detector.trained, detector.trained.prep.storage_size
    clock = Stopwatch()
    data = [path.read_bytes() for path in paths]
    clock.lap("read")
    arrays = [decode_rgb(blob, size) for blob in data]
    [scale_note(blob, size) for blob in data]  # predict's second look at the header, for its size note
    clock.lap("decode")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    batches = [to_model_input(images[i:i + detector.batch_size], trained.prep)
               for i in range(0, len(images), detector.batch_size)]
    clock.lap("preprocess")
    logits = [forward(trained, batch) for batch in batches]
    clock.lap("forward")
    scores = np.concatenate([probabilities(trained, batch) for batch in logits])
    [Prediction(str(path), v.label, float(p), v.confidence, reason=v.reason)  # as Detector._judge builds them
     for path, p, v in zip(paths, scores, decide(scores, {}, 0.5, UnsureRule()), strict=True)]
    clock.lap("output")
    return clock.laps


def forward(trained, pixels: torch.Tensor):
    if isinstance(trained, OnnxModel):
        return trained.logits(pixels.numpy())
    with torch.inference_mode():
        return trained.model(pixel_values=pixels).logits


def probabilities(trained, logits) -> np.ndarray:
    if isinstance(trained, OnnxModel):
        return fake_probability(logits, 1.0, trained.fake_index)
    return fake_probability(logits, trained.temperature)


class Stopwatch:
    def __init__(self):
        self.laps: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self.last = now - self.last, now


def report_accuracy(detectors: dict[str, Detector], listed) -> None:
    """Accuracy of each backend on every image of the split, and verdicts that differ from PyTorch fp32."""
    started = time.perf_counter()
    images, kept, failures = decode_images(listed.paths, detectors["PyTorch fp32"].trained.prep.storage_size)
    labels = np.asarray(listed.labels)[kept]
    verdicts = {name: classify(detector.probabilities(images), detector.threshold)
                for name, detector in detectors.items()}
    print(f"\nfull official test split: {len(labels):,} images ({len(failures)} unreadable), "
          f"{time.perf_counter() - started:.0f} s")
    reference = verdicts["PyTorch fp32"]
    for name, called in verdicts.items():
        accuracy = (called == labels).mean()
        print(f"  {name:>12}: accuracy {accuracy:.4%} ({100 * (accuracy - (reference == labels).mean()):+.2f} "
              f"points vs PyTorch fp32), verdict agreement with PyTorch fp32 {(called == reference).mean():.2%} "
              f"({int((called != reference).sum())} differ)")


if __name__ == "__main__":
    main()
