"""Full fine-tuning throughput: `vitdetect train --train-mode full` against a plain Hugging Face `Trainer`.

baseline: transformers.Trainer over a torch Dataset of PIL-preprocessed tensors (Resize, ToTensor,
Normalize(0.5), done before the clock starts), default data collator, no evaluation, no saving.
vitdetect: `vitdetect.train.train` in full mode, timed as a whole: decoding, the validation pass
of every epoch, checkpoints and figures included.

Same random-init model (a vitdetect preset saved with save_pretrained), same training images (vitdetect's
seeded 80/20 split), batch size, epochs, AdamW (lr, weight decay 0.01), constant schedule, gradient
clipping at 1.0, no augmentation on either side. Training images/s = train images x epochs / seconds.

    python benchmarks/bench_train_step.py                     # vit-tiny-32, 1,280 images x 2 epochs: ~2 min
    python benchmarks/bench_train_step.py --preset vit-small-224 --images 100000 --epochs 3   # on a GPU
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import (
    MODEL_NAME,
    SUBSET_NAME,
    base_parser,
    cifake_subset,
    print_ratio,
    rss_text,
    run_benchmark,
    save_random_model,
    timer,
    vitdetect_split,
)

TARGET = 1.0


def parser() -> argparse.ArgumentParser:
    from vitdetect.model import PRESETS

    parser = base_parser(__doc__.splitlines()[0], ["baseline", "vitdetect"], images=1280)
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
    from transformers import Trainer, TrainingArguments, ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(work_dir / MODEL_NAME)
    size = model.config.image_size
    preprocess = T.Compose([T.Resize(size), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    listed, train_idx, _ = vitdetect_split(work_dir / SUBSET_NAME)

    class PreprocessedImages(torch.utils.data.Dataset):
        def __init__(self):
            self.pixels = [preprocess(Image.open(listed.paths[i]).convert("RGB")) for i in train_idx]
            self.labels = [listed.labels[i] for i in train_idx]

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, index: int) -> dict:
            return {"pixel_values": self.pixels[index], "labels": self.labels[index]}

    with timer() as preprocessing:
        dataset = PreprocessedImages()
    cuda = torch.cuda.is_available()
    training_args = TrainingArguments(
        output_dir=str(work_dir / "trainer"), per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs, learning_rate=args.lr, weight_decay=0.01, lr_scheduler_type="constant",
        max_grad_norm=1.0, seed=42, eval_strategy="no", save_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
    )
    with timer() as elapsed:
        Trainer(model=model, args=training_args, train_dataset=dataset).train()
    print(f"PIL preprocessing of {len(dataset)} images before the clock: {preprocessing['seconds']:.1f}s")
    return {"seconds": elapsed["seconds"], "train_images": len(dataset)}


def vitdetect_side(args: argparse.Namespace, work_dir: Path) -> dict:
    from vitdetect.settings import TrainSettings
    from vitdetect.train import train

    settings = TrainSettings(
        data_dir=work_dir / SUBSET_NAME, output_dir=work_dir / "vitdetect-results",
        model=str(work_dir / MODEL_NAME), train_mode="full", epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=0.01, schedule="constant", grad_clip=1.0, patience=args.epochs, augment=False,
        cache_dir=work_dir / "vitdetect-cache", quiet=True,
    )
    with timer() as elapsed:
        result = train(settings)
    epochs = sum(row["seconds"] for row in result.state.epochs)
    print(f"train() {elapsed['seconds']:.1f}s, of which {len(result.state.epochs)} epochs "
          f"(training + validation) {epochs:.1f}s")
    _, train_idx, _ = vitdetect_split(settings.data_dir)
    return {"seconds": elapsed["seconds"], "train_images": len(train_idx)}


def report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    print(f"\nfull fine-tuning, scratch:{args.preset} (random init), {args.images} real CIFAKE images "
          f"(80% train), {args.epochs} epochs, batch {args.batch_size}")
    rates = {}
    for name, result in results.items():
        rates[name] = result["train_images"] * args.epochs / result["seconds"]
        print(f"{name:>9}: {rates[name]:8,.1f} training images/s ({result['train_images']} x {args.epochs} "
              f"in {result['seconds']:.1f} s)   {rss_text(result)}")
    print_ratio("training images/s, vitdetect / Trainer", rates["vitdetect"] / rates["baseline"], TARGET)


if __name__ == "__main__":
    run_benchmark(parser(), prepare, {"baseline": baseline, "vitdetect": vitdetect_side}, report)
