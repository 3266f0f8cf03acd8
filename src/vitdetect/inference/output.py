"""How `vitdetect predict` shows its verdicts: a rich table, CSV or JSON lines, and the summary line."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from vitdetect.config.commands import OutputFormat, PredictSettings
from vitdetect.config.labels import POSITIVE_CLASS
from vitdetect.errors import UsageError
from vitdetect.utils.atomic import ensure_writable_parent

if TYPE_CHECKING:
    from vitdetect.inference.detector import Prediction

FIELDS = ("path", "label", "p_fake", "confidence", "error", "note")
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


def results_table(results: Sequence[Prediction], threshold: float) -> Table:
    failed = any(not result.ok for result in results)
    title = f"{len(results):,} image(s), FAKE when P(FAKE) >= {threshold:g}"
    table = Table(title=title, title_justify="left")
    table.add_column("path", overflow="fold")  # long paths wrap rather than lose their end
    for name, justify in (("label", "left"), ("P(FAKE)", "right"), ("confidence", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    noted = any(result.note for result in results)
    if failed or noted:
        table.add_column("error / note", overflow="fold")
    for result in results:
        if result.ok:
            colour = "red" if result.label == POSITIVE_CLASS else "green"
            row = [Text(result.path), Text(result.label, style=colour), f"{result.p_fake:.4f}",
                   f"{result.confidence:.1%}"]
            row += [Text(result.note or "", style="yellow")] if failed or noted else []
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
    fake = labels.count(POSITIVE_CLASS)
    failed = len(results) - len(labels)
    noted = sum(result.note is not None for result in results)
    return (f"judged {len(labels):,} of {len(results):,} image(s): {fake:,} FAKE, {len(labels) - fake:,} REAL"
            + (f"; {noted:,} far from the training images (see note)" if noted else "")
            + (f"; {failed:,} could not be read (error rows)" if failed else ""))

