"""Explanations: one heatmap per image saying which parts of it the verdict rests on.

Three methods, upsampled to the stored image size:

- rollout (Abnar & Zuidema, 2020): multiply the head-averaged attention matrices of all blocks, each mixed
  half-and-half with the identity for the residual connection; the [CLS] row says from which patches the
  token the classifier reads has gathered information. Class-agnostic. Needs eager attention (SDPA returns
  no weights), switched on for the call only: SDPA stays the default everywhere else.
- gradcam (Selvaraju et al., 2017, through the grad-cam package): gradient-weighted activations, for the
  logit margin of the verdict's class over the other. On a ViT it reads the input of the last block's
  attention (its layernorm_before: the last block's own patch outputs get no gradient, the classifier reads
  only [CLS]) and weighs each token's activations by that token's own gradient (grad-cam's
  GradCAMElementWise): the classic per-channel weights, gradients averaged over all tokens, cancel out on a
  transformer, whose tokens do not share channel meanings as a CNN's positions do, and missed a planted
  patch on most images (README "Explanations"). On a pyramid transformer (PVTv2) it reads the output of the
  last stage whose grid is still at least 4x4, with the classic weights.
- occlusion (Zeiler & Fergus, 2014, through captum): hide one square of the image at a time (a quarter of
  its side, half-overlapping, set to the normalisation mean) and measure how far the verdict's margin
  falls. Model-agnostic and faithful by construction (it asks the model itself, no gradients), at the cost
  of one forward pass per square (49 per image): the default for a model without [CLS] token (PVTv2),
  where Grad-CAM's maps depend on how the model happened to train.

Heatmaps are float32 arrays stretched to [0, 1] per image (all zeros when nothing is found): they say where,
relative to the rest of the same image, not how much.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitdetect.config.labels import CLASS_NAMES
from vitdetect.data.dataset import ImageSet
from vitdetect.data.transforms import to_model_input
from vitdetect.errors import UsageError
from vitdetect.inference.scoring import TrainedModel, fake_probability
from vitdetect.models.build import LogitsOnly, encoder_blocks, is_vit

METHODS = ("rollout", "gradcam", "occlusion")
PACKAGES = {"gradcam": ("pytorch_grad_cam", "grad-cam"), "occlusion": ("captum", "captum")}  # import, PyPI name
EXPLAIN_BATCH = 64
MISTAKE_KINDS = {"REAL called FAKE": (0, True), "FAKE called REAL": (1, False)}  # true label, called FAKE


@dataclass
class Explanations:
    """Heatmaps (N x S x S at the stored size S) and the P(FAKE) of the same forward passes."""

    heatmaps: np.ndarray
    p_fake: np.ndarray


def explain_images(
    trained: TrainedModel,
    images: torch.Tensor,
    method: str | None = None,
    threshold: float | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = EXPLAIN_BATCH,
) -> Explanations:
    """Heatmaps for Nx3xSxS uint8 images, explaining each image's verdict at threshold (default: the
    checkpoint's), by method (default: the model's own, see default_method). One process, no gathering: callable
    from the main process of a distributed run."""
    method = method or default_method(trained.model)
    check_method(method)
    verdict = _Verdict(trained.temperature, trained.threshold if threshold is None else threshold)
    model = trained.model.to(device).eval()
    maps, logits = [], []
    for start in range(0, len(images), batch_size):
        pixels = to_model_input(images[start:start + batch_size].to(device), trained.prep)
        grid, scores = _METHOD_FUNCTIONS[method](model, pixels, verdict)
        maps.append(_to_image_size(grid, trained.prep.storage_size))
        logits.append(scores.detach().float().cpu())
    size = trained.prep.storage_size
    if not maps:
        return Explanations(np.zeros((0, size, size), dtype=np.float32), np.zeros(0))
    return Explanations(np.concatenate(maps), fake_probability(torch.cat(logits), trained.temperature))


def heatmaps(trained: TrainedModel, images: torch.Tensor, method: str | None = None, **options) -> np.ndarray:
    """Only the heatmaps of explain_images()."""
    return explain_images(trained, images, method, **options).heatmaps


def default_method(model: torch.nn.Module) -> str:
    """Attention rollout for a ViT, which has a [CLS] token to follow; occlusion for a model without one (PVTv2)."""
    return "rollout" if is_vit(model) else "occlusion"


def check_method(method: str) -> None:
    """Fail at once, before any long work, on an unknown method or a missing package (grad-cam, captum)."""
    if method not in METHODS:
        raise UsageError(f"unknown explanation method '{method}' (choose from {', '.join(METHODS)})")
    if method in PACKAGES:
        module, package = PACKAGES[method]
        try:
            importlib.import_module(module)
        except ImportError:
            raise UsageError(f"--explain-method {method} needs the {package} package: pip install "
                             "'vitdetect[explain]' (or, on a ViT, --explain-method rollout)") from None


@contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Eager attention (which returns its weights) for the duration of the block, then the previous one."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def attention_rollout(model: torch.nn.Module, pixels: torch.Tensor, verdict: _Verdict | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """N x g x g: the [CLS] token's rolled-out attention to each patch of the g x g grid; and the logits.
    Class-agnostic: verdict is accepted (and ignored) so that every method has one signature."""
    if not is_vit(model):
        raise UsageError(f"attention rollout follows a ViT's [CLS] token, which {type(model).__name__} does not "
                         "have: use --explain-method gradcam")
    with torch.no_grad(), eager_attention(model):
        output = model(pixel_values=pixels, output_attentions=True)
    tokens = output.attentions[0].shape[-1]
    identity = torch.eye(tokens, device=pixels.device)
    rollout = identity.expand(len(pixels), tokens, tokens)
    for attention in output.attentions:
        mixed = 0.5 * attention.float().mean(dim=1) + 0.5 * identity  # heads averaged, plus the residual
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    return _patch_grid(rollout[:, 0, 1:]), output.logits


class _Verdict:
    """Grad-CAM target: the logit margin of the image's verdict (FAKE when P(FAKE) >= threshold) over the
    other class, what P(FAKE) depends on. Decided from the same forward pass, so no extra one is needed."""

    def __init__(self, temperature: float, threshold: float):
        self.temperature, self.threshold = temperature, threshold

    def calls_fake(self, logits: torch.Tensor) -> bool:
        """Whether one image's logits mean FAKE at the threshold."""
        return bool(torch.softmax(logits.detach().double() / self.temperature, dim=-1)[1] >= self.threshold)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        margin = logits[1] - logits[0]
        return margin if self.calls_fake(logits) else -margin


def grad_cam(model: torch.nn.Module, pixels: torch.Tensor, verdict: _Verdict) -> tuple[torch.Tensor, torch.Tensor]:
    """N x H x W Grad-CAM maps at the model's input size, for the margin of each image's verdict; and the logits."""
    check_method("gradcam")

    target_layer, to_grid, method = _gradcam_layer(model, pixels.shape[-1])
    try:
        with torch.enable_grad(), method(LogitsOnly(model), [target_layer], reshape_transform=to_grid) as cam:
            maps = cam(input_tensor=pixels, targets=[verdict] * len(pixels))
            logits = cam.outputs.detach()
    finally:
        model.zero_grad(set_to_none=True)  # leave no gradients on the caller's model
    return torch.from_numpy(maps), logits


def _gradcam_layer(model: torch.nn.Module, side: int) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor],
                                                                type]:
    """The layer Grad-CAM reads on side x side inputs, how its N x tokens x D output becomes N x D x g x g, and
    the grad-cam class that weighs it (see the module's docstring for why a ViT's is element-wise)."""
    from pytorch_grad_cam import GradCAM, GradCAMElementWise

    if is_vit(model):
        return (encoder_blocks(model)[-1].layernorm_before, lambda tokens: _tokens_to_grid(tokens[:, 1:]),
                GradCAMElementWise)
    config = model.config  # PVTv2: each stage's tokens are a grid; the last one may be too coarse to show much
    grids = [side // math.prod(config.strides[:stage + 1]) for stage in range(len(config.strides))]
    stage = max([i for i, grid in enumerate(grids) if grid >= 4], default=len(grids) - 1)
    return model.base_model.encoder.layers[stage].layer_norm, _tokens_to_grid, GradCAM


def occlusion(model: torch.nn.Module, pixels: torch.Tensor, verdict: _Verdict) -> tuple[torch.Tensor, torch.Tensor]:
    """N x H x W: how far the verdict's logit margin falls when each region is hidden (captum's Occlusion);
    and the logits. Squares of a quarter of the side, half-overlapping; hidden means 0 after normalisation,
    the normalisation's mean colour."""
    check_method("occlusion")
    from captum.attr import Occlusion

    side = max(1, pixels.shape[-1] // 4)
    stride = max(1, side // 2)
    classify = LogitsOnly(model)
    with torch.no_grad():
        logits = classify(pixels)
        signs = torch.tensor([1.0 if verdict.calls_fake(row) else -1.0 for row in logits], device=pixels.device)
        squares = 1 + (pixels.shape[-1] - side) // stride

        def margin(inputs: torch.Tensor) -> torch.Tensor:  # captum stacks whole copies of the batch
            scores = classify(inputs)
            return (scores[:, 1] - scores[:, 0]) * signs.repeat(len(inputs) // len(signs))

        drops = Occlusion(margin).attribute(pixels, sliding_window_shapes=(pixels.shape[1], side, side),
                                            strides=(pixels.shape[1], stride, stride), baselines=0.0,
                                            perturbations_per_eval=squares)
    return drops.sum(dim=1).clamp(min=0), logits


_METHOD_FUNCTIONS = {"rollout": attention_rollout, "gradcam": grad_cam, "occlusion": occlusion}


def _tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """N x (g*g) x D activations -> N x D x g x g: the layout Grad-CAM pools over."""
    side = math.isqrt(tokens.shape[1])
    return tokens.reshape(len(tokens), side, side, -1).permute(0, 3, 1, 2)


def _patch_grid(values: torch.Tensor) -> torch.Tensor:
    side = math.isqrt(values.shape[1])
    return values.reshape(len(values), side, side)


def _to_image_size(grid: torch.Tensor, size: int) -> np.ndarray:
    """Upsample N x h x w maps to N x size x size and stretch each to [0, 1] (min to max, as grad-cam does)."""
    maps = grid.detach().float().cpu()[:, None]
    if maps.shape[-1] != size:
        maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    maps = maps[:, 0].clamp_(min=0)
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    peak = maps.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp(min=1e-12), maps).numpy().astype(np.float32)


def confident_mistakes(labels: np.ndarray, p_fake: np.ndarray, threshold: float, count: int) -> dict[str, np.ndarray]:
    """Indices of the `count` most confident mistakes of each kind, most confident first."""
    called_fake = np.asarray(p_fake) >= threshold
    mistakes = {}
    for kind, (label, fake) in MISTAKE_KINDS.items():
        wrong = np.flatnonzero((labels == label) & (called_fake == fake))
        order = np.argsort(-p_fake[wrong] if fake else p_fake[wrong], kind="stable")
        mistakes[kind] = wrong[order[:count]]
    return mistakes


def error_gallery(path: Path, trained: TrainedModel, images: ImageSet, mistakes: dict[str, np.ndarray],
                  method: str, threshold: float, fmt: str = "png", device: torch.device | str = "cpu") -> None:
    """Draw the gallery of mistakes (each kind one block of columns) with their heatmaps."""
    from vitdetect.reports.overlays import Explained, draw_error_gallery

    rows = {}
    for kind, indices in mistakes.items():
        found = explain_images(trained, images.images[indices], method, threshold, device)
        rows[kind] = [Explained(as_picture(images.images[i]), heat, float(p), CLASS_NAMES[int(p >= threshold)],
                                Path(images.paths[i]).name)
                      for i, heat, p in zip(indices.tolist(), found.heatmaps, found.p_fake, strict=True)]
    draw_error_gallery(path, rows, method, fmt)


def as_picture(image: torch.Tensor) -> np.ndarray:
    """3xHxW uint8 -> HxWx3 for drawing."""
    return image.permute(1, 2, 0).cpu().numpy()
