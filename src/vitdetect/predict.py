"""Deprecated: `vitdetect.predict` was the home of `Detector` and `find_images` until the package moved into stage
subpackages. Import them from `vitdetect` instead; this module goes in the next release."""

from __future__ import annotations

import warnings
from typing import Any

_MOVED = {"Detector": "vitdetect", "Prediction": "vitdetect", "find_images": "vitdetect"}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'vitdetect.predict' has no attribute '{name}'")
    warnings.warn(f"`from vitdetect.predict import {name}` is deprecated: use `from vitdetect import {name}`",
                  DeprecationWarning, stacklevel=2)
    import vitdetect

    return getattr(vitdetect, name)
