"""The training loop, readable top to bottom: `train(settings)` locks the output folder, `run_training` trains.

One loop on Accelerate runs unchanged on the CPU, one GPU, MPS, or several processes under
`accelerate launch` / `torchrun`. Head-only training with the feature cache runs the frozen
backbone once per image view and then trains the classifier on the stored features.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vitdetect.config.settings import TrainMode, TrainSettings
from vitdetect.data.dataset import TensorBatches, keep_batch, load_split_reported, stratified_sample, stratified_split
from vitdetect.data.transforms import Preprocessing, build_augmentation, to_model_input
from vitdetect.errors import VitdetectError
from vitdetect.evaluation.calibration import TemperatureFit, after_training
from vitdetect.models.build import input_side, load_model, model_from_config, set_trainable
from vitdetect.models.checkpoint import load_checkpoint
from vitdetect.reports.metrics import epoch_metrics
from vitdetect.training.artifacts import (
    TrainState,
    prepare_output_dir,
    resolved_config,
    restore_training,
    resumed_step,
    save_best,
    save_last,
    write_config,
    write_history,
)
from vitdetect.training.distill import teacher_for, teacher_origin, training_loss
from vitdetect.training.features import extract_features, single_threaded
from vitdetect.training.interrupts import Interrupted, interruption_guard, interruption_message, saved_so_far
from vitdetect.training.optim import make_optimizer, make_scheduler
from vitdetect.utils import distributed, tracking
from vitdetect.utils.locking import output_lock
from vitdetect.utils.progress import Reporter


@dataclass
class TrainResult:
    output_dir: Path
    state: TrainState
    trainable: int
    total: int
    stopped_early: bool
    seconds: float
    calibration: TemperatureFit | None = None  # the temperature fitted on the validation split

    @property
    def best(self) -> dict[str, float]:
        return next(row for row in self.state.epochs if row["epoch"] == self.state.best_epoch)


def train(settings: TrainSettings, reporter: Reporter | None = None, resume: Path | None = None) -> TrainResult:
    """Train into settings.output_dir, holding its lock for the whole run; resume: a last.pth to continue.

    What `vitdetect train` runs. Run it in one process, or in each process of a `torchrun` / `accelerate launch`
    run: every process trains on its shard, and only the main one writes and prints.

    Args:
        settings: the run's settings; a `scratch:` preset in `model` brings its recipe for every setting not given.
        reporter: where progress and messages go; None: the console (quiet with `settings.quiet`).
        resume: a `last.pth` to continue, in its own folder with its saved settings.

    Returns:
        The run's folder, its epochs (`result.best`: the best epoch's row), parameter counts, time and the
            temperature fitted on the validation split.

    Raises:
        VitdetectError: bad data, a folder in use or already holding a run (without `settings.overwrite`),
            a failed write; `UsageError` for settings that cannot go together.

    Examples:
        >>> from vitdetect import TrainSettings, train
        >>> result = train(TrainSettings(data_dir="data/cifake", model="scratch:vit-tiny-32", epochs=3,
        ...                              output_dir="runs/tiny"))
        >>> result.best["val_accuracy"], result.output_dir / "best_model.pth"
    """
    resumed = load_checkpoint(resume, kind="last") if resume else None
    settings = tracking.with_run_name(settings, settings.output_dir)
    accelerator = make_accelerator(settings, resumed_step(resumed))
    reporter = reporter or Reporter(settings.quiet, enabled=accelerator.is_main_process)
    with output_lock(settings.output_dir, accelerator):
        prepare = functools.partial(prepare_output_dir, settings.output_dir, settings.overwrite, resume is not None)
        distributed.on_main_process(prepare, accelerator)
        return run_training(settings, accelerator, reporter, resume, resumed)


def run_training(settings: TrainSettings, accelerator, reporter: Reporter, resume: Path | None,
                 resumed: dict | None) -> TrainResult:
    from accelerate.utils import set_seed

    started = time.perf_counter()
    output_dir = settings.output_dir
    with accelerator.local_main_process_first():  # one decoder per machine; the others read its cache
        images = load_split_reported(settings.data_dir, "train", None, settings.cache_dir, output_dir, reporter)
    set_seed(settings.seed)
    if resumed:
        model = model_from_config(resumed["model_config"], resumed["state_dict"], source=resume)
        mean, std = resumed["preprocessing"]["mean"], resumed["preprocessing"]["std"]
    else:
        model, (mean, std) = load_model(settings.model)
    trainable, total = set_trainable(model, settings.train_mode, settings.last_blocks)
    reporter.info(f"model {settings.model}: trainable parameters {trainable:,} of {total:,}")

    prep = Preprocessing(input_side(model), int(images.images.shape[-1]), tuple(mean), tuple(std))
    train_idx, val_idx = stratified_split(images.labels, settings.val_fraction, settings.seed)
    if settings.max_images:
        train_idx = train_idx[stratified_sample(images.labels[train_idx], settings.max_images, settings.seed)]
    train_set, val_set = images.subset(train_idx), images.subset(val_idx)
    reporter.info(
        f"data {settings.data_dir}: {len(train_set):,} train / {len(val_set):,} validation images "
        f"at {prep.storage_size}x{prep.storage_size}, model input {prep.image_size}x{prep.image_size}; "
        f"{accelerator.num_processes} process(es) x batch {settings.batch_size} = "
        f"{accelerator.num_processes * settings.batch_size} images per step on {accelerator.device}"
    )
    teacher_source = teacher_origin(output_dir, settings, prep, resuming=resumed is not None)
    config = resolved_config(settings, prep, trainable, total, accelerator.num_processes, teacher_source)
    if accelerator.is_main_process:
        write_config(output_dir, config)

    model.to(accelerator.device)
    augmentation = training_augmentation(settings, prep.storage_size)
    teacher = (teacher_for(output_dir, train_set, prep, settings, reporter, accelerator, resuming=resumed is not None)
               if settings.distill else None)
    use_features = settings.train_mode == TrainMode.head and settings.feature_cache
    if use_features:
        # Building a fresh model and rebuilding a resumed one draw different amounts of randomness:
        # reseed so the augmented views, and so a resumed run, do not depend on which happened.
        set_seed(settings.seed, device_specific=True)
        views = settings.feature_views if augmentation is not None else 1
        train_inputs = extract_features(model, train_set.images, prep, augmentation, views, settings, accelerator,
                                        reporter, "features (train)")
        val_inputs = extract_features(model, val_set.images, prep, None, 1, settings, accelerator, reporter,
                                      "features (validation)")
        trained_module: torch.nn.Module = model.classifier
    else:
        train_inputs, val_inputs = train_set.images, val_set.images
        trained_module = model
    if settings.compile:
        trained_module = torch.compile(trained_module)

    train_loader = make_loader(train_inputs, train_set.labels, settings, accelerator, shuffle=True)
    val_loader = make_loader(val_inputs, val_set.labels, settings, accelerator, shuffle=False)
    optimizer = make_optimizer(trained_module, settings)
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch=math.ceil(len(train_loader)))
    trained_module, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        trained_module, optimizer, train_loader, val_loader, scheduler
    )

    state = TrainState()
    if resumed:
        state = restore_training(resumed, optimizer, scheduler, accelerator)
        reporter.info(f"resuming after epoch {state.epoch} from {resume}")
    tracker = tracking.TrainingRun(accelerator, settings, config, resumed and resumed["settings"])

    def log_batch(row: dict[str, float]) -> None:
        state.batches.append(row)
        tracker.log_batch(row, state.global_step + row["step"])

    def forward(inputs: torch.Tensor, training: bool, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's logits, and the teacher's on the same (augmented) batch when distilling."""
        if use_features:
            features = inputs[:, (epoch - 1) % inputs.shape[1]] if inputs.ndim == 3 else inputs
            return trained_module(features), None
        pixels = to_model_input(inputs, prep, augmentation if training else None)
        with torch.no_grad():
            teacher_logits = teacher(pixels) if training and teacher is not None else None
        return trained_module(pixel_values=pixels).logits, teacher_logits

    stopped_early = False
    with tracker, reporter.bars(), interruption_guard() as interrupted, single_threaded(
        use_features and accelerator.device.type == "cpu"
    ), reporter.task("epochs", settings.epochs, unit="epoch", transient=True) as epoch_bar:
        epoch_bar.advance(state.epoch)
        for epoch in range(state.epoch + 1, settings.epochs + 1):
            set_seed(settings.seed + epoch, device_specific=True)
            train_loader.set_epoch(epoch)
            epoch_started = time.perf_counter()
            trained_module.train()
            if settings.train_mode == TrainMode.head and not use_features:
                model.vit.eval()  # a frozen backbone stays in inference mode (dropout off)
            train_metrics = run_epoch(
                functools.partial(forward, training=True, epoch=epoch), train_loader, accelerator, reporter,
                settings, epoch, interrupted, optimizer=optimizer, scheduler=scheduler, log_batch=log_batch,
                params=trained_module.parameters,
            )
            trained_module.eval()
            with torch.inference_mode():
                val_metrics = run_epoch(functools.partial(forward, training=False, epoch=epoch), val_loader,
                                        accelerator, reporter, settings, epoch, interrupted)
            seconds = time.perf_counter() - epoch_started
            state.epochs.append(
                {"epoch": epoch, **{f"train_{k}": v for k, v in train_metrics.items()},
                 **{f"val_{k}": v for k, v in val_metrics.items()},
                 "lr": scheduler.get_last_lr()[0], "seconds": seconds}
            )
            state.epoch, state.global_step = epoch, state.global_step + len(train_loader)
            if val_metrics["loss"] < state.best_val_loss:
                state.best_val_loss, state.best_epoch, state.bad_epochs = val_metrics["loss"], epoch, 0
                if accelerator.is_main_process:
                    save_best(output_dir, model, settings, prep, epoch, val_metrics)
            else:
                state.bad_epochs += 1
            if accelerator.is_main_process:
                save_last(output_dir, model, settings, prep, state, optimizer, scheduler, accelerator)
                write_history(output_dir, state)
            tracker.log_epoch(state.epochs[-1], state.global_step)
            accelerator.wait_for_everyone()
            epoch_bar.advance(1, val_loss=val_metrics["loss"], val_acc=val_metrics["accuracy"])
            reporter.info(epoch_line(state.epochs[-1], settings.epochs))
            if state.bad_epochs >= settings.patience:
                stopped_early = True
                reporter.info(f"early stopping: no better validation loss for {settings.patience} epochs")
                break
        calibration = after_training(output_dir, val_set, settings, accelerator, reporter)
        figures = write_training_figures(output_dir) if accelerator.is_main_process else []
        tracker.log_summary(state, stopped_early, figures)
    return TrainResult(output_dir, state, trainable, total, stopped_early, time.perf_counter() - started,
                       calibration)


def make_accelerator(settings: TrainSettings, resumed_step: int | None = None):
    from accelerate.utils import DataLoaderConfiguration

    return distributed.make_accelerator(
        settings.cpu, settings.mixed_precision,
        # data_seed: every process shuffles the same way, so their shards of an epoch do not overlap
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=settings.seed,
                                                  non_blocking=True),
        **tracking.training_options(settings, resumed_step),
    )


def write_training_figures(output_dir: Path) -> list[Path]:
    from vitdetect.reports.plots import training_figures

    return training_figures(output_dir).written


def make_loader(inputs: torch.Tensor, labels: torch.Tensor, settings: TrainSettings, accelerator, shuffle: bool):
    generator = torch.Generator().manual_seed(settings.seed)
    on_cpu = inputs.device.type == "cpu"
    return torch.utils.data.DataLoader(
        TensorBatches(inputs, labels.to(inputs.device)),
        batch_size=settings.batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=keep_batch,
        num_workers=settings.num_workers if on_cpu else 0,
        persistent_workers=settings.num_workers > 0 and on_cpu,
        pin_memory=on_cpu and accelerator.device.type == "cuda",
    )


def run_epoch(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    loader,
    accelerator,
    reporter: Reporter,
    settings: TrainSettings,
    epoch: int,
    interrupted: Callable[[], int],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    log_batch: Callable[[dict[str, float]], None] | None = None,
    params: Callable[[], Iterator[torch.nn.Parameter]] | None = None,
) -> dict[str, float]:
    """One pass over loader; trains when an optimizer is given. Metrics over all processes' samples."""
    training = optimizer is not None
    losses, predictions, labels = [], [], []
    name = "train" if training else "validate"
    with reporter.task(f"epoch {epoch} {name}", len(loader.dataset), transient=True) as bar:
        for step, (inputs, targets) in enumerate(loader, start=1):
            if signum := distributed.agreed_signal(interrupted(), accelerator):
                raise Interrupted(interruption_message(signum, epoch, settings.output_dir), 128 + signum)
            with accelerator.autocast():
                logits, teacher_logits = forward(inputs)
            if training:
                sample_losses = training_loss(logits.float(), targets, teacher_logits, settings)
            else:
                sample_losses = F.cross_entropy(logits.float(), targets, reduction="none")
            if training:
                accelerator.backward(sample_losses.mean())
                if settings.grad_clip > 0:
                    accelerator.clip_grad_norm_(params(), settings.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            gathered = accelerator.gather_for_metrics((sample_losses.detach(), logits.argmax(-1), targets))
            if not torch.isfinite(gathered[0]).all():
                raise VitdetectError(f"non-finite loss at epoch {epoch}, batch {step} ({name}); training stopped, "
                                     f"{saved_so_far(epoch, settings.output_dir)} (try a lower --lr)")
            for store, values in zip((losses, predictions, labels), gathered, strict=True):
                store.append(values.cpu())
            batch_loss = gathered[0].mean().item()
            batch_acc = (gathered[1] == gathered[2]).float().mean().item()
            if log_batch is not None and (step % settings.log_every == 0 or step == 1):
                log_batch({"epoch": epoch, "step": step, "loss": batch_loss, "accuracy": batch_acc})
            bar.advance(len(gathered[0]), loss=batch_loss, acc=batch_acc)
    return epoch_metrics(*(torch.cat(store).numpy() for store in (labels, predictions, losses)))


def epoch_line(row: dict[str, float], epochs: int) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
        f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} f1 {row['val_f1']:.4f} "
        f"({row['seconds']:.1f}s)"
    )


def training_augmentation(settings: TrainSettings, storage_size: int) -> torch.nn.Module | None:
    """The augmentation a training run's settings ask for; None with --no-augment."""
    if not settings.augment:
        return None
    return build_augmentation(settings.rotation_degrees, settings.color_jitter, settings.crop_padding, storage_size,
                              jpeg=settings.augment_jpeg, jpeg_quality=settings.augment_jpeg_quality,
                              blur=settings.augment_blur, blur_sigma=settings.augment_blur_sigma,
                              downscale=settings.augment_downscale, downscale_factor=settings.augment_downscale_factor)
