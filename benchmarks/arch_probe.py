"""Early-epoch probe of transformer architectures on CIFAKE's 32x32 images (issue 11's ablation).

Trains one architecture from scratch for a few epochs on vitdetect's seeded 16,000 / 4,000 split of DATA_DIR/train
(uint8 images through `to_model_input`, random horizontal flip, vitdetect's AdamW and schedule: linear warmup
over 10% of --schedule-epochs then cosine, gradient clipping at 1) and prints validation accuracy and
seconds per epoch after each epoch; --test also scores the official test split at the end. It answers "does this
model learn CIFAKE faster than vit-p4-128 per epoch and per second?" before an hour-long `vitdetect train`, and
prints what each model does to a 32x32 input (the feature maps or tokens each stage sees).

    python benchmarks/arch_probe.py cvt --epochs 3 --schedule-epochs 20 --lr 1e-3
    python benchmarks/arch_probe.py cnn --epochs 4 --schedule-epochs 12 --lr 2e-3   # the peer, for reference

Architectures: vit-p4-128 (the preset), vit-spt (the same ViT on shifted patch tokens, Lee et al. 2021: the image
and four copies shifted by half a patch, 15 channels), cvt (CvT, conv token embedding at stride 2 per stage), swin
(2x2 patches, 4x4 windows), mobilevit and levit (convolution-transformer hybrids), pvt-v2-s2 (PVTv2 with overlapping
3x3 patch embeddings at stride 2 in every stage: the `pvt-v2-32` preset) and pvt-v2 (the same with stride 1 in the
first stage: 32x32 tokens there), cnn (the 288k-parameter peer).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import REAL_CIFAKE
from vitdetect.config.settings import TrainSettings
from vitdetect.data.dataset import load_split, stratified_split
from vitdetect.data.transforms import Preprocessing, build_augmentation, to_model_input
from vitdetect.training.distill import small_cnn
from vitdetect.training.optim import make_optimizer, make_scheduler

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PREP = Preprocessing(32, 32, (0.5,) * 3, (0.5,) * 3)


def build(name: str) -> torch.nn.Module:
    import transformers as T

    labels = {"num_labels": 2}
    if name in ("vit-p4-128", "vit-spt"):
        return T.ViTForImageClassification(T.ViTConfig(
            hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512, image_size=32,
            patch_size=4, num_channels=15 if name == "vit-spt" else 3, **labels))
    if name == "cvt":
        return T.CvtForImageClassification(T.CvtConfig(
            patch_sizes=[3, 3, 3], patch_stride=[2, 2, 2], patch_padding=[1, 1, 1], embed_dim=[64, 128, 192],
            num_heads=[1, 2, 3], depth=[1, 2, 4], drop_path_rate=[0.0, 0.0, 0.1], stride_kv=[2, 2, 1], **labels))
    if name == "swin":
        return T.SwinForImageClassification(T.SwinConfig(
            image_size=32, patch_size=2, embed_dim=64, depths=[2, 2, 4], num_heads=[2, 4, 8], window_size=4,
            drop_path_rate=0.1, **labels))
    if name == "mobilevit":
        return T.MobileViTForImageClassification(T.MobileViTConfig(
            image_size=32, hidden_sizes=(64, 80, 96), neck_hidden_sizes=(16, 16, 24, 48, 64, 80, 320),
            num_attention_heads=4, expand_ratio=2.0, **labels))
    if name == "levit":
        return T.LevitForImageClassification(T.LevitConfig(image_size=32, **labels))
    if name in ("pvt-v2", "pvt-v2-s2"):
        first_stride = 1 if name == "pvt-v2" else 2
        return T.PvtV2ForImageClassification(T.PvtV2Config(
            image_size=32, hidden_sizes=[32, 64, 128, 256], patch_sizes=[3, 3, 3, 3], strides=[first_stride, 2, 2, 2],
            sr_ratios=[8, 4, 2, 1], num_attention_heads=[1, 2, 4, 8], mlp_ratios=[4, 4, 4, 4], **labels))
    if name == "cnn":
        return small_cnn()
    raise SystemExit(f"error: unknown architecture {name}")


def shifted_patch_tokens(pixels: torch.Tensor) -> torch.Tensor:
    """The image and four copies shifted diagonally by half a 4x4 patch (zero filled): 15 channels."""
    padded = F.pad(pixels, (2, 2, 2, 2))
    side = pixels.shape[-1]
    shifts = [padded[..., dy:dy + side, dx:dx + side] for dy, dx in ((0, 0), (0, 4), (4, 0), (4, 4))]
    return torch.cat([pixels, *shifts], 1)


def logits_fn(name: str, model: torch.nn.Module):
    if name == "cnn":
        return model
    if name == "vit-spt":
        return lambda pixels: model(pixel_values=shifted_patch_tokens(pixels)).logits
    return lambda pixels: model(pixel_values=pixels).logits


def stage_shapes(name: str, model: torch.nn.Module) -> str:
    """What the model does to a 32x32 input: the shape of each stage's output (tokens or feature maps)."""
    if name == "cnn":
        return "conv maps 32x32 -> 16x16 -> 8x8"
    pixels = torch.zeros(1, 15 if name == "vit-spt" else 3, 32, 32)
    with torch.no_grad():
        hidden = model.eval()(pixel_values=pixels, output_hidden_states=True).hidden_states
    model.train()
    return " -> ".join("x".join(str(d) for d in h.shape[1:]) for h in hidden)


def accuracy(model: torch.nn.Module, logits, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    model.eval()
    with torch.no_grad():
        p_fake = torch.cat([logits(to_model_input(images[s:s + 500], PREP)).softmax(-1)[:, 1]
                            for s in range(0, len(images), 500)]).numpy()
    model.train()
    truth = labels.numpy()
    return float(((p_fake >= 0.5) == (truth == 1)).mean()), float(roc_auc_score(truth, p_fake))


def optimizer_and_schedule(model: torch.nn.Module, args: argparse.Namespace, steps_per_epoch: int):
    """vitdetect's own AdamW and warmup + cosine schedule (no warmup for the CNN, as in its one-cycle recipe)."""
    recipe = TrainSettings(lr=args.lr, weight_decay=args.weight_decay, epochs=args.schedule_epochs or args.epochs,
                           schedule="cosine", warmup_ratio=0.0 if args.arch == "cnn" else 0.1)
    optimizer = make_optimizer(model, recipe)
    return optimizer, make_scheduler(optimizer, recipe, steps_per_epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch")
    parser.add_argument("--data-dir", type=Path, default=REAL_CIFAKE)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--schedule-epochs", type=int, default=None, help="length of the lr schedule (default: "
                        "--epochs); longer probes the start of a full run")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--test", action="store_true", help="also score the official test split at the end")
    args = parser.parse_args()
    torch.manual_seed(0)
    defaults = TrainSettings()
    train = load_split(args.data_dir, "train", None, defaults.cache_dir)
    train_idx, val_idx = (torch.from_numpy(i) for i in stratified_split(train.labels, defaults.val_fraction,
                                                                       defaults.seed))
    model = build(args.arch)
    logits = logits_fn(args.arch, model)
    print(f"{args.arch}: {sum(p.numel() for p in model.parameters()):,} parameters; 32x32 input -> "
          f"{stage_shapes(args.arch, model)}; {torch.get_num_threads()} thread(s)", flush=True)
    steps_per_epoch = math.ceil(len(train_idx) / args.batch_size)
    optimizer, schedule = optimizer_and_schedule(model, args, steps_per_epoch)
    flip = build_augmentation(0, color_jitter=False)
    order_generator = torch.Generator().manual_seed(defaults.seed)
    model.train()
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        order = train_idx[torch.randperm(len(train_idx), generator=order_generator)]
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            loss = F.cross_entropy(logits(to_model_input(train.images[batch], PREP, flip)), train.labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        seconds = time.perf_counter() - started
        val_acc, val_auc = accuracy(model, logits, train.images[val_idx], train.labels[val_idx])
        print(f"epoch {epoch}: val acc {val_acc:.4f} ROC AUC {val_auc:.4f} ({seconds:.0f} s)", flush=True)
    if args.test:
        test = load_split(args.data_dir, "test", None, defaults.cache_dir)
        test_acc, test_auc = accuracy(model, logits, test.images, test.labels)
        print(f"official test: acc {test_acc:.4f} ROC AUC {test_auc:.4f}")


if __name__ == "__main__":
    main()
