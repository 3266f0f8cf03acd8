"""Building the two-class ViT: from the hub, a local save_pretrained dir, a scratch preset or a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vitdetect.config.labels import ID2LABEL, LABEL2ID
from vitdetect.config.presets import PRESETS, SCRATCH_PREFIX, preset_name
from vitdetect.config.settings import TrainMode
from vitdetect.errors import UsageError, VitdetectError
from vitdetect.utils.network import unreachable_reason

DEFAULT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # ViT-B/16's image processor
MODEL_TYPES = ("vit", "pvt_v2")  # what train, the explanations and the exports know how to handle


def _label_kwargs() -> dict[str, Any]:
    return {"num_labels": len(ID2LABEL), "id2label": dict(ID2LABEL), "label2id": dict(LABEL2ID)}


def load_model(spec: str) -> tuple[torch.nn.Module, tuple[tuple[float, ...], tuple[float, ...]]]:
    """The model named by spec with a fresh two-class head, and its normalization (mean, std)."""
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # vitdetect shows its own progress
    name = preset_name(spec)
    if name is not None:
        if name not in PRESETS:
            raise UsageError(f"unknown scratch preset '{name}' (choose from {', '.join(sorted(PRESETS))})")
        preset = PRESETS[name]
        config = CONFIG_MAPPING[preset.model_type](**preset.architecture, **_label_kwargs())
        return AutoModelForImageClassification.from_config(config), DEFAULT_MEAN_STD
    offline_reason = hub_offline_reason(spec)
    try:
        local_only = offline_reason is not None
        check_model_type(AutoConfig.from_pretrained(spec, local_files_only=local_only).model_type, spec)
        model = AutoModelForImageClassification.from_pretrained(
            spec, ignore_mismatched_sizes=True, local_files_only=local_only, **_label_kwargs()
        )
    except OSError as exc:
        if Path(spec).exists():
            raise VitdetectError(f"cannot load model from {spec}: {str(exc).splitlines()[0]}") from None
        why = f"{offline_reason} and it is not in the local cache" if offline_reason else "offline or unknown id"
        raise VitdetectError(
            f"could not download model '{spec}' ({why}): pass a local directory saved with "
            f"save_pretrained, or a scratch preset such as {SCRATCH_PREFIX}vit-tiny-32"
        ) from None
    return model, _mean_std(spec, local_only=offline_reason is not None)


def check_model_type(model_type: str, source: object) -> None:
    """Refuse, in one line, a model that is neither a ViT nor a PVTv2 (a local folder of a fine-tuned PVTv2, such
    as an exported built-in detector, loads as the PVTv2 it is)."""
    if model_type not in MODEL_TYPES:
        raise UsageError(f"{source} holds a '{model_type}' model: vitdetect trains and runs "
                         f"{' and '.join(MODEL_TYPES)} image classifiers")


def hub_offline_reason(spec: str) -> str | None:
    """Why a hub id must be loaded from the local cache only (HF_HUB_OFFLINE, or the hub unreachable).

    Checking first turns minutes of huggingface_hub retries on an offline machine into one quick line,
    and a model already in the cache still loads.
    """
    if Path(spec).exists():
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return "HF_HUB_OFFLINE is set"
    failure = unreachable_reason(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout=5.0)
    return None if failure is None else f"cannot reach the Hugging Face Hub at {failure[0]}: {failure[1]}"


def _mean_std(spec: str, local_only: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image processor's normalization, or ViT's default when the model ships none."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(spec, local_files_only=local_only, trust_remote_code=False)
        return tuple(processor.image_mean), tuple(processor.image_std)
    except Exception:  # noqa: BLE001 - no preprocessor_config.json: ViT's default
        return DEFAULT_MEAN_STD


def input_side(model: torch.nn.Module) -> int:
    """The side of the square input the model was built for (PVTv2 stores image_size as (height, width))."""
    size = model.config.image_size
    return int(size if isinstance(size, int) else size[0])


def is_vit(model: torch.nn.Module) -> bool:
    """A ViTForImageClassification: a [CLS] token and a backbone that the frozen training modes can keep fixed."""
    return hasattr(model, "vit")


def encoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    vit = model.vit
    return vit.layers if hasattr(vit, "layers") else vit.encoder.layer  # transformers 5 / 4


def set_trainable(model: torch.nn.Module, mode: str, last_blocks: int = 2) -> tuple[int, int]:
    """Freeze what the mode keeps fixed; returns (trainable, total) parameter counts."""
    full = mode == TrainMode.full
    if not full and not is_vit(model):
        raise UsageError(f"--train-mode {mode} freezes a ViT backbone; {type(model).__name__} trains with "
                         "--train-mode full")
    for parameter in model.parameters():
        parameter.requires_grad = full
    if mode == TrainMode.last_blocks:
        blocks = encoder_blocks(model)
        if last_blocks > len(blocks):
            raise UsageError(f"invalid value for --last-blocks: the model has only {len(blocks)} blocks")
        for module in [*blocks[-last_blocks:], model.vit.layernorm]:
            module.requires_grad_(True)
    model.classifier.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def model_from_config(
    config_dict: dict[str, Any], state_dict: dict[str, torch.Tensor], source: object = None
) -> torch.nn.Module:
    """Rebuild a model from a checkpoint's config and weights, with no download; source names it in errors."""
    from transformers import CONFIG_MAPPING, AutoModelForImageClassification

    where = f" in {source}" if source else ""
    if isinstance(config_dict, dict) and ("auto_map" in config_dict or config_dict.get("trust_remote_code")):
        raise VitdetectError(f"refusing the model config{where}: it names remote code (auto_map), and vitdetect "
                             "only builds models from transformers' own classes")
    try:
        config = CONFIG_MAPPING[config_dict.get("model_type", "vit")].from_dict(config_dict)
        model = AutoModelForImageClassification.from_config(config)
        model.load_state_dict(state_dict)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign checkpoint fails in many ways
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        detail = lines[1] if len(lines) > 1 else lines[0]  # torch puts the first mismatch on line 2
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise VitdetectError(f"checkpoint weights{where} do not fit its model: {detail}") from None
    return model.eval()


class LogitsOnly(torch.nn.Module):
    """The classifier as a plain tensor-to-tensor function, normalised pixels in, logits out: what ONNX export
    and grad-cam expect (the argument name becomes the ONNX input's name)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits
