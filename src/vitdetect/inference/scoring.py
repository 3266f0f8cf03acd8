"""Running a trained checkpoint over decoded images: shared by `evaluate` and `predict`; and the calibrated
P(FAKE) = softmax(logits / T)[FAKE] in one place: reading T from a checkpoint, applying it, folding it into the
classifier for exports.

Works in one process or under `accelerate launch` / `torchrun`: each process scores its shard and
the results are gathered without the duplicates a padded distributed sampler adds.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vitdetect.utils.distributed as distributed
from vitdetect.config.labels import LABEL2ID, POSITIVE_CLASS
from vitdetect.data.dataset import TensorBatches, keep_batch
from vitdetect.data.transforms import Preprocessing, to_model_input
from vitdetect.errors import VitdetectError
from vitdetect.models.build import model_from_config
from vitdetect.models.checkpoint import load_checkpoint
from vitdetect.utils.progress import Reporter

DEFAULT_THRESHOLD = 0.5


@dataclass
class TrainedModel:
    """A checkpoint rebuilt for inference: model, its preprocessing, decision threshold and temperature."""

    model: torch.nn.Module
    prep: Preprocessing
    threshold: float
    checkpoint: dict[str, Any]
    temperature: float = 1.0  # P(FAKE) = softmax(logits / temperature); 1.0: not calibrated

    @classmethod
    def load(cls, path: Path) -> TrainedModel:
        payload = load_checkpoint(path)
        model = model_from_config(payload["model_config"], payload["state_dict"], source=path)
        try:
            prep = Preprocessing.from_dict(payload["preprocessing"])
        except (ValueError, TypeError, KeyError) as exc:
            raise VitdetectError(f"checkpoint {path} has damaged preprocessing values ({exc})") from None
        threshold = stored_threshold(payload.get("threshold"), path)
        return cls(model, prep, threshold, payload, stored_temperature(payload, path))


def stored_threshold(stored: object, source: Path | str) -> float:
    """The decision threshold a checkpoint or ONNX file stores; DEFAULT_THRESHOLD when it has none. A value that
    is not a number in [0, 1] is refused: NaN would call every image REAL, 7 every image REAL, -1 every one FAKE."""
    if stored is None:
        return DEFAULT_THRESHOLD
    if isinstance(stored, bool) or not isinstance(stored, int | float) or not 0.0 <= stored <= 1.0:
        raise VitdetectError(f"{source} has an invalid threshold {stored!r} (must be a number in [0, 1])")
    return float(stored)


def stored_temperature(payload: dict[str, Any], source: Path | str) -> float:
    """The calibration temperature a checkpoint stores (key `temperature`); 1.0 when it has none. A stored value
    that is not a positive number is refused, never silently replaced."""
    stored = payload.get("temperature")
    if stored is None:
        return 1.0
    if isinstance(stored, bool) or not isinstance(stored, int | float) or not math.isfinite(stored) or stored <= 0:
        raise VitdetectError(f"checkpoint {source} has an invalid temperature {stored!r} (must be a positive number)")
    return float(stored)


def fold_temperature(model: torch.nn.Module, temperature: float) -> torch.nn.Module:
    """A copy of the model whose classifier gives logits / T (weight and bias divided by T): exported models and
    plain transformers then compute the calibrated P(FAKE) without knowing T."""
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        folded.classifier.weight.div_(temperature)
        folded.classifier.bias.div_(temperature)
    return folded


def fake_probabilities(trained: TrainedModel, images: torch.Tensor, batch_size: int, *scoring) -> np.ndarray:
    """P(FAKE) = softmax(logits / T) for each Nx3xSxS uint8 image, in input order, on every process.

    scoring: accelerator, reporter and description, as for model_logits.
    """
    return fake_probability(model_logits(trained, images, batch_size, *scoring), trained.temperature)


def fake_probability(logits: torch.Tensor | np.ndarray, temperature: float = 1.0,
                     fake_index: int = LABEL2ID[POSITIVE_CLASS]) -> np.ndarray:
    """P(FAKE) from Nx2 logits at a temperature, in float64: the one definition evaluate, predict, calibrate,
    ONNX Runtime and the export's parity check agree on. fake_index: FAKE's column (an ONNX file's id2label)."""
    return torch.softmax(torch.as_tensor(logits).double() / temperature, dim=-1)[:, fake_index].numpy()


def model_logits(
    trained: TrainedModel,
    images: torch.Tensor,
    batch_size: int,
    accelerator=None,
    reporter: Reporter | None = None,
    description: str = "scoring",
) -> torch.Tensor:
    """The model's Nx2 logits (REAL, FAKE) for Nx3xSxS uint8 images, in input order, on the CPU of every process."""
    accelerator = accelerator or distributed.make_accelerator()
    reporter = reporter or Reporter(quiet=True)
    loader = accelerator.prepare_data_loader(
        torch.utils.data.DataLoader(
            TensorBatches(images, torch.arange(len(images))), batch_size=batch_size, collate_fn=keep_batch,
            pin_memory=accelerator.device.type == "cuda",
        )
    )
    model = trained.model.to(accelerator.device).eval()
    logits = torch.empty(len(images), 2, dtype=torch.float32)
    with torch.inference_mode(), reporter.task(description, len(images)) as bar:
        for batch, index in loader:
            with accelerator.autocast():
                scores = model(pixel_values=to_model_input(batch, trained.prep)).logits
            scores, index = accelerator.gather_for_metrics((scores.float(), index))
            logits[index.cpu()] = scores.cpu()
            bar.advance(len(index))
    return logits
