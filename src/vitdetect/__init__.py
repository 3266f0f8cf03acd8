"""vitdetect: fine-tune a Vision Transformer to tell real photographs from AI-generated images.

The public Python API is what this module exports (`__all__`); the command line is a thin layer over the same
objects. Names load on first use, so `import vitdetect` (and `vitdetect --help`) stays fast and torch-free.

Example:
    >>> from vitdetect import Detector
    >>> with Detector.from_checkpoint("builtin") as detector:  # the detector shipped in the package
    ...     for verdict in detector.predict(["photo.jpg"]):
    ...         print(verdict.path, verdict.label, verdict.p_fake)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Detector": "vitdetect.inference.detector",
    "Prediction": "vitdetect.inference.detector",
    "UnsureRule": "vitdetect.inference.detector",
    "find_images": "vitdetect.data.files",
    "VitdetectError": "vitdetect.errors",
    "UsageError": "vitdetect.errors",
    "TrainSettings": "vitdetect.config.settings",
    "EvaluateSettings": "vitdetect.config.commands",
    "train": "vitdetect.training.trainer",
    "evaluate": "vitdetect.evaluation.evaluator",
}
__all__ = ["Detector", "EvaluateSettings", "Prediction", "TrainSettings", "UnsureRule", "UsageError", "VitdetectError",
           "__version__", "evaluate", "find_images", "train"]

def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vitdetect' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
