"""The one preprocessing function: uint8 batches -> augmented, resized, normalized model input.

It runs as batched tensor ops on whatever device the batch is on (the GPU when training on one),
so the CPU only has to gather uint8 batches. Train, validation, evaluate and predict all call
`to_model_input`; only training passes an augmentation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from vitdetect.data.perturbations import blur_kernel_size, resize_round_trip

# The reference recipe's ColorJitter strengths.
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05}


@dataclass(frozen=True)
class Preprocessing:
    """What a checkpoint needs to turn images into model input exactly as in training."""

    image_size: int  # the model's input side (224 for ViT-B/16)
    storage_size: int  # the side images are decoded to and kept at (CIFAKE: 32)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        """From a checkpoint's or an ONNX file's stored values; ValueError (or TypeError, KeyError) when they are
        not positive sizes and three finite means and positive stds: a damaged file must not load as a model
        that divides by zero or resizes to nothing."""
        prep = cls(
            image_size=int(data["image_size"]),
            storage_size=int(data["storage_size"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
        )
        if min(prep.image_size, prep.storage_size) < 1 or len(prep.mean) != 3 or len(prep.std) != 3 or \
                not all(math.isfinite(v) for v in prep.mean + prep.std) or min(prep.std) <= 0:
            raise ValueError(f"invalid preprocessing {prep}")
        return prep


def build_augmentation(
    rotation_degrees: float,
    color_jitter: bool = True,
    crop_padding: int = 0,
    storage_size: int = 32,
    jpeg: float = 0.0,
    jpeg_quality: tuple[float, float] = (30.0, 95.0),
    blur: float = 0.0,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    downscale: float = 0.0,
    downscale_factor: tuple[float, float] = (1.5, 4.0),
) -> torch.nn.Module:
    """Per-sample augmentation of a batch in [0, 1] at the stored size: RandomHorizontalFlip, a reflect-padded
    random crop (crop_padding > 0), RandomRotation (degrees > 0), ColorJitter, then, with probabilities
    `downscale`, `blur` and `jpeg`, a down-scale and back, a Gaussian blur and a JPEG re-compression.

    Those three come last, as in the wild: an image is edited, resized, then saved. kornia's RandomJPEG is a
    differentiable imitation of the codec, close enough to teach invariance (the robustness report
    itself uses the real encoder).
    """
    import kornia.augmentation as K

    steps = [K.RandomHorizontalFlip(p=0.5)]
    if crop_padding > 0:
        steps.append(K.RandomCrop((storage_size, storage_size), padding=crop_padding, padding_mode="reflect"))
    if rotation_degrees > 0:
        steps.append(K.RandomRotation(degrees=rotation_degrees, p=1.0))
    if color_jitter:
        steps.append(K.ColorJitter(**JITTER, p=1.0))
    if downscale > 0:
        steps.append(RandomDownscale(downscale, downscale_factor))
    if blur > 0:
        steps.append(K.RandomGaussianBlur(blur_kernel_size(blur_sigma[1]), blur_sigma, p=blur))
    if jpeg > 0:
        steps.append(K.RandomJPEG(jpeg_quality=jpeg_quality, p=jpeg))
    return torch.nn.Sequential(*steps)


class RandomDownscale(torch.nn.Module):
    """With probability p per image, down-scale by a factor drawn uniformly from `factor` (one draw per batch,
    so the chosen images are resized together on the batch's device) and back up: what a photo shrunk for a
    web page or a chat and enlarged again looks like (the robustness suite's down-scale family)."""

    def __init__(self, p: float, factor: tuple[float, float]):
        super().__init__()
        self.p, self.factor = p, factor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        chosen = torch.rand(len(images), device=images.device) < self.p
        if not chosen.any():
            return images
        factor = float(torch.empty(()).uniform_(*self.factor))
        resized = images.clone()
        resized[chosen] = resize_round_trip(images[chosen], factor).clamp_(0, 1)
        return resized


def to_model_input(
    images: torch.Tensor,
    prep: Preprocessing,
    augmentation: torch.nn.Module | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Nx3xHxW uint8 -> Nx3xSxS normalized float, S = prep.image_size.

    Augmentation runs at the stored resolution, before the resize: the same geometry and colour
    changes as augmenting after it, at a fraction of the cost (32x32 instead of 224x224 for CIFAKE).
    """
    batch = images.float().div_(255.0)
    if augmentation is not None:
        batch = augmentation(batch).clamp_(0.0, 1.0)
    # Normalizing before the resize gives the same result (the resize's weights sum to 1) and touches
    # 49x fewer values at 32 -> 224: on the CPU, normalizing the 224 output cost more than the resize.
    mean = torch.tensor(prep.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=batch.device).view(1, 3, 1, 1)
    batch = (batch - mean) / std
    if batch.shape[-2:] != (prep.image_size, prep.image_size):
        batch = F.interpolate(
            batch, size=(prep.image_size, prep.image_size), mode="bilinear", align_corners=False, antialias=True
        )
    return batch.to(dtype)
