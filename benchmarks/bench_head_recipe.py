"""The reference recipe (frozen backbone, head only) against `vitdetect train` on the same images.

baseline: the reference pipeline written out plainly: torchvision ImageFolder with PIL transforms
(Resize(224), RandomHorizontalFlip, RandomRotation(10), ColorJitter(0.2, 0.2, 0.2, 0.05), ToTensor,
Normalize(0.5)), DataLoader with 2 workers, the frozen backbone run on every batch of every epoch,
validation every epoch, the best model saved when the validation loss improves.
vitdetect: `vitdetect.training.trainer.train` in head-only mode with its defaults (feature cache, one augmented
view), the same model, images, train/validation split, epochs, batch size and optimizer.

Both start from one random-init scratch:vit-small-224 (hidden 384, 6 layers, 16x16 patches, 224 input)
saved with save_pretrained. Its frozen features are random projections, so the head learns only what
they keep; the learning rate is raised from the reference's 2e-5 to 1e-3 so that 10 short epochs
move the head at all (speed does not depend on it). Early stopping is off on both sides.

    python benchmarks/bench_head_recipe.py                       # 400 images, 10 epochs, 2 CPU cores: ~5 min
    python benchmarks/bench_head_recipe.py --images 100000 --side vitdetect   # GPU scale-up, one side
"""

from __future__ import annotations

import argparse
import math
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

PRESET = "vit-small-224"
TARGET = 8.0


def parser() -> argparse.ArgumentParser:
    parser = base_parser(__doc__.splitlines()[0], ["baseline", "vitdetect"], images=400)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers")
    return parser


def prepare(args: argparse.Namespace, work_dir: Path) -> None:
    cifake_subset(args.data_dir, args.images, work_dir / SUBSET_NAME)
    save_random_model(PRESET, work_dir / MODEL_NAME)


def baseline(args: argparse.Namespace, work_dir: Path) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets
    from torchvision import transforms as T
    from transformers import ViTForImageClassification

    from vitdetect.config.labels import LABEL2ID

    output_dir = fresh_dir(work_dir, "baseline")
    listed, train_idx, val_idx = vitdetect_split(work_dir / SUBSET_NAME)
    train_paths, val_paths = {str(listed.paths[i]) for i in train_idx}, {str(listed.paths[i]) for i in val_idx}
    with timer() as elapsed:
        torch.manual_seed(42)
        model = ViTForImageClassification.from_pretrained(work_dir / MODEL_NAME)
        for parameter in model.vit.parameters():
            parameter.requires_grad = False
        normalize = T.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
        train_tf = T.Compose([T.Resize(224), T.RandomHorizontalFlip(), T.RandomRotation(10),
                              T.ColorJitter(0.2, 0.2, 0.2, 0.05), T.ToTensor(), normalize])
        val_tf = T.Compose([T.Resize(224), T.ToTensor(), normalize])
        root = work_dir / SUBSET_NAME / "train"

        def folder(transform, keep: set[str]) -> Subset:
            images = datasets.ImageFolder(root, transform=transform)
            # vitdetect's labels (REAL=0, FAKE=1), so that both heads start from the same classifier
            images.target_transform = {i: LABEL2ID[name] for i, name in enumerate(images.classes)}.__getitem__
            return Subset(images, [i for i, (path, _) in enumerate(images.samples) if path in keep])

        train_loader = DataLoader(folder(train_tf, train_paths), batch_size=args.batch_size, shuffle=True,
                                  num_workers=args.workers)
        val_loader = DataLoader(folder(val_tf, val_paths), batch_size=args.batch_size, num_workers=args.workers)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                      weight_decay=0.01)
        best_loss, history = float("inf"), []
        for epoch in range(1, args.epochs + 1):
            model.train()
            for pixels, labels in train_loader:
                loss = F.cross_entropy(model(pixel_values=pixels).logits, labels)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.classifier.parameters(), 1.0)
                optimizer.step()
            model.eval()
            total_loss = correct = 0.0
            with torch.no_grad():
                for pixels, labels in val_loader:
                    logits = model(pixel_values=pixels).logits
                    total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
                    correct += (logits.argmax(-1) == labels).sum().item()
            val_loss, val_acc = total_loss / len(val_paths), correct / len(val_paths)
            history.append(val_acc)
            print(f"epoch {epoch}: val loss {val_loss:.4f} acc {val_acc:.4f}", flush=True)
            if val_loss < best_loss:
                best_loss = val_loss
                torch.save(model.state_dict(), output_dir / "best_model.pth")
    return {**elapsed, "val_accuracy": history[-1], "train_images": len(train_paths),
            "val_images": len(val_paths), "workers": args.workers}


def vitdetect_side(args: argparse.Namespace, work_dir: Path) -> dict:
    from vitdetect.config.settings import TrainSettings
    from vitdetect.training.trainer import train

    import_vitdetect_dependencies()

    settings = TrainSettings(
        data_dir=work_dir / SUBSET_NAME, output_dir=fresh_dir(work_dir, "vitdetect"), model=str(work_dir / MODEL_NAME),
        train_mode="head", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.epochs,
        cache_dir=fresh_dir(work_dir, "vitdetect-cache"), quiet=True,
    )
    with timer() as elapsed:
        result = train(settings)
    for row in result.state.epochs:
        print(f"epoch {row['epoch']}: val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} "
              f"({row['seconds']:.2f}s)", flush=True)
    epochs = sum(row["seconds"] for row in result.state.epochs)
    print(f"train() {elapsed['seconds']:.1f}s: the {len(result.state.epochs)} epochs on cached features took "
          f"{epochs:.1f}s; the rest is setup and the one backbone pass")
    return {**elapsed, "val_accuracy": result.state.epochs[-1]["val_accuracy"]}


def report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    base, fast = results["baseline"], results["vitdetect"]
    print(f"\n{base['train_images']} train / {base['val_images']} validation real CIFAKE images, {args.epochs} epochs, "
          f"batch {args.batch_size}, scratch:{PRESET}, head only")
    for name, result in results.items():
        print(f"{name:>9}: {result['seconds']:8.1f} s (CPU {result['cpu_seconds']:,.0f} s)   "
              f"final val accuracy {result['val_accuracy']:.4f}   "
              f"{rss_text(result)}")
    # One binomial standard error per accuracy; "within noise": the gap is under two of them combined.
    errors = [math.sqrt(r["val_accuracy"] * (1 - r["val_accuracy"]) / base["val_images"]) for r in (base, fast)]
    gap, noise = abs(base["val_accuracy"] - fast["val_accuracy"]), 2 * math.hypot(*errors)
    print(f"validation accuracy gap {gap:.4f}: {'within' if gap <= noise else 'OUTSIDE'} noise "
          f"(2 standard errors over {base['val_images']} images = {noise:.4f})")
    print(f"CPU time, baseline / vitdetect: {base['cpu_seconds'] / fast['cpu_seconds']:.2f}x "
          f"(the work done; on this shared machine less sensitive to other load than the wall time)")
    print_ratio("wall time, baseline / vitdetect", base["seconds"] / fast["seconds"], TARGET)


if __name__ == "__main__":
    run_benchmark(parser(), prepare, {"baseline": baseline, "vitdetect": vitdetect_side}, report,
                  cost=lambda result: result["seconds"])
