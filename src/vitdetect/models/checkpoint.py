"""Checkpoints: written atomically, read with `torch.load(weights_only=True)` only.

A checkpoint is a plain dict of tensors and JSON-like values, so loading it can never run code:
  format, format_version, kind ("best" or "last"), settings, preprocessing, model_config,
  id2label, state_dict, epoch, metrics; "last" adds the optimizer, scheduler, scaler, RNG and
  early-stopping state and the history so far, for `vitdetect train --resume`.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitdetect.data.transforms import Preprocessing
from vitdetect.errors import VitdetectError
from vitdetect.models.builtin import resolve_checkpoint
from vitdetect.utils.atomic import atomic_write_dir, write_failures_as_os_errors
from vitdetect.utils.torch_files import atomic_torch_save

FORMAT = "vitdetect"
FORMAT_VERSION = 1
# What a checkpoint must hold to rebuild its model, and what `train --resume` needs on top.
MODEL_KEYS = frozenset({"model_config", "state_dict", "preprocessing"})
RESUME_KEYS = MODEL_KEYS | {"settings", "optimizer", "scheduler", "rng", "train_state", "history"}
# The type of each value a checkpoint may hold (None allowed): anything else is damage, refused in one line here
# rather than failing later as a traceback in whichever command reads it.
PAYLOAD_TYPES = {"settings": dict, "preprocessing": dict, "model_config": dict, "id2label": dict, "state_dict": dict,
                 "metrics": dict, "epoch": int}


def model_name(payload: dict[str, Any]) -> str:
    """What a checkpoint was trained from (the --model preset or hub id), for `serve`'s /v1/model and an export's
    metadata; the architecture's type when the checkpoint does not say."""
    config = payload.get("model_config") or {}
    return (payload.get("settings") or {}).get("model") or config.get("_name_or_path") or config.get("model_type") \
        or "ViT"


def model_payload(
    model: torch.nn.Module, settings: dict[str, Any], prep: Preprocessing, epoch: int, metrics: dict[str, Any]
) -> dict[str, Any]:
    """What evaluate and predict need to rebuild the model and its preprocessing alone."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "best",
        "settings": settings,
        "preprocessing": prep.to_dict(),
        "model_config": json.loads(model.config.to_json_string(use_diff=False)),
        "id2label": {int(k): v for k, v in model.config.id2label.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": epoch,
        "metrics": metrics,
    }


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    atomic_torch_save(path, payload)


def save_pretrained_dir(path: Path, model: torch.nn.Module, prep: Preprocessing) -> None:
    """The model in save_pretrained form with its image processor, for plain `transformers` use."""
    atomic_write_dir(path, lambda tmp: write_pretrained(tmp, model, prep))


def write_pretrained(folder: Path, model: torch.nn.Module, prep: Preprocessing) -> None:
    """save_pretrained of the model and of a ViTImageProcessor with its size, mean and std into folder."""
    from transformers import ViTImageProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    processor = ViTImageProcessor(
        size={"height": prep.image_size, "width": prep.image_size}, image_mean=list(prep.mean),
        image_std=list(prep.std),
    )
    with write_failures_as_os_errors():
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    for file in folder.iterdir():
        file.chmod(0o644)  # safetensors writes 0600: a shared or published folder must be readable


def load_checkpoint(path: Path, kind: str | None = None) -> dict[str, Any]:
    """A vitdetect checkpoint's dict; one clear VitdetectError for every way it can be wrong.

    `builtin` names the detector shipped with the package."""
    path = resolve_checkpoint(path)
    if not path.exists():
        raise VitdetectError(f"checkpoint not found: {path} (train one with `vitdetect train`)")
    if path.is_dir():
        raise VitdetectError(f"checkpoint path is a directory, not a file: {path}")
    check_zip_checksums(path)
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles; the error below says it all
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler refused something
        code = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if code:
            raise VitdetectError(f"refusing to load {path}: unpickling it would call {code[1]}, which "
                                 "could run code; vitdetect only loads weights-only checkpoints") from None
        raise VitdetectError(f"refusing to load {path}: not a weights-only checkpoint (damaged, not a "
                             "checkpoint, or holding pickled objects that could run code)") from None
    except Exception:  # noqa: BLE001 - truncated zip, random bytes, ...
        raise VitdetectError(f"cannot read checkpoint {path}: the file is damaged or not a checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise VitdetectError(f"not a vitdetect checkpoint: {path}")
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise VitdetectError(f"checkpoint {path} was written by a newer vitdetect; upgrade to read it")
    if kind is not None and payload.get("kind") != kind:
        raise VitdetectError(f"{path} is a '{payload.get('kind')}' checkpoint; expected a '{kind}' one")
    missing = (RESUME_KEYS if payload.get("kind") == "last" else MODEL_KEYS) - payload.keys()
    if missing:
        raise VitdetectError(f"checkpoint {path} is incomplete: no {', '.join(sorted(missing))}")
    check_payload_types(payload, path)
    return payload


def check_payload_types(payload: dict[str, Any], path: Path) -> None:
    wrong = [f"{key} is a {type(payload[key]).__name__}" for key, kind in PAYLOAD_TYPES.items()
             if payload.get(key) is not None and (not isinstance(payload[key], kind) or isinstance(payload[key], bool))]
    if wrong:
        raise VitdetectError(f"checkpoint {path} is damaged: {', '.join(wrong)}")


def check_zip_checksums(path: Path) -> None:
    """torch.load does not check the CRC-32 its zip stores for every record: flipped bytes in the weights would
    load silently as other weights. A file that is not a zip is left to torch.load to refuse."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile:
        return
    except Exception:  # noqa: BLE001 - a zip damaged past reading: zlib.error, EOFError, ...
        damaged = "its records"
    if damaged is not None:
        raise VitdetectError(f"cannot read checkpoint {path}: the file is damaged (checksum mismatch in "
                             f"{Path(damaged).name})")


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch RNG states as weights_only-loadable values."""
    np_state = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
