"""Judging new images: `Detector`, the Python API that `vitdetect predict` is built on.

    detector = Detector.from_checkpoint("results/best_model.pth")
    for result in detector.predict(["photo.jpg", "render.png"]):
        print(result.path, result.label, result.p_fake)

Images go through the one decoder (`images.decode_rgb`) and the scoring `evaluate` uses
(`inference.fake_probabilities`), so an image gets the same P(FAKE) here as in predictions.csv.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from rich.table import Table
from rich.text import Text

from vitdetect.atomic import atomic_write_text
from vitdetect.data import decode_images
from vitdetect.distributed import make_accelerator
from vitdetect.errors import UsageError, VitdetectError
from vitdetect.images import IMAGE_EXTENSIONS, is_image_path
from vitdetect.inference import TrainedModel, fake_probabilities
from vitdetect.labels import ID2LABEL, POSITIVE_CLASS
from vitdetect.metrics import classify
from vitdetect.progress import Reporter
from vitdetect.settings import OutputFormat, PredictSettings

ImageSource = str | Path | bytes | Image.Image
FIELDS = ("path", "label", "p_fake", "confidence", "error")
JSON_SUFFIXES = frozenset({".json", ".jsonl", ".ndjson"})
DEFAULT_CHUNK = 512  # images decoded and held at once: flat memory on huge folders, a lively bar


@dataclass(frozen=True)
class Prediction:
    """The verdict on one image, or why there is none (error)."""

    path: str
    label: str | None = None  # "REAL" or "FAKE"
    p_fake: float | None = None
    confidence: float | None = None  # the probability of the predicted label
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Detector:
    """A trained checkpoint ready to judge images: paths, raw bytes or PIL images."""

    def __init__(
        self,
        trained: TrainedModel,
        threshold: float | None = None,
        batch_size: int = PredictSettings.model_fields["batch_size"].default,
        accelerator=None,
        reporter: Reporter | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ):
        self.trained = trained
        self.threshold = trained.threshold if threshold is None else float(threshold)
        self.batch_size = batch_size
        self.accelerator = accelerator or make_accelerator()
        self.reporter = reporter or Reporter(quiet=True)
        self.chunk_size = max(1, chunk_size // batch_size) * batch_size  # whole batches per chunk
        # Decodes the next chunk while one is scored; kept for the Detector's life, as a thread started per
        # call cost a server's small calls more than their decoding.
        self.prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitdetect-prefetch")

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options) -> Detector:
        """Load best_model.pth (or any vitdetect checkpoint); options as for Detector()."""
        path = Path(path)
        if not path.exists():
            raise UsageError(f"checkpoint not found: {path} (train one with `vitdetect train`)")
        return cls(TrainedModel.load(path), **options)

    def predict(self, images: Iterable[ImageSource]) -> list[Prediction]:
        """One Prediction per image, in order; images that cannot be decoded get an error instead.

        Chunks are decoded in parallel threads while the previous chunk is being scored.
        """
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
                results.extend(self._judge(names[chunk], *decoded))
                bar.advance(len(names[chunk]))
        return results

    def _decode(self, sources: list[ImageSource]) -> tuple[torch.Tensor, list[int], list[str]]:
        images, kept, failures = decode_images(sources, self.trained.prep.storage_size)
        return images, kept, [reason for _, reason in failures]

    def _judge(self, names: list[str], images: torch.Tensor, kept: list[int], reasons: list[str]):
        scores = fake_probabilities(self.trained, images, self.batch_size, self.accelerator) if kept else []
        judged = dict(zip(kept, zip(scores, classify(scores, self.threshold), strict=True), strict=True))
        failed = iter(reasons)  # failures come in input order, like kept
        return [_verdict(name, *judged[index]) if index in judged else Prediction(name, error=next(failed))
                for index, name in enumerate(names)]


def _verdict(path: str, p_fake: float, fake: int) -> Prediction:
    p_fake = float(p_fake)
    return Prediction(path, ID2LABEL[int(fake)], p_fake, p_fake if fake else 1.0 - p_fake)


def _name(source: ImageSource, index: int) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, bytes):
        return f"<bytes #{index}>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or f"<image #{index}>"
    raise TypeError(f"cannot judge a {type(source).__name__}: pass a path, bytes or a PIL image")


@dataclass
class FoundImages:
    """The files to judge, and the files the given folders hold that are not images."""

    paths: list[Path]
    ignored: list[Path] = field(default_factory=list)


def find_images(patterns: Sequence[str | Path], recursive: bool = False) -> FoundImages:
    """Expand files, folders (images directly inside; all below with recursive) and glob patterns.

    A file named explicitly is judged whatever its name; in folders and glob matches only files with
    an image extension are, and hidden files (.DS_Store, macOS ._ copies) are skipped.
    """
    if not patterns:
        raise UsageError("no images given: pass files, folders or glob patterns (vitdetect predict PATH...)")
    found = FoundImages([])
    for pattern in map(Path, patterns):
        if pattern.is_file():
            found.paths.append(pattern)
            continue
        for match in [pattern] if pattern.is_dir() else _glob(str(pattern)):
            for path in _folder_files(match, recursive) if match.is_dir() else [match]:
                (found.paths if is_image_path(path) else found.ignored).append(path)
    found.paths = list(dict.fromkeys(found.paths))
    if not found.paths:
        raise UsageError(f"no images found in {', '.join(map(str, patterns))} (looked for "
                         f"{', '.join(sorted(ext.lstrip('.') for ext in IMAGE_EXTENSIONS))}"
                         f"{'' if recursive else '; add --recursive for sub-folders'})")
    return found


def _glob(pattern: str) -> list[Path]:
    matches = sorted(map(Path, glob.glob(pattern, recursive=True)))
    if not matches:
        raise UsageError(f"no such file or folder, and no glob match: {pattern}")
    return matches


def _folder_files(folder: Path, recursive: bool) -> list[Path]:
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files.extend(Path(root, name) for name in names if not name.startswith("."))
    return sorted(files)


def render(results: Sequence[Prediction], fmt: str) -> str:
    """The results as CSV (header + one row per image) or JSON lines."""
    if fmt == OutputFormat.json:
        return "".join(json.dumps(asdict(result)) + "\n" for result in results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(result) for result in results)
    return buffer.getvalue()


def results_table(results: Sequence[Prediction], threshold: float) -> Table:
    failed = any(not result.ok for result in results)
    title = f"{len(results):,} image(s), FAKE when P(FAKE) >= {threshold:g}"
    table = Table(title=title, title_justify="left")
    table.add_column("path", overflow="fold")  # long paths wrap rather than lose their end
    for name, justify in (("label", "left"), ("P(FAKE)", "right"), ("confidence", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    if failed:
        table.add_column("error", overflow="fold")
    for result in results:
        if result.ok:
            colour = "red" if result.label == POSITIVE_CLASS else "green"
            row = [Text(result.path), Text(result.label, style=colour), f"{result.p_fake:.4f}",
                   f"{result.confidence:.1%}"]
        else:
            row = [Text(result.path), Text("error", style="bold red"), "-", "-", Text(result.error)]
        table.add_row(*row, *([""] if failed and result.ok else []))
    return table


def output_format(settings: PredictSettings) -> str:
    """--output gets --format, or for table the format its suffix names (JSON lines or CSV)."""
    if settings.format != OutputFormat.table:
        return settings.format
    suffix = settings.output.suffix.lower() if settings.output else ""
    return OutputFormat.json if suffix in JSON_SUFFIXES else OutputFormat.csv


def check_output(path: Path) -> None:
    """Fail before any work when --output cannot be written."""
    if path.is_dir():
        raise UsageError(f"--output is a folder, not a file: {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the folder for --output {path}: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"cannot write --output {path}: its folder is not writable")


@dataclass
class PredictRun:
    results: list[Prediction]
    threshold: float
    main_process: bool

    @property
    def failed(self) -> int:
        return sum(not result.ok for result in self.results)


def run(settings: PredictSettings, patterns: Sequence[str], reporter: Reporter | None = None) -> PredictRun:
    """`vitdetect predict`: find the images, judge them, write --output; the caller prints."""
    found = find_images(patterns, settings.recursive)
    if settings.output:
        check_output(settings.output)
    accelerator = make_accelerator(cpu=settings.cpu)
    reporter = reporter or Reporter(settings.quiet, enabled=accelerator.is_main_process)
    if found.ignored:
        examples = ", ".join(path.name for path in found.ignored[:3])
        reporter.info(f"ignored {len(found.ignored)} file(s) without an image extension ({examples}"
                      f"{', ...' if len(found.ignored) > 3 else ''})")
    detector = Detector.from_checkpoint(settings.checkpoint, threshold=settings.threshold,
                                        batch_size=settings.batch_size, accelerator=accelerator,
                                        reporter=reporter)
    results = detector.predict(found.paths)
    if settings.output and accelerator.is_main_process:
        try:
            atomic_write_text(settings.output, render(results, output_format(settings)))
        except OSError as exc:
            raise VitdetectError(f"cannot write --output {settings.output}: {exc.strerror or exc}") from None
    reporter.info(summary_line(results))
    return PredictRun(results, detector.threshold, accelerator.is_main_process)


def summary_line(results: Sequence[Prediction]) -> str:
    labels = [result.label for result in results if result.ok]
    fake = labels.count(POSITIVE_CLASS)
    failed = len(results) - len(labels)
    return (f"judged {len(labels):,} of {len(results):,} image(s): {fake:,} FAKE, {len(labels) - fake:,} REAL"
            + (f"; {failed:,} could not be read (error rows)" if failed else ""))

