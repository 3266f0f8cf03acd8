"""Accuracy side by side: a vitdetect from-scratch ViT preset against the small CNN a user would pick instead.

Both train on the same images (vitdetect's seeded 80/20 split of DATA_DIR/train) through the same data
pipeline (decoded once to uint8, `to_model_input` with a random horizontal flip), and both are scored on the
full official test split (DATA_DIR/test) the same way. Printed: official-test accuracy, ROC AUC and training
wall time for both, then the ViT's accuracy gap and time ratio last.

The CNN (the peer named in issue 11): conv3x3-BN-ReLU x 6 at widths 32/32/64/64/128/128 with a max-pool after
the 2nd and 4th, global average pool, linear; 288k parameters; AdamW 2e-3 with a one-cycle schedule, weight
decay 0.05, flip only, batch 128, 12 epochs.

    python benchmarks/bench_accuracy.py --preset vit-p4-128-kd           # trains both (about an hour on 2 cores)
    python benchmarks/bench_accuracy.py --vit-run runs/vit20k            # reuse a finished `vitdetect train` run

A distilled ViT (`--distill`, the default preset) trains this very CNN as its teacher, on the same split with the
same seed and recipe: the benchmark scores that teacher (teacher.pth) as the CNN side, with its recorded training
time, rather than training it again.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from _common import REAL_CIFAKE, machine_accelerator
from vitdetect.config.commands import EvaluateSettings
from vitdetect.config.run_files import TEACHER_NAME
from vitdetect.config.settings import TrainSettings
from vitdetect.data.dataset import load_split, stratified_split
from vitdetect.data.transforms import Preprocessing, to_model_input
from vitdetect.evaluation.evaluator import evaluate
from vitdetect.training.distill import read_teacher, train_small_cnn
from vitdetect.training.trainer import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cnn_side(args: argparse.Namespace, prep: Preprocessing, vit_run: Path) -> tuple[torch.nn.Module, float, str]:
    """The CNN on vitdetect's training split (training.distill, the --distill teacher): the model, its training
    wall time and where it came from. A distilled ViT run already trained exactly this CNN (same split, seed and
    recipe) as its teacher: that one is scored instead of training it a second time."""
    teacher = vit_run / TEACHER_NAME
    if teacher.exists():
        model, record = read_teacher(teacher)
        if record["epochs"] == args.cnn_epochs:
            return model, record["seconds"], f"the teacher in {teacher}"
    defaults = TrainSettings()
    images = load_split(args.data_dir, "train", None, args.cache_dir)
    train_idx, _ = stratified_split(images.labels, defaults.val_fraction, defaults.seed)
    started = time.perf_counter()
    model = train_small_cnn(images.images[train_idx], images.labels[train_idx], prep, args.cnn_epochs,
                            args.batch_size, defaults.seed)
    return model, time.perf_counter() - started, "trained here"


def score_cnn(model: torch.nn.Module, args: argparse.Namespace, prep: Preprocessing) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    test = load_split(args.data_dir, "test", prep.storage_size, args.cache_dir)
    with torch.inference_mode():
        p_fake = torch.cat([torch.softmax(model(to_model_input(test.images[start:start + 512], prep)), -1)[:, 1]
                            for start in range(0, len(test), 512)]).numpy()
    labels = test.labels.numpy()
    return {"accuracy": float(((p_fake >= 0.5) == labels).mean()), "roc_auc": float(roc_auc_score(labels, p_fake))}


def vit_run_dir(args: argparse.Namespace) -> Path:
    """--vit-run, or a fresh training of the preset."""
    if args.vit_run is not None:
        return args.vit_run
    run_dir = args.output_dir / "vit"
    train(TrainSettings(model=f"scratch:{args.preset}", data_dir=args.data_dir, output_dir=run_dir,
                        cache_dir=args.cache_dir, quiet=True, overwrite=True))
    return run_dir


def vit_side(args: argparse.Namespace, run_dir: Path) -> dict[str, float]:
    """The run's best checkpoint evaluated on the official test split, and its training time."""
    history = np.genfromtxt(run_dir / "history.csv", delimiter=",", names=True)
    metrics = evaluate(EvaluateSettings(checkpoint=run_dir / "best_model.pth", data_dir=args.data_dir,
                                        output_dir=args.output_dir / "vit-eval", cache_dir=args.cache_dir,
                                        quiet=True)).metrics
    teacher = run_dir / TEACHER_NAME  # a --distill run trained its CNN teacher first: that time counts too
    teacher_seconds = read_teacher(teacher)[1]["seconds"] if teacher.exists() else 0.0
    return {"accuracy": metrics["accuracy"], "roc_auc": metrics["roc_auc"],
            "seconds": float(np.atleast_1d(history["seconds"]).sum()) + teacher_seconds, "model": metrics["model"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REAL_CIFAKE, help="CIFAKE root with train/ and test/")
    parser.add_argument("--preset", default="vit-p4-128-kd", help="scratch preset to train (without scratch:)")
    parser.add_argument("--vit-run", type=Path, help="a finished `vitdetect train` run folder to reuse")
    parser.add_argument("--cnn-epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--output-dir", type=Path, default=Path("/tmp/vitdetect-bench-accuracy"))
    parser.add_argument("--cache-dir", type=Path, default=TrainSettings().cache_dir)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores, {machine_accelerator()}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.1f}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    prep = Preprocessing(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    print(f"--- ViT {'run ' + str(args.vit_run) if args.vit_run else 'scratch:' + args.preset}", flush=True)
    run_dir = vit_run_dir(args)
    vit = vit_side(args, run_dir)
    print(f"--- small CNN (288k parameters, {args.cnn_epochs} epochs)", flush=True)
    cnn, cnn_seconds, origin = cnn_side(args, prep, run_dir)
    print(f"    CNN: {origin}")
    cnn_scores = {**score_cnn(cnn, args, prep), "seconds": cnn_seconds}
    for name, scores in (("CNN", cnn_scores), (f"ViT {vit['model']}", vit)):
        print(f"{name}: official-test accuracy {scores['accuracy']:.4f}, ROC AUC {scores['roc_auc']:.4f}, "
              f"training {scores['seconds'] / 60:.1f} min")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"ViT accuracy gap (ViT - CNN): {vit['accuracy'] - cnn_scores['accuracy']:+.4f}; "
          f"time ratio (ViT / CNN): {vit['seconds'] / cnn_seconds:.2f}x")


if __name__ == "__main__":
    main()
