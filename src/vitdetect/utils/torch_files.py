"""torch objects on disk, written atomically: apart from `atomic` so that the torch-free layers (config, reports,
the command line's parsing) can write files without importing torch."""

from __future__ import annotations

from pathlib import Path

import torch

from vitdetect.utils.atomic import atomic_write, write_failures_as_os_errors


def atomic_torch_save(path: Path, obj: object) -> None:
    """torch.save(obj) to path atomically; a failed write raises OSError, like any other write."""
    def write(tmp: Path) -> None:
        with write_failures_as_os_errors():
            torch.save(obj, tmp)

    atomic_write(path, write)
