"""Full fine-tuning throughput: `vitdetect train --train-mode full` against a plain Hugging Face `Trainer`.

baseline: transformers.Trainer over a torch Dataset of PIL-preprocessed tensors (Resize, ToTensor,
Normalize(0.5), done before the clock starts), default data collator, no evaluation, no saving.
vitdetect: `vitdetect.training.trainer.train` in full mode: uint8 batches, `to_model_input` per batch.

Same random-init model (a vitdetect preset saved with save_pretrained), same training images (vitdetect's
seeded 80/20 split), batch size, epochs, AdamW (lr, weight decay 0.01), constant schedule, gradient
clipping at 1.0, no augmentation on either side.

The ratio compares the training loops: train images x epochs / seconds spent in the epochs' training
passes, timed through each side's public hooks (a TrainerCallback; vitdetect's Reporter). The whole
runs are printed too: vitdetect's also decodes the images, validates every epoch (Trainer here does not),
writes checkpoints and figures; Trainer's excludes its PIL preprocessing.

    python benchmarks/bench_train_step.py                     # vit-tiny-32, 640 images x 2 epochs, twice: ~4 min
    python benchmarks/bench_train_step.py --preset vit-small-224 --images 100000 --epochs 3 --repeats 1  # a GPU
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from pathlib import Path

from _common import (
    MODEL_NAME,
    SUBSET_NAME,
    base_parser,
    cifake_subset,
    fresh_dir,
    import_vitdetect_dependencies,
    print_ratio,
    rss_text,
    run_benchmark,
    save_random_model,
    timer,
    vitdetect_split,
)

TARGET = 1.0


def parser() -> argparse.ArgumentParser:
    from vitdetect.models.build import PRESETS

    parser = base_parser(__doc__.splitlines()[0], ["baseline", "vitdetect"], images=640, repeats=2)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="vit-tiny-32")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    return parser


def prepare(args: argparse.Namespace, work_dir: Path) -> None:
    cifake_subset(args.data_dir, args.images, work_dir / SUBSET_NAME)
    save_random_model(args.preset, work_dir / MODEL_NAME)


def baseline(args: argparse.Namespace, work_dir: Path) -> dict:
    import torch
    from PIL import Image
    from torchvision import transforms as T
    from transformers import Trainer, TrainerCallback, TrainingArguments, ViTForImageClassification

    class EpochTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    model = ViTForImageClassification.from_pretrained(work_dir / MODEL_NAME)
    preprocess = T.Compose([T.Resize(model.config.image_size), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    listed, train_idx, _ = vitdetect_split(work_dir / SUBSET_NAME)
    dataset = [{"pixel_values": preprocess(Image.open(listed.paths[i]).convert("RGB")), "labels": listed.labels[i]}
               for i in train_idx]
    cuda = torch.cuda.is_available()
    training_args = TrainingArguments(
        output_dir=str(fresh_dir(work_dir, "trainer")), per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs, learning_rate=args.lr, weight_decay=0.01, lr_scheduler_type="constant",
        max_grad_norm=1.0, seed=42, eval_strategy="no", save_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
    )
    epochs = EpochTimer()
    with timer() as elapsed:
        Trainer(model=model, args=training_args, train_dataset=dataset, callbacks=[epochs]).train()
    return {"seconds": elapsed["seconds"], "loop_seconds": sum(epochs.seconds), "train_images": len(dataset)}


def vitdetect_side(args: argparse.Namespace, work_dir: Path) -> dict:
    from vitdetect.config.settings import TrainSettings
    from vitdetect.training.trainer import train
    from vitdetect.utils.progress import Reporter

    import_vitdetect_dependencies()

    class EpochTimer(Reporter):
        """Times the progress tasks of the training passes ("epoch N train")."""

        def __init__(self):
            super().__init__(quiet=True)
            self.seconds: list[float] = []

        @contextmanager
        def task(self, description, total, unit="img", transient=False):
            started = time.perf_counter()
            with super().task(description, total, unit, transient) as task:
                yield task
            if description.endswith(" train"):
                self.seconds.append(time.perf_counter() - started)

    settings = TrainSettings(
        data_dir=work_dir / SUBSET_NAME, output_dir=fresh_dir(work_dir, "vitdetect"),
        model=str(work_dir / MODEL_NAME), train_mode="full", epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=0.01, schedule="constant", grad_clip=1.0, patience=args.epochs, augment=False,
        cache_dir=fresh_dir(work_dir, "vitdetect-cache"), quiet=True,
    )
    epochs = EpochTimer()
    with timer() as elapsed:
        train(settings, reporter=epochs)
    if len(epochs.seconds) != args.epochs:
        raise SystemExit(f"timed {len(epochs.seconds)} training passes, expected {args.epochs}")
    _, train_idx, _ = vitdetect_split(settings.data_dir)
    return {"seconds": elapsed["seconds"], "loop_seconds": sum(epochs.seconds), "train_images": len(train_idx)}


def report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    print(f"\nfull fine-tuning, scratch:{args.preset} (random init), {args.images} real CIFAKE images "
          f"(80% train), {args.epochs} epochs, batch {args.batch_size}")
    loop, whole = {}, {}
    for name, result in results.items():
        images = result["train_images"] * args.epochs
        loop[name], whole[name] = images / result["loop_seconds"], images / result["seconds"]
        print(f"{name:>9}: {loop[name]:7,.1f} training images/s in the training loop ({images:,} in "
              f"{result['loop_seconds']:.1f} s); whole run {result['seconds']:.1f} s   {rss_text(result)}")
    print(f"whole runs, vitdetect / Trainer: {whole['vitdetect'] / whole['baseline']:.2f}x "
          f"(vitdetect's also decodes, validates every epoch, saves checkpoints and figures)")
    print_ratio("training-loop images/s, vitdetect / Trainer", loop["vitdetect"] / loop["baseline"], TARGET)


if __name__ == "__main__":
    run_benchmark(parser(), prepare, {"baseline": baseline, "vitdetect": vitdetect_side}, report,
                  cost=lambda result: result["loop_seconds"])
