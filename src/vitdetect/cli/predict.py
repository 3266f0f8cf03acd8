"""`vitdetect predict`: find the images, judge them with a `Detector`, and show the verdicts: a rich table, CSV or
JSON lines, the summary line, and --explain's overlays.

torch is imported only when a command runs (through `vitdetect.inference`), so `--help` stays instant.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from vitdetect.cli.summaries import stdout
from vitdetect.cli.support import described, user_errors
from vitdetect.config.commands import Backend, ExplainMethod, OutputFormat, PredictSettings
from vitdetect.config.labels import POSITIVE_CLASS, UNSURE
from vitdetect.config.settings import build_settings
from vitdetect.errors import UsageError, VitdetectError
from vitdetect.utils.atomic import atomic_write_text, ensure_writable_parent
from vitdetect.utils.progress import Reporter

if TYPE_CHECKING:
    from vitdetect.inference.detector import Detector, Prediction


@user_errors
def predict(
    paths: list[str] = typer.Argument(None, show_default=False,
                                      help="Image files, folders and glob patterns (quoted: 'shots/*.png')."),
    checkpoint: Path = described(PredictSettings, "checkpoint", "--checkpoint"),
    backend: Backend = described(PredictSettings, "backend", "--backend"),
    threshold: float = described(PredictSettings, "threshold", "--threshold"),
    format: OutputFormat = described(PredictSettings, "format", "--format"),
    output: Path = described(PredictSettings, "output", "--output", "-o"),
    batch_size: int = described(PredictSettings, "batch_size", "--batch-size", "--batch_size"),
    recursive: bool = described(PredictSettings, "recursive", "--recursive/--no-recursive", "-r"),
    min_confidence: float = described(PredictSettings, "min_confidence", "--min-confidence"),
    check_stability: bool = described(PredictSettings, "check_stability", "--check-stability/--no-check-stability"),
    explain: Path = described(PredictSettings, "explain", "--explain"),
    explain_method: ExplainMethod | None = described(PredictSettings, "explain_method", "--explain-method"),
    cpu: bool = described(PredictSettings, "cpu", "--cpu/--no-cpu"),
    threads: int = described(PredictSettings, "threads", "--threads"),
    quiet: bool = described(PredictSettings, "quiet", "--quiet/--no-quiet", "-q"),
) -> None:
    """Judge images: REAL or FAKE with P(FAKE) (or UNSURE, with --min-confidence or --check-stability). Exit code 0:
    all judged, 1: some unreadable, 2: bad usage."""
    flags = {k: v for k, v in locals().items() if k != "paths"}
    settings = build_settings(PredictSettings, None, **flags)
    result = run(settings, paths or [])
    if result.main_process:
        if settings.format == OutputFormat.table:
            stdout.print(results_table(result.results, result.threshold, settings.min_confidence))
        else:
            typer.echo(render(result.results, settings.format), nl=False)
    if result.failed:
        raise typer.Exit(1)


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
    from vitdetect.data.files import find_images
    from vitdetect.inference.detector import Detector, default_checkpoint
    from vitdetect.inference.explain import check_method
    from vitdetect.models.builtin import announcement, is_builtin
    from vitdetect.utils.distributed import make_accelerator, use_threads

    found = find_images(patterns, settings.recursive)
    if settings.output:
        check_output(settings.output)
    accelerator = make_accelerator(cpu=settings.cpu)
    reporter = reporter or Reporter(settings.quiet, enabled=accelerator.is_main_process)
    if found.ignored:
        examples = ", ".join(path.name for path in found.ignored[:3])
        reporter.info(f"ignored {len(found.ignored)} file(s) without an image extension ({examples}"
                      f"{', ...' if len(found.ignored) > 3 else ''})")
    options = dict(threshold=settings.threshold, batch_size=settings.batch_size, accelerator=accelerator,
                   reporter=reporter, min_confidence=settings.min_confidence, check_stability=settings.check_stability)
    checkpoint = settings.checkpoint or default_checkpoint()
    if is_builtin(checkpoint) and settings.checkpoint is None and settings.backend == Backend.torch:
        reporter.info(announcement())
    use_threads(settings.threads)
    detector = Detector.load(checkpoint, settings.backend, settings.cpu, **options)
    if settings.explain:
        method = detector.explanation_method(settings.explain_method)
        check_method(method)  # the model's own method may need grad-cam or captum: fail before judging
    results = detector.predict(found.paths)
    if settings.explain and accelerator.is_main_process:
        written = write_explanations(detector, found.paths, settings.explain, method)
        reporter.info(f"wrote {written:,} explanation(s) ({method}) to {settings.explain}")
    if settings.output and accelerator.is_main_process:
        try:
            atomic_write_text(settings.output, render(results, output_format(settings)))
        except OSError as exc:
            raise VitdetectError(f"cannot write --output {settings.output}: {exc.strerror or exc}") from None
    detector.close()
    reporter.info(summary_line(results))
    return PredictRun(results, detector.threshold, accelerator.is_main_process)


def write_explanations(detector: Detector, paths: Sequence[Path], folder: Path, method: str) -> int:
    """One PNG per readable image in folder, named after it (a number added when two names collide)."""
    from vitdetect.reports.overlays import draw_explanation, unique_stems

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --explain folder {folder}: {exc.strerror or exc}") from None
    names = unique_stems(paths)
    written = 0
    for start in range(0, len(paths), detector.chunk_size):
        chunk = slice(start, start + detector.chunk_size)
        for item, stem in zip(detector.explained(paths[chunk], method), names[chunk], strict=True):
            if item is not None:
                draw_explanation(folder / f"{stem}.png", item, method, detector.threshold)
                written += 1
    return written


FIELDS = ("path", "label", "p_fake", "confidence", "error", "note", "reason")
LABEL_STYLES = {POSITIVE_CLASS: "red", UNSURE: "bold magenta"}  # REAL: green
JSON_SUFFIXES = frozenset({".json", ".jsonl", ".ndjson"})


def render(results: Sequence[Prediction], fmt: str) -> str:
    """The results as CSV (header + one row per image) or JSON lines."""
    if fmt == OutputFormat.json:
        return "".join(json.dumps(asdict(result)) + "\n" for result in results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(result) for result in results)
    return buffer.getvalue()


def results_table(results: Sequence[Prediction], threshold: float, min_confidence: float) -> Table:
    failed = any(not result.ok for result in results)
    title = f"{len(results):,} image(s), FAKE when P(FAKE) >= {threshold:g}"
    if min_confidence:
        title += f", UNSURE when confidence < {min_confidence * 100:g}%"
    table = Table(title=title, title_justify="left")
    table.add_column("path", overflow="fold")  # long paths wrap rather than lose their end
    for name, justify in (("label", "left"), ("P(FAKE)", "right"), ("confidence", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    explained = failed or any(result.note or result.reason for result in results)
    if explained:
        table.add_column("error / reason / note", overflow="fold")
    for result in results:
        if result.ok:
            row = [Text(result.path), Text(result.label, style=LABEL_STYLES.get(result.label, "green")),
                   f"{result.p_fake:.4f}", f"{result.confidence:.1%}"]
            comments = "; ".join(text for text in (result.reason, result.note) if text)
            row += [Text(comments, style="yellow")] if explained else []
        else:
            row = [Text(result.path), Text("error", style="bold red"), "-", "-", Text(result.error)]
        table.add_row(*row)
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
    ensure_writable_parent(path)


def summary_line(results: Sequence[Prediction]) -> str:
    labels = [result.label for result in results if result.ok]
    fake, unsure = labels.count(POSITIVE_CLASS), labels.count(UNSURE)
    failed = len(results) - len(labels)
    noted = sum(result.note is not None for result in results)
    return (f"judged {len(labels):,} of {len(results):,} image(s): {fake:,} FAKE, {len(labels) - fake - unsure:,} REAL"
            + (f", {unsure:,} UNSURE (see reason)" if unsure else "")
            + (f"; {noted:,} far from the training images (see note)" if noted else "")
            + (f"; {failed:,} could not be read (error rows)" if failed else ""))

