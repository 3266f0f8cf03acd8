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

from vitdetect import distributed
from vitdetect.checkpoint import load_checkpoint
from vitdetect.data import TensorBatches, keep_batch
from vitdetect.model import model_from_config
from vitdetect.progress import Reporter
from vitdetect.transforms import Preprocessing, to_model_input

DEFAULT_THRESHOLD = 0.5


@dataclass
class TrainedModel:
    """A checkpoint rebuilt for inference: model, its preprocessing and decision threshold."""

    model: torch.nn.Module
    prep: Preprocessing
    threshold: float
    checkpoint: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> TrainedModel:
        payload = load_checkpoint(path)
        model = model_from_config(payload["model_config"], payload["state_dict"], source=path)
        prep = Preprocessing.from_dict(payload["preprocessing"])
        stored = payload.get("threshold")
        threshold = DEFAULT_THRESHOLD if stored is None else float(stored)
        return cls(model, prep, threshold, payload)


def fake_probabilities(
    trained: TrainedModel,
    images: torch.Tensor,
    batch_size: int,
    accelerator=None,
    reporter: Reporter | None = None,
    description: str = "scoring",
) -> np.ndarray:
    """P(FAKE) for each Nx3xSxS uint8 image, in input order, on every process."""
    accelerator = accelerator or distributed.make_accelerator()
    reporter = reporter or Reporter(quiet=True)
    loader = accelerator.prepare_data_loader(
        torch.utils.data.DataLoader(
            TensorBatches(images, torch.arange(len(images))), batch_size=batch_size, collate_fn=keep_batch,
            pin_memory=accelerator.device.type == "cuda",
        )
    )
    model = trained.model.to(accelerator.device).eval()
    probabilities = torch.empty(len(images), dtype=torch.float64)
    with torch.inference_mode(), reporter.task(description, len(images)) as bar:
        for batch, index in loader:
            with accelerator.autocast():
                logits = model(pixel_values=to_model_input(batch, trained.prep)).logits
            fake = torch.softmax(logits.float(), dim=-1)[:, 1]
            fake, index = accelerator.gather_for_metrics((fake, index))
            probabilities[index.cpu()] = fake.cpu().double()
            bar.advance(len(index))
    return probabilities.numpy()
