"""What robust training buys: the same recipe trained without and with `--augment-jpeg/--augment-blur`, both
evaluated with `vitdetect evaluate --robustness` on the same sample, and the two reports side by side.

Not a speed benchmark: a comparison of two models, printed as a Markdown table (and written to
WORK_DIR/comparison.md) with the clean accuracy change (the cost) and the change under every perturbation.

    # the whole comparison: two trainings (flags after -- go to both), two evaluations, the table
    python benchmarks/robust_training.py --work-dir runs/robust --data-dir ../shared/data/cifake \\
        --augment-jpeg 0.5 --augment-blur 0.5 -- --model scratch:vit-tiny-32 --epochs 30
    # or the table alone, from two robustness.json files made separately (e.g. trainings run on a GPU box)
    python benchmarks/robust_training.py --compare runs/a/robustness.json runs/b/robustness.json

Each step runs `python -m vitdetect ...` in a child process: the same code and flags a user would run.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from vitdetect.config.run_files import ROBUSTNESS_NAME
from vitdetect.errors import VitdetectError
from vitdetect.reports.robustness import comparison_table, read_robustness

REAL_CIFAKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifake"
NAMES = ("without", "with")  # robust-training augmentations


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    train_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, help="runs go to WORK_DIR/without and WORK_DIR/with")
    parser.add_argument("--data-dir", type=Path, default=REAL_CIFAKE, help="CIFAKE root (train/ and the split)")
    parser.add_argument("--augment-jpeg", type=float, default=0.5, help="--augment-jpeg of the robust run")
    parser.add_argument("--augment-blur", type=float, default=0.5, help="--augment-blur of the robust run")
    parser.add_argument("--split", default="test", help="split both models are evaluated on")
    parser.add_argument("--robustness-images", type=int, default=2000, help="images per perturbation (0: all)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("WITHOUT_JSON", "WITH_JSON"),
                        help="only print the table of two robustness.json files")
    args = parser.parse_args(own)
    if args.compare is None and args.work_dir is None:
        parser.error("give --work-dir (to train and evaluate both) or --compare WITHOUT_JSON WITH_JSON")
    return args, train_flags


def vitdetect(*args: object) -> None:
    command = [sys.executable, "-m", "vitdetect", *map(str, args)]
    print("$ " + shlex.join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def train_and_evaluate(args: argparse.Namespace, train_flags: list[str]) -> tuple[Path, Path]:
    robust_flags = ["--augment-jpeg", args.augment_jpeg, "--augment-blur", args.augment_blur]
    reports = []
    for name, extra in zip(NAMES, ([], robust_flags), strict=True):
        run = args.work_dir / name
        vitdetect("train", "--data-dir", args.data_dir, "--output-dir", run, *train_flags, *extra)
        vitdetect("evaluate", "--checkpoint", run / "best_model.pth", "--data-dir", args.data_dir,
                  "--split", args.split, "--robustness", "--robustness-images", args.robustness_images)
        reports.append(run / ROBUSTNESS_NAME)
    return reports[0], reports[1]


def main(argv: list[str]) -> None:
    args, train_flags = parse_args(argv)
    without, with_ = args.compare or train_and_evaluate(args, train_flags)
    table = comparison_table(read_robustness(without), read_robustness(with_), NAMES)
    header = f"Robust training {NAMES[0]} ({without}) and {NAMES[1]} ({with_}) the augmentations:\n\n"
    print("\n" + header + table)
    if args.work_dir is not None:
        (args.work_dir / "comparison.md").write_text(header + table, encoding="utf-8")
        print(f"wrote {args.work_dir / 'comparison.md'}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except VitdetectError as exc:
        sys.exit(f"error: {exc}")
