"""From-scratch model presets (`--model scratch:NAME`): an architecture and the recipe that trains it.

No torch here: settings.py reads the recipes, model.py builds the architectures. A preset's recipe,
its number of epochs included, applies to every setting the user did not give.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCRATCH_PREFIX = "scratch:"

# A randomly initialised backbone is useless frozen: presets train everything, with the usual
# from-scratch ViT recipe. Augmentation keeps pixel statistics (flip, no rotation or colour jitter):
# rotation resampling blurs and colour jitter shifts the very statistics that give generated images
# away, which a frozen ImageNet backbone tolerates but a detector learning from scratch pays for.
FROM_SCRATCH = {"train_mode": "full", "lr": 5e-4, "weight_decay": 0.05, "schedule": "cosine",
                "warmup_ratio": 0.1, "rotation_degrees": 0.0, "color_jitter": False}


@dataclass(frozen=True)
class Preset:
    architecture: dict[str, Any]  # the config keys of the transformers model_type below
    summary: str
    recipe: dict[str, Any] = field(default_factory=lambda: dict(FROM_SCRATCH))
    model_type: str = "vit"  # ViTForImageClassification unless an ablation shows a reason to leave it


def _vit(hidden: int, layers: int, heads: int, mlp: int, image: int, patch: int) -> dict[str, int]:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
                image_size=image, patch_size=patch)


# Width 128, 6 blocks, 4 heads, MLP 512, 4x4 patches at 32x32: the architecture of the best recipes.
P4_128 = _vit(128, 6, 4, 512, 32, 4)
# PVTv2 at 32x32: 4 stages of 2 blocks, 3x3 patch embeddings at stride 2 (16x16, 8x8, 4x4, 2x2 token grids).
PVT_V2_32 = dict(image_size=32, hidden_sizes=[32, 64, 128, 256], patch_sizes=[3, 3, 3, 3], strides=[2, 2, 2, 2],
                 sr_ratios=[8, 4, 2, 1], num_attention_heads=[1, 2, 4, 8], mlp_ratios=[4, 4, 4, 4])
PVT_V2_32_RECIPE = {**FROM_SCRATCH, "lr": 2e-3, "distill": True, "crop_padding": 4}

PRESETS: dict[str, Preset] = {
    "vit-tiny-32": Preset(_vit(192, 6, 3, 768, 32, 4), "2.7M parameters, CIFAKE's native 32x32 in 4x4 patches"),
    "vit-micro-32": Preset(_vit(32, 2, 2, 64, 32, 8), "tests and smoke runs"),
    "vit-small-224": Preset(_vit(384, 6, 6, 1536, 224, 16), "ViT-B/16's 224 input at a CPU-friendly width"),
    # The 20k-subset recipe without a teacher (README "Model zoo", run B): 0.9094 official-test accuracy.
    "vit-p4-128": Preset(P4_128, "1.2M parameters at 32x32 in 4x4 patches, width 128",
                         {**FROM_SCRATCH, "epochs": 24}),
    # B's architecture and recipe taught by the small CNN (vitdetect.training.distill), without leaving
    # ViTForImageClassification: 0.9210 official-test accuracy (README "Model zoo", run F); 0.9244 with
    # --augment-jpeg 0.5 --augment-blur 0.5 (run G).
    "vit-p4-128-kd": Preset(P4_128, "vit-p4-128 distilled from the 288k-parameter CNN",
                            {**FROM_SCRATCH, "epochs": 24, "distill": True}),
    # G's recipe for the full train split of cifake-full.zip (75k training images): 8 teacher epochs (4.7x the
    # images per epoch), then 20 ViT epochs: 0.9529 official-test accuracy (run I, the built-in detector until L);
    # 8 ViT epochs gave 0.9413 (run H), still rising when its schedule ended.
    "vit-p4-128-kd-full": Preset(P4_128, "vit-p4-128-kd with robust training, for the full "
                                 "train split", {**FROM_SCRATCH, "epochs": 20, "distill": True, "teacher_epochs": 8,
                                                 "augment_jpeg": 0.5, "augment_blur": 0.5}),
    # A pyramid vision transformer (PVTv2, Wang et al. 2022): overlapping 3x3 convolutional patch embeddings
    # (stride 2: 16x16, 8x8, 4x4, 2x2 token grids), a 3x3 depthwise convolution in every MLP, spatial-reduction
    # attention, mean-pooled tokens. The ViT presets see a 32x32 image as 64 disjoint 4x4 patches and must learn
    # CIFAKE's local pixel cues from them; this one gets the locality a convolution has. With a reflect-padded
    # random crop (shifts, no resampling) it reaches 0.9542 official-test accuracy in 49 minutes on 2 CPU cores,
    # above the small CNN (README "Model zoo", run K; run J without the crop: 0.9460).
    "pvt-v2-32": Preset(PVT_V2_32, "2.9M parameters, PVTv2 at 32x32: convolutional patch embeddings, pyramid "
                        "of 4 stages", {**PVT_V2_32_RECIPE, "epochs": 40}, model_type="pvt_v2"),
    # pvt-v2-32 for the full train split of cifake-full.zip (75k training images, 4.7x the subset's per epoch):
    # 8 teacher epochs as in vit-p4-128-kd-full, then 20 epochs: 0.9705 official-test accuracy, ROC AUC 0.9962,
    # above the CNN it was distilled from (README "Model zoo", run L, the built-in detector).
    "pvt-v2-32-full": Preset(PVT_V2_32, "pvt-v2-32's recipe for the full train split",
                             {**PVT_V2_32_RECIPE, "epochs": 20, "teacher_epochs": 8}, model_type="pvt_v2"),
    "vit-p2-64": Preset(_vit(64, 8, 2, 256, 32, 2), "0.4M parameters at 32x32 in 2x2 patches (256 tokens), width 64"),
}


def preset_name(model: str) -> str | None:
    """The preset a --model value names, or None for hub ids and local folders."""
    return model.removeprefix(SCRATCH_PREFIX) if model.startswith(SCRATCH_PREFIX) else None


def recipe_for(model: str) -> dict[str, Any]:
    """The settings a preset brings (empty for other models; an unknown preset fails later, in model.py)."""
    name = preset_name(model)
    if name is None:
        return {}
    preset = PRESETS.get(name)
    return dict(preset.recipe) if preset else dict(FROM_SCRATCH)
