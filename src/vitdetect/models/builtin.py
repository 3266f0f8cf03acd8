"""The built-in detector: a trained checkpoint shipped inside the package, so a fresh install can judge images.

`--checkpoint builtin` (and `Detector.from_checkpoint("builtin")`) names it; `vitdetect predict` falls back to it
when no checkpoint is given and there is no results/best_model.pth. Its card (detector.json beside the weights)
holds the command that trained it and the official-test numbers it was published with.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from vitdetect.errors import UsageError, VitdetectError

BUILTIN = "builtin"
WEIGHTS_NAME = "detector.pth"
CARD_NAME = "detector.json"


def is_builtin(checkpoint: str | Path | None) -> bool:
    return checkpoint is not None and str(checkpoint) == BUILTIN


def builtin_dir() -> Path:
    return Path(str(resources.files("vitdetect.models") / "weights"))


def builtin_checkpoint() -> Path:
    path = builtin_dir() / WEIGHTS_NAME
    if not path.is_file():
        raise VitdetectError(f"the built-in detector is missing from this installation ({path}); reinstall "
                             "vitdetect or pass --checkpoint")
    return path


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """The file a --checkpoint value names: the packaged weights for `builtin`, else the path itself."""
    return builtin_checkpoint() if is_builtin(checkpoint) else Path(checkpoint)


def builtin_card() -> dict[str, Any]:
    """What the built-in detector is: model, training data and command, published metrics."""
    return json.loads((builtin_dir() / CARD_NAME).read_text(encoding="utf-8"))


def announcement() -> str:
    """The one line `predict` prints when it falls back to the built-in detector."""
    card = builtin_card()
    test = card["metrics"]["official_test"]
    return (f"using the built-in detector ({card['model']}, {card['parameters']:,} parameters, official CIFAKE "
            f"test accuracy {test['accuracy']:.4f}); train your own with `vitdetect train` or pass --checkpoint")


def results_dir_for(checkpoint: str | Path) -> Path:
    """Where evaluate writes by default: the checkpoint's folder, or results/builtin for the built-in detector."""
    return Path("results") / BUILTIN if is_builtin(checkpoint) else Path(checkpoint).parent


def refuse_builtin(checkpoint: str | Path, action: str) -> None:
    """The packaged detector is read-only: a command that would rewrite it stops with one line."""
    if is_builtin(checkpoint):
        raise UsageError(f"cannot {action} the built-in detector: it ships read-only with vitdetect; train your "
                         "own checkpoint (vitdetect train) or export the built-in one first")
