"""Console output: rich progress bars on a terminal, plain lines in logs, silence when asked.

Only the main process of a distributed run reports; the others get a silent Reporter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Task:
    """One bar: advance(n, **fields) moves it by n items and shows the fields (loss=..., acc=...)."""

    def __init__(self, reporter: Reporter, description: str, total: int, unit: str):
        self.reporter = reporter
        self.description = description
        self.total = total
        self.unit = unit
        self.done = 0
        self.started = time.perf_counter()
        self.fields: dict[str, float] = {}
        self._rich_id: TaskID | None = None

    def advance(self, count: int = 1, **fields: float) -> None:
        self.done += count
        self.fields.update(fields)
        progress = self.reporter._progress
        if progress is not None and self._rich_id is not None:
            progress.update(self._rich_id, advance=count, rate=self.rate_text(), extra=self._fields_text())

    def set_total(self, total: int) -> None:
        self.total = total
        progress = self.reporter._progress
        if progress is not None and self._rich_id is not None:
            progress.update(self._rich_id, total=total)

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.started, 1e-9)

    def rate_text(self) -> str:
        return f"{self.rate:,.0f} {self.unit}/s" if self.unit == "img" else ""

    def _fields_text(self) -> str:
        return "  ".join(f"{name} {value:.4f}" for name, value in self.fields.items())

    def line(self) -> str:
        share = f"{self.done / self.total:4.0%} " if self.total else ""
        return (
            f"{self.description}: {share}{self.done}/{self.total} {self.unit}, "
            f"{self.rate:,.0f} {self.unit}/s  {self._fields_text()}"
        ).rstrip()


class Reporter:
    """Where every command's output goes: `info` lines, `warn` lines and progress `task`s."""

    def __init__(self, quiet: bool = False, enabled: bool = True, console: Console | None = None):
        self.console = console or Console(stderr=True, highlight=False)
        self.enabled = enabled
        self.quiet = quiet or not enabled
        self.plain = not self.console.is_terminal
        self._progress: Progress | None = None

    def print(self, *objects: object) -> None:
        if self.enabled:
            self.console.print(*objects, soft_wrap=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.print(message)

    def warn(self, message: str) -> None:
        self.print(f"[yellow]warning:[/yellow] {message}")

    @contextmanager
    def bars(self) -> Iterator[None]:
        """A live area for nested tasks (epoch bar above batch bar) on a terminal."""
        if self.quiet or self.plain or self._progress is not None:
            yield
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>12}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[extra]}"),
            console=self.console,
            transient=False,
        )
        with self._progress:
            try:
                yield
            finally:
                self._progress = None

    @contextmanager
    def task(self, description: str, total: int, unit: str = "img", transient: bool = False) -> Iterator[Task]:
        """A progress bar; transient ones (the batch bar inside an epoch) vanish when done.

        Without a terminal (logs, CI) a task prints one summary line when it ends, transient ones none.
        """
        task = Task(self, description, total, unit)
        with self.bars():
            if self._progress is not None:
                task._rich_id = self._progress.add_task(description, total=total, rate="", extra="")
            try:
                yield task
            finally:
                if self._progress is not None and task._rich_id is not None and transient:
                    self._progress.remove_task(task._rich_id)
                elif self.plain and not self.quiet and task.done and not transient:
                    self.print(task.line())
