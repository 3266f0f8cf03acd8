"""Package a trained checkpoint as vitdetect's built-in detector (maintainers only).

Writes src/vitdetect/models/weights/detector.pth (the model's weights in fp16, weights-only loadable, no optimizer
state) and detector.json (the card: model, training command and data, the numbers below). The numbers are
measured on the packaged fp16 weights themselves, by the same scoring `vitdetect evaluate` uses: the full
official test split, and the fixed seeded 2,000-image sample that tests/test_builtin.py checks.

    python scripts/make_builtin.py runs/full/best_model.pth --data-dir ../shared/data/cifake \
        --trained-on "..." --command "vitdetect train ..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vitdetect.config.labels import CLASS_NAMES
from vitdetect.data.dataset import load_split
from vitdetect.inference.scoring import TrainedModel, fake_probabilities
from vitdetect.models.builtin import CARD_NAME, WEIGHTS_NAME, builtin_dir
from vitdetect.models.checkpoint import load_checkpoint
from vitdetect.reports.metrics import detector_metrics
from vitdetect.utils.atomic import atomic_write_text
from vitdetect.utils.torch_files import atomic_torch_save

SAMPLE_SIZE, SAMPLE_SEED = 2000, 0


def official_test_sample(labels: torch.Tensor) -> np.ndarray:
    """The fixed stratified sample of the official test split the card and its test use."""
    from vitdetect.data.dataset import stratified_sample

    return stratified_sample(labels, SAMPLE_SIZE, SAMPLE_SEED)


def packaged(payload: dict) -> dict:
    """The checkpoint without training state, its floating-point weights stored as fp16."""
    keep = ("format", "format_version", "kind", "settings", "preprocessing", "model_config", "id2label", "epoch",
            "metrics", "threshold", "threshold_source", "temperature", "temperature_fit")
    slim = {key: payload[key] for key in keep if key in payload}
    slim["kind"] = "best"
    slim["state_dict"] = {name: tensor.half() if tensor.is_floating_point() else tensor
                          for name, tensor in payload["state_dict"].items()}
    return slim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--trained-on", required=True, help="the training data, in words")
    parser.add_argument("--command", required=True, help="the command that trained it")
    args = parser.parse_args()
    weights = builtin_dir() / WEIGHTS_NAME
    atomic_torch_save(weights, packaged(load_checkpoint(args.checkpoint)))
    trained = TrainedModel.load(weights)
    test = load_split(args.data_dir, "test", trained.prep.storage_size)
    p_fake = fake_probabilities(trained, test.images, 512)
    labels = test.labels.numpy()
    full, _ = detector_metrics(labels, p_fake, trained.threshold, CLASS_NAMES)
    sample = official_test_sample(test.labels)
    sample_metrics, _ = detector_metrics(labels[sample], p_fake[sample], trained.threshold, CLASS_NAMES)
    card = {
        "model": trained.checkpoint["settings"]["model"],
        "parameters": sum(tensor.numel() for tensor in trained.model.parameters()),
        "trained_on": args.trained_on,
        "command": args.command,
        "epoch": trained.checkpoint.get("epoch"),
        "threshold": trained.threshold,
        "temperature": trained.temperature,
        "weights": "fp16",
        "metrics": {
            "official_test": {key: full[key] for key in ("accuracy", "roc_auc", "pr_auc", "log_loss", "ece",
                                                         "n_images")},
            "official_test_sample": {"size": SAMPLE_SIZE, "seed": SAMPLE_SEED, "accuracy": sample_metrics["accuracy"],
                                     "correct": int(round(sample_metrics["accuracy"] * len(sample)))},
        },
    }
    atomic_write_text(builtin_dir() / CARD_NAME, json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
