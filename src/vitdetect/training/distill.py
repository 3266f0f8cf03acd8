"""Knowledge distillation from a small CNN teacher (`vitdetect train --distill`).

A ViT trained from scratch on 16,000 images lacks the locality a convolution has built in; a small CNN learns
CIFAKE's cues in minutes. With --distill, `train` first trains that CNN on the same training split (its own
recipe: AdamW 2e-3, one-cycle, weight decay 0.05, flip, `--teacher-epochs`), stores it as teacher.pth, then
trains the model on a mix of the labels and the teacher's softened probabilities on the very same augmented
batch (Hinton et al. 2015; DeiT, Touvron et al. 2021, distils a convnet into a ViT the same way):

    loss = (1 - alpha) * CE(student, label) + alpha * tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))

`--teacher PATH` skips the teacher's training (30-60 minutes on the full split) by reusing the teacher.pth of an
earlier run, so the runs of an ablation share one teacher; it is checked against this run's labels and image sizes
first, because a teacher trained on other images would teach a cue that is not in these.

Only the training loss changes: validation, early stopping, calibration and the saved model are the student's
alone, a plain transformers model (ViTForImageClassification, or PVTv2 for pvt-v2-32). The CNN is the peer of
issue 11 (and benchmarks/bench_accuracy.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import vitdetect.utils.distributed as distributed
from vitdetect.config.labels import CLASS_NAMES
from vitdetect.config.run_files import CONFIG_NAME, TEACHER_NAME
from vitdetect.config.settings import TrainSettings
from vitdetect.data.transforms import Preprocessing, build_augmentation, to_model_input
from vitdetect.errors import UsageError, VitdetectError
from vitdetect.utils.atomic import atomic_write
from vitdetect.utils.progress import Reporter
from vitdetect.utils.torch_files import atomic_torch_save

TEACHER_LR = 2e-3
TEACHER_WEIGHT_DECAY = 0.05


def small_cnn() -> torch.nn.Module:
    """conv3x3-BN-ReLU x 6 at widths 32/32/64/64/128/128, max-pools after the 2nd and 4th, global average
    pool, linear: 288k parameters."""

    def block(cin: int, cout: int) -> list[torch.nn.Module]:
        return [torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False), torch.nn.BatchNorm2d(cout), torch.nn.ReLU()]

    return torch.nn.Sequential(
        *block(3, 32), *block(32, 32), torch.nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), torch.nn.MaxPool2d(2),
        *block(64, 128), *block(128, 128),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(128, 2),
    )


def train_small_cnn(images: torch.Tensor, labels: torch.Tensor, prep: Preprocessing, epochs: int,
                    batch_size: int, seed: int, reporter: Reporter | None = None,
                    device: torch.device | str = "cpu") -> torch.nn.Module:
    """The CNN's own recipe on uint8 images (flip only, as the ViT presets); returns it in eval mode."""
    torch.manual_seed(seed)
    model = small_cnn().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TEACHER_LR, weight_decay=TEACHER_WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=TEACHER_LR,
                                                   total_steps=epochs * math.ceil(len(images) / batch_size))
    flip = build_augmentation(rotation_degrees=0, color_jitter=False)
    order_generator = torch.Generator().manual_seed(seed)
    model.train()
    reporter = reporter or Reporter(quiet=True)
    with reporter.task("teacher (small CNN)", epochs * len(images), transient=True) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=order_generator)
            for start in range(0, len(images), batch_size):
                batch = order[start:start + batch_size]
                pixels = to_model_input(images[batch].to(device), prep, flip)
                loss = F.cross_entropy(model(pixels), labels[batch].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.advance(len(batch), loss=loss.item())
    return model.eval()


def teacher_for(output_dir: Path, train_set, prep: Preprocessing, settings: TrainSettings, reporter: Reporter,
                accelerator, resuming: bool) -> torch.nn.Module:
    """The teacher of a --distill run, in eval mode on the training device with gradients off.

    The main process puts it in the run's folder as teacher.pth: a resumed run keeps the one its folder holds,
    --teacher copies the given one there (checked by `teacher_origin` first; the folder stays complete when the
    source is moved), otherwise it is trained on the training split. Every process then loads that file, so all
    of them distil from the same network.
    """
    path = output_dir / TEACHER_NAME

    def train_and_save() -> None:
        started = time.perf_counter()
        model = train_small_cnn(train_set.images, train_set.labels, prep, settings.teacher_epochs,
                                settings.batch_size, settings.seed, reporter, accelerator.device)
        seconds = time.perf_counter() - started
        save_teacher(path, model, prep, {"epochs": settings.teacher_epochs, "seconds": seconds})
        reporter.info(f"teacher: small CNN, {settings.teacher_epochs} epochs in {seconds:.1f} s -> {path}")

    def copy_given() -> None:  # byte for byte, so its SHA-256 in config.json names the copy too
        atomic_write(path, lambda temp: shutil.copyfile(settings.teacher, temp))
        reporter.info(f"teacher: {settings.teacher}, reused (no teacher training) -> {path}")

    if resuming and path.exists():
        reporter.info(f"teacher: {path} (from the run being resumed)")
    elif settings.teacher is not None:
        distributed.on_main_process(copy_given, accelerator)
    else:
        distributed.on_main_process(train_and_save, accelerator)
    teacher, _ = read_teacher(path)
    return teacher.to(accelerator.device).requires_grad_(False)


def save_teacher(path: Path, model: torch.nn.Module, prep: Preprocessing, record: dict[str, Any]) -> None:
    """teacher.pth: the weights, and the labels and preprocessing they were trained for, which --teacher checks."""
    atomic_torch_save(path, {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                             "labels": list(CLASS_NAMES), "preprocessing": prep.to_dict(), **record})


def read_teacher(path: Path) -> tuple[torch.nn.Module, dict]:
    """A saved teacher in eval mode on the CPU, and its record (epochs, training seconds, labels, preprocessing)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = small_cnn()
    model.load_state_dict(saved.pop("state_dict"))
    return model.eval(), saved


def checked_teacher(path: Path, prep: Preprocessing) -> dict[str, Any]:
    """The contents of the teacher.pth given to --teacher, with its labels and preprocessing, refused in one line
    unless it was trained on images like this run's: same labels, same stored and input sizes, same normalization
    (the teacher sees the very pixels the student does)."""
    if not path.is_file():
        raise UsageError(f"--teacher {path}: no such file (give the teacher.pth of an earlier --distill run)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        small_cnn().load_state_dict(saved["state_dict"])
    except Exception:  # noqa: BLE001 - torch.load and load_state_dict raise many types for a wrong file
        raise VitdetectError(f"--teacher {path} is not a teacher.pth written by `vitdetect train --distill`") from None
    saved = {**saved, **teacher_record(path, saved)}
    if saved["labels"] != list(CLASS_NAMES):
        raise VitdetectError(f"--teacher {path} was trained for the labels {saved['labels']}, this run's are "
                             f"{list(CLASS_NAMES)}")
    trained_for = Preprocessing.from_dict(saved["preprocessing"])
    if trained_for != prep:
        raise VitdetectError(f"--teacher {path} was trained on {describe(trained_for)}, this run's are "
                             f"{describe(prep)}: drop --teacher to train a teacher for them")
    return saved


def teacher_record(path: Path, saved: dict[str, Any]) -> dict[str, Any]:
    """The labels and preprocessing a teacher was trained for: from the file, or for a teacher saved before
    files recorded them, from the config.json of the run beside it (labels: the label map, fixed since before
    teachers existed)."""
    if "preprocessing" in saved:
        return {"labels": list(saved["labels"]), "preprocessing": saved["preprocessing"]}
    config = path.parent / CONFIG_NAME
    try:
        preprocessing = json.loads(config.read_text(encoding="utf-8"))["preprocessing"]
    except (OSError, ValueError, KeyError, TypeError):
        raise VitdetectError(f"--teacher {path} records no image size, and there is no readable {CONFIG_NAME} of "
                             "its run beside it to tell") from None
    return {"labels": list(CLASS_NAMES), "preprocessing": preprocessing}


def describe(prep: Preprocessing) -> str:
    return (f"{prep.storage_size}x{prep.storage_size} images (model input {prep.image_size}x{prep.image_size}, "
            f"mean {list(prep.mean)}, std {list(prep.std)})")


def teacher_origin(output_dir: Path, settings: TrainSettings, prep: Preprocessing, resuming: bool) -> dict | None:
    """config.json's record of where a --distill run's teacher comes from: the file given to --teacher (its
    absolute path and SHA-256, so runs that shared a teacher can be told) or this run's own training. A given
    teacher is checked here, so a wrong one is refused before anything is trained."""
    if not settings.distill:
        return None
    if settings.teacher is None:
        return {"source": "trained by this run", "epochs": settings.teacher_epochs}
    kept = output_dir / TEACHER_NAME
    path = kept if resuming and kept.exists() else settings.teacher
    saved = checked_teacher(path, prep)
    return {"source": str(settings.teacher.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "epochs": saved.get("epochs")}


def training_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor | None,
                  settings: TrainSettings) -> torch.Tensor:
    """Per-sample training loss: cross-entropy (with --label-smoothing), mixed with the distillation term
    when a teacher scored the batch."""
    hard = F.cross_entropy(logits, targets, reduction="none", label_smoothing=settings.label_smoothing)
    if teacher_logits is None:
        return hard
    tau, alpha = settings.distill_temperature, settings.distill_alpha
    soft = F.kl_div(F.log_softmax(logits / tau, -1), F.log_softmax(teacher_logits.float() / tau, -1),
                    log_target=True, reduction="none").sum(-1) * tau * tau
    return (1 - alpha) * hard + alpha * soft
