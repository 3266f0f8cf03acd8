"""Running a trained checkpoint over decoded images: shared by `evaluate` and `predict`.

Works in one process or under `accelerate launch` / `torchrun`: each process scores its shard and
the results are gathered without the duplicates a padded distributed sampler adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vitdetect.utils.distributed as distributed
from vitdetect.data.dataset import TensorBatches, keep_batch
from vitdetect.data.transforms import Preprocessing, to_model_input
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
        prep = Preprocessing.from_dict(payload["preprocessing"])
        stored = payload.get("threshold")
        threshold = DEFAULT_THRESHOLD if stored is None else float(stored)
        temperature = payload.get("temperature")
        return cls(model, prep, threshold, payload, 1.0 if temperature is None else float(temperature))


def fake_probabilities(trained: TrainedModel, images: torch.Tensor, batch_size: int, *scoring) -> np.ndarray:
    """P(FAKE) = softmax(logits / T) for each Nx3xSxS uint8 image, in input order, on every process.

    scoring: accelerator, reporter and description, as for model_logits.
    """
    return fake_probability(model_logits(trained, images, batch_size, *scoring), trained.temperature)


def fake_probability(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """P(FAKE) from Nx2 logits at a temperature, in float64: the one definition evaluate, predict,
    calibrate and the exported model agree on."""
    return torch.softmax(logits.double() / temperature, dim=-1)[:, 1].numpy()


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
