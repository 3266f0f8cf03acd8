"""Judging new images: `Detector`, the Python API that `vitdetect predict` is built on.

    detector = Detector.from_checkpoint("results/best_model.pth")   # or Detector.from_onnx("model.onnx")
    for result in detector.predict(["photo.jpg", "render.png"]):
        print(result.path, result.label, result.p_fake)

Images go through the one decoder (`data.decode`) and the scoring `evaluate` uses
(`inference.scoring.fake_probabilities`), so an image gets the same P(FAKE) here as in predictions.csv. An
exported ONNX file runs in ONNX Runtime after the same decoder and `data.transforms.to_model_input`.

A detector may also say it does not know (`UnsureRule`): UNSURE when its confidence is low, or when a mild
everyday edit of the image (a JPEG re-save, a slight blur, a down-scale) would change its verdict; a verdict that
a re-save flips says more about the file than about the image.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from vitdetect.config.labels import ID2LABEL, UNSURE
from vitdetect.config.run_files import BEST_NAME, DEFAULT_RUN_DIR
from vitdetect.data.dataset import decode_images
from vitdetect.data.decode import open_image
from vitdetect.data.perturbations import STABILITY_EDITS, Perturbation
from vitdetect.errors import UsageError
from vitdetect.inference.explain import as_picture, check_method, default_method, explain_images
from vitdetect.inference.onnx import OnnxModel
from vitdetect.inference.scoring import TrainedModel, fake_probabilities
from vitdetect.models.builtin import BUILTIN, resolve_checkpoint
from vitdetect.reports.metrics import classify, confidence
from vitdetect.reports.overlays import Explained
from vitdetect.utils.distributed import make_accelerator
from vitdetect.utils.progress import Reporter

ImageSource = str | Path | bytes | Image.Image
# An image resized by more than this factor to the stored size is far from what the model was trained on.
FAR_FROM_TRAINING_SCALE = 2.0
DEFAULT_CHUNK = 512  # images decoded and held at once: flat memory on huge folders, a lively bar
DEFAULT_BATCH = 64  # images per forward pass


@dataclass(frozen=True)
class Prediction:
    """The verdict on one image, or why there is none (error).

    Attributes:
        path: the file's path as given; `<bytes #i>` or `<image #i>` for raw bytes and PIL images.
        label: "REAL", "FAKE", or "UNSURE" (see UnsureRule and reason); None when the image could not be judged.
        p_fake: P(FAKE), calibrated with the checkpoint's temperature; the image is FAKE when it is >= the threshold.
        confidence: the probability of the predicted label (p_fake for FAKE, 1 - p_fake for REAL).
        error: why the image could not be judged (unreadable, not an image, ...); None when it was.
        note: why the verdict deserves caution, e.g. an image resized by more than 2x to the model's size.
    """

    path: str
    label: str | None = None  # "REAL", "FAKE", or "UNSURE" when the detector's UnsureRule abstains
    p_fake: float | None = None
    confidence: float | None = None  # the probability of the label P(FAKE) and the threshold give (REAL or FAKE)
    error: str | None = None
    note: str | None = None  # why this verdict deserves caution (e.g. an image far from the training size)
    reason: str | None = None  # why the label is UNSURE: the low confidence, or the edit that changed the verdict

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class UnsureRule:
    """When a verdict is UNSURE instead of REAL or FAKE; the defaults never abstain (every image gets a verdict).

    Args:
        min_confidence: UNSURE when the calibrated probability of the predicted label is below it.
        check_stability: also score each image after each of `perturbations.STABILITY_EDITS` (JPEG quality 75,
            Gaussian blur sigma 0.5, down-scale to 1/2 and back, on the decoded image at the stored size, as in
            `evaluate --robustness`); UNSURE when one of them changes the verdict. Scoring costs 4 times as much.
    """

    min_confidence: float = 0.0
    check_stability: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:  # NaN fails too
            raise UsageError(f"min_confidence must be between 0 and 1 (got {self.min_confidence!r})")


class Detector:
    """A trained checkpoint (or an exported ONNX file) ready to judge images: paths, raw bytes or PIL images.

    The object `vitdetect predict` and `vitdetect serve` are built on. It owns a thread that decodes the next
    chunk of images while one is scored: use it as a context manager, or call close(), to stop that thread.

    Args:
        trained: the model, from `TrainedModel.load` or `OnnxModel.load` (or use from_checkpoint / from_onnx).
        threshold: FAKE when P(FAKE) >= threshold; None: the checkpoint's own (0.5 unless evaluate set one).
        batch_size: images per forward pass.
        accelerator: an Accelerate `Accelerator` (device, processes); None: one for this machine.
        reporter: where progress goes; None: silent.
        chunk_size: images decoded and held in memory at once.
        min_confidence: UNSURE when the probability of the predicted label is below it (see `UnsureRule`); by
            default never.
        check_stability: UNSURE when a mild everyday edit changes the verdict (see `UnsureRule`).

    Examples:
        >>> from vitdetect import Detector
        >>> with Detector.from_checkpoint("builtin", batch_size=32) as detector:  # two CIFAKE test images
        ...     verdicts = detector.predict(["test/REAL/0000 (10).jpg", "test/FAKE/0 (2).jpg"])
        >>> [(v.label, round(v.p_fake, 4)) for v in verdicts]
        [('REAL', 0.0003), ('FAKE', 0.9774)]
    """

    def __init__(
        self,
        trained: TrainedModel | OnnxModel,
        threshold: float | None = None,
        batch_size: int = DEFAULT_BATCH,
        accelerator=None,
        reporter: Reporter | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        min_confidence: float = 0.0,
        check_stability: bool = False,
    ):
        self.trained = trained
        self.unsure = UnsureRule(min_confidence, check_stability)
        self.threshold = trained.threshold if threshold is None else float(threshold)
        self.batch_size = batch_size
        self.accelerator = accelerator or make_accelerator()
        self.reporter = reporter or Reporter(quiet=True)
        self.chunk_size = max(1, chunk_size // batch_size) * batch_size  # whole batches per chunk
        # Decodes the next chunk while one is scored; kept for the Detector's life, as a thread started per
        # call cost a server's small calls more than their decoding.
        self.prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitdetect-prefetch")

    def close(self) -> None:
        """Stop the decoding thread; the Detector cannot judge afterwards."""
        self.prefetch.shutdown(wait=True)

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options) -> Detector:
        """Load best_model.pth (or any vitdetect checkpoint); options as for Detector()."""
        path = resolve_checkpoint(path)
        if not path.exists():
            raise UsageError(f"checkpoint not found: {path} (train one with `vitdetect train`)")
        return cls(TrainedModel.load(path), **options)

    @classmethod
    def from_onnx(cls, path: str | Path, cpu: bool = False, threads: int | None = None, **options) -> Detector:
        """Load a file written by `vitdetect export --format onnx` (fp32 or int8) into ONNX Runtime; threads: its
        intra-op threads (None: torch's count); options as for Detector()."""
        return cls(OnnxModel.load(path, cpu=cpu, threads=threads), **options)

    @classmethod
    def load(cls, checkpoint: str | Path, backend: str = "torch", cpu: bool = False, **options) -> Detector:
        """A checkpoint with PyTorch, or an exported file with ONNX Runtime (backend "onnx"): what predict and serve
        open. An .onnx file given to the torch backend is refused with the flag that runs it."""
        if backend == "onnx":
            return cls.from_onnx(checkpoint, cpu=cpu, **options)
        if Path(checkpoint).suffix.lower() == ".onnx":
            raise UsageError(f"{checkpoint} is an ONNX file: add --backend onnx to run it with ONNX Runtime")
        return cls.from_checkpoint(checkpoint, **options)

    def predict(self, images: Iterable[ImageSource], unsure: UnsureRule | None = None) -> list[Prediction]:
        """One Prediction per image, in order; images that cannot be decoded get an error instead.

        unsure: when to answer UNSURE for these images; None: the detector's own rule (the server takes each
        request's). Chunks are decoded in parallel threads while the previous chunk is being scored.
        """
        unsure = unsure or self.unsure
        sources = list(images)
        names = [_name(source, index) for index, source in enumerate(sources)]
        chunks = [slice(start, start + self.chunk_size) for start in range(0, len(sources), self.chunk_size)]
        reporter = self.reporter if len(sources) > self.reporter.console.height else Reporter(quiet=True)
        results: list[Prediction] = []
        with reporter.task("judging", len(sources)) as bar:
            pending = self.prefetch.submit(self._decode, sources[chunks[0]]) if chunks else None
            for number, chunk in enumerate(chunks):
                decoded = pending.result()
                if number + 1 < len(chunks):
                    pending = self.prefetch.submit(self._decode, sources[chunks[number + 1]])
                results.extend(self._judge(names[chunk], *decoded, unsure))
                bar.advance(len(names[chunk]))
        return results

    def explain(self, images: Iterable[ImageSource], method: str | None = None) -> list[np.ndarray | None]:
        """One HxW float heatmap per image (H, W: the stored image size), in order; None where an image
        cannot be decoded. method: "rollout" (attention rollout), "gradcam" or "occlusion"; default: rollout for a
        ViT, occlusion for a model without [CLS] token (see vitdetect.inference.explain)."""
        return [None if item is None else item.heatmap for item in self.explained(images, method)]

    def explained(self, images: Iterable[ImageSource], method: str | None = None) -> list[Explained | None]:
        """Each image as the model sees it, with its verdict and heatmap; None where it cannot be decoded.
        Runs in this process alone (no gathering), so the main process of a distributed run may call it."""
        method = self.explanation_method(method)
        sources = list(images)
        names = [_name(source, index) for index, source in enumerate(sources)]
        decoded, kept, _, _ = self._decode(sources)
        found = explain_images(self.trained, decoded, method, self.threshold, self.accelerator.device, self.batch_size)
        items = {index: Explained(as_picture(image), heat, float(p), ID2LABEL[int(p >= self.threshold)],
                                  Path(names[index]).name)
                 for index, image, heat, p in zip(kept, decoded, found.heatmaps, found.p_fake, strict=True)}
        return [items.get(index) for index in range(len(sources))]

    def explanation_method(self, method: str | None = None) -> str:
        """method, or this model's own when None (rollout for a ViT, occlusion without [CLS] token)."""
        if isinstance(self.trained, OnnxModel):
            raise UsageError("explanations need the PyTorch checkpoint: an ONNX file has no attention to read")
        return method or default_method(self.trained.model)

    def explanations_unavailable(self) -> str | None:
        """Why explain() with the model's own method cannot run here (one line), or None when it can."""
        try:
            check_method(self.explanation_method())
        except UsageError as exc:
            return str(exc)
        return None

    def _decode(self, sources: list[ImageSource]) -> tuple[torch.Tensor, list[int], list[str], list[str | None]]:
        images, kept, failures = decode_images(sources, self.trained.prep.storage_size)
        notes = [scale_note(sources[index], self.trained.prep.storage_size) for index in kept]
        return images, kept, [reason for _, reason in failures], notes

    def _judge(self, names: list[str], images: torch.Tensor, kept: list[int], reasons: list[str],
               notes: list[str | None], unsure: UnsureRule):
        scores = self.probabilities(images) if kept else np.empty(0)
        edited = ({edit: self.probabilities(edit(images, seed=0)) for edit in STABILITY_EDITS}
                  if unsure.check_stability and kept else {})
        verdicts = decide(scores, edited, self.threshold, unsure)
        judged = {index: Prediction(names[index], verdict.label, float(p_fake), verdict.confidence, note=note,
                                    reason=verdict.reason)
                  for index, p_fake, verdict, note in zip(kept, scores, verdicts, notes, strict=True)}
        failed = iter(reasons)  # failures come in input order, like kept
        return [judged.get(index) or Prediction(name, error=next(failed)) for index, name in enumerate(names)]

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """P(FAKE) of Nx3xSxS uint8 images already decoded (S: trained.prep.storage_size), in order: the scoring
        alone, with whichever backend this Detector runs."""
        if isinstance(self.trained, OnnxModel):
            return self.trained.fake_probabilities(images, self.batch_size)
        return fake_probabilities(self.trained, images, self.batch_size, self.accelerator)


class Verdict(NamedTuple):
    label: str
    confidence: float
    reason: str | None


def decide(p_fake: np.ndarray, edited: dict[Perturbation, np.ndarray], threshold: float,
           unsure: UnsureRule) -> list[Verdict]:
    """The verdict of each image: REAL or FAKE by the threshold, or UNSURE with the reason when
    the confidence is below unsure.min_confidence or an edit (edited: its P(FAKE) per image) changes the verdict."""
    labels, sure = classify(p_fake, threshold), confidence(p_fake, threshold)
    changed = {edit: classify(scores, threshold) != labels for edit, scores in edited.items()}
    decided = []
    for index, (label, certainty) in enumerate(zip(labels, sure, strict=True)):
        why = ([f"confidence {certainty:.1%} is below {unsure.min_confidence * 100:g}%"]
               if certainty < unsure.min_confidence else [])
        why += [f"{edit.name} ({edit.family_title}, {edit.parameter}) turns it {ID2LABEL[1 - int(label)]}: "
                f"P(FAKE) {p_fake[index]:.3f} -> {edited[edit][index]:.3f}"
                for edit, flips in changed.items() if flips[index]]
        decided.append(Verdict(UNSURE if why else ID2LABEL[int(label)], float(certainty), "; ".join(why) or None))
    return decided


def scale_note(source: ImageSource, trained_size: int) -> str | None:
    """A caution when the image is resized by more than FAR_FROM_TRAINING_SCALE to reach the trained size."""
    try:
        if isinstance(source, Image.Image):
            width, height = source.size
        else:
            with open_image(source) as image:  # header only
                width, height = image.size
    except Exception:  # noqa: BLE001 - it decoded once already; a second look failing only loses the note
        return None
    scale = max(width, height) / trained_size
    if 1 / FAR_FROM_TRAINING_SCALE <= scale <= FAR_FROM_TRAINING_SCALE:
        return None
    return (f"resized from {width}x{height} to {trained_size}x{trained_size}: far from the images the model was "
            "trained on, treat this verdict with caution")


def _name(source: ImageSource, index: int) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, bytes):
        return f"<bytes #{index}>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or f"<image #{index}>"
    raise TypeError(f"cannot judge a {type(source).__name__}: pass a path, bytes or a PIL image")


def default_checkpoint() -> Path | str:
    """results/best_model.pth when a run left one here, else the built-in detector."""
    trained_here = DEFAULT_RUN_DIR / BEST_NAME
    return trained_here if trained_here.exists() else BUILTIN
