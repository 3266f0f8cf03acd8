"""The robustness suite: what happens to images in the wild, as a small registry of perturbations.

Each perturbation maps an Nx3xHxW uint8 batch (the stored images, before the model's own preprocessing)
to another of the same shape. JPEG and PNG go through the real codecs (libjpeg and libpng, through
torchvision.io), not a differentiable imitation, so the JPEG rows show what re-saving a file does.

The "resave" family re-saves in another container at (nearly) no loss: lossless WebP, JPEG quality 100, WebP
quality 80 (libwebp through Pillow; left out where Pillow has no WebP). A detector that learned the file format
instead of the content (calling every PNG fake and every JPEG real) fails there, not on the clean images.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from vitdetect.errors import UsageError

CHUNK = 1024  # images perturbed at a time: bounds the float copies of large stored images
PIXEL_MAX = 255.0


@dataclass(frozen=True)
class Perturbation:
    name: str  # what --perturbations takes, e.g. "jpeg-75"
    family: str  # "jpeg", "blur", "downscale", "noise", "png", "resave"
    family_title: str  # the family in tables and figures
    level: int  # severity within the family: 1 is the mildest; the figure's x axis (0 = clean)
    parameter: str  # "quality 75", "sigma 1", ...
    apply: Callable[[torch.Tensor, torch.Generator], torch.Tensor]

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """The perturbed copy of images; seeded, so every process and every run gets the same pixels."""
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([self.apply(chunk.contiguous(), generator) for chunk in images.cpu().split(CHUNK)])


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels in 0-255 units -> uint8, rounded to nearest and clipped."""
    return pixels.round_().clamp_(0, PIXEL_MAX).to(torch.uint8)


def jpeg_round_trip(images: torch.Tensor, _generator: torch.Generator, quality: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    encoded = encode_jpeg(list(images), quality=quality)
    return torch.stack(decode_jpeg(encoded, mode=ImageReadMode.RGB))


def png_round_trip(images: torch.Tensor, _generator: torch.Generator) -> torch.Tensor:
    """Lossless: the identity, through a real encoder and decoder (a check on the scoring path)."""
    from torchvision.io import ImageReadMode, decode_png, encode_png

    return torch.stack([decode_png(encode_png(image), mode=ImageReadMode.RGB) for image in images])


def pillow_round_trip(images: torch.Tensor, _generator: torch.Generator, fmt: str, **options) -> torch.Tensor:
    """Saved by Pillow as fmt with options (e.g. lossless=True, quality=80) and decoded again, image by image."""
    import numpy as np
    from PIL import Image

    def round_trip(image: torch.Tensor) -> torch.Tensor:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format=fmt, **options)
        with Image.open(buffer) as decoded:
            return torch.from_numpy(np.asarray(decoded.convert("RGB")).copy()).permute(2, 0, 1)

    return torch.stack([round_trip(image) for image in images])


def has_webp() -> bool:
    from PIL import features

    return bool(features.check("webp"))


def blur_kernel_size(sigma: float) -> int:
    """The odd kernel side covering +-3 sigma: what both the suite and the training augmentation use."""
    return 2 * math.ceil(3 * sigma) + 1


def gaussian_blur(images: torch.Tensor, _generator: torch.Generator, sigma: float) -> torch.Tensor:
    from kornia.filters import gaussian_blur2d

    size = blur_kernel_size(sigma)
    blurred = gaussian_blur2d(images.float(), (size, size), (sigma, sigma), border_type="reflect")
    return to_uint8(blurred)


def resize_round_trip(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Float images down to 1/factor of their side with an antialiased bilinear resize (what image libraries
    do), then back up to their size: the robustness suite's down-scaling and training's --augment-downscale."""
    height, width = images.shape[-2:]
    small = F.interpolate(images, size=(max(1, int(height / factor)), max(1, int(width / factor))),
                          mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)


def downscale_round_trip(images: torch.Tensor, _generator: torch.Generator, factor: int) -> torch.Tensor:
    """Down to 1/factor and back up (resize_round_trip), on uint8 images."""
    return to_uint8(resize_round_trip(images.float(), factor))


def gaussian_noise(images: torch.Tensor, generator: torch.Generator, sigma: float) -> torch.Tensor:
    """Additive N(0, sigma^2) noise per pixel and channel, sigma in 0-255 units."""
    noise = torch.randn(images.shape, generator=generator) * sigma
    return to_uint8(images.float() + noise)


def _family(family: str, title: str, op: Callable, keyword: str, values: Iterable[float],
            parameter: str) -> list[Perturbation]:
    """One perturbation per value, mildest first, named like "jpeg-75"; parameter formats the value."""
    return [Perturbation(f"{family}-{value:g}", family, title, level, parameter.format(f"{value:g}"),
                         partial(op, **{keyword: value}))
            for level, value in enumerate(values, start=1)]


def resaves() -> list[Perturbation]:
    """The container re-saves, least lossy first: lossless WebP, JPEG 100, WebP 80 (the WebP ones only where Pillow
    can write WebP)."""
    title = "format re-save"
    webp = has_webp()
    return [
        *([Perturbation("webp-lossless", "resave", title, 1, "WebP lossless",
                        partial(pillow_round_trip, fmt="WEBP", lossless=True))] if webp else []),
        Perturbation("jpeg-100", "resave", title, 2, "JPEG quality 100", partial(jpeg_round_trip, quality=100)),
        *([Perturbation("webp-80", "resave", title, 3, "WebP quality 80",
                        partial(pillow_round_trip, fmt="WEBP", quality=80))] if webp else []),
    ]


SUITE: tuple[Perturbation, ...] = (
    *_family("jpeg", "JPEG re-compression", jpeg_round_trip, "quality", (95, 75, 50, 30), "quality {}"),
    *_family("blur", "Gaussian blur", gaussian_blur, "sigma", (0.5, 1.0, 2.0), "sigma {}"),
    *_family("downscale", "down-scale and back", downscale_round_trip, "factor", (2, 4), "1/{}"),
    *_family("noise", "Gaussian noise", gaussian_noise, "sigma", (2.0, 5.0, 10.0), "sigma {}"),
    Perturbation("png", "png", "PNG round trip (lossless)", 0, "identity", png_round_trip),
    *resaves(),
)
PERTURBATIONS = {perturbation.name: perturbation for perturbation in SUITE}
# The mild everyday edits `predict --check-stability` re-scores each image after: a verdict that one of them
# flips is no verdict (UNSURE). The suite's own functions, so a flip there is a flip in the robustness report.
STABILITY_EDITS = tuple(PERTURBATIONS[name] for name in ("jpeg-75", "blur-0.5", "downscale-2"))
FAMILIES = tuple(dict.fromkeys(perturbation.family for perturbation in SUITE))


def resolve_suite(spec: str = "all") -> list[Perturbation]:
    """The perturbations a comma-separated spec names (names, families like "jpeg", or "all"), in suite order."""
    names = {name.strip().lower() for name in spec.split(",") if name.strip()}
    unknown = sorted(names - set(PERTURBATIONS) - set(FAMILIES) - {"all"})
    if unknown or not names:
        raise UsageError(f"unknown perturbation '{unknown[0] if unknown else spec}' (choose from "
                         f"{', '.join(PERTURBATIONS)}, a family: {', '.join(FAMILIES)}, or all)")
    return [p for p in SUITE if "all" in names or p.name in names or p.family in names]
