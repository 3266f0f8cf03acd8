"""Explanation heatmaps as small PNGs for JSON: the serving side of `Detector.explain`.

`Detector.explain(images)` returns one HxW float map per image (the model's own method: attention rollout for a
ViT, occlusion for a model without [CLS] token such as the pvt-v2-32 preset).
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

COLORMAP = "inferno"


def heatmap_png(heatmap: np.ndarray) -> str:
    """One HxW map, scaled to its own range and coloured (inferno: dark = little, bright = much), as base64 PNG."""
    from matplotlib import colormaps

    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    span = values.max() - values.min()
    scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    rgb = (colormaps[COLORMAP](scaled)[..., :3] * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
