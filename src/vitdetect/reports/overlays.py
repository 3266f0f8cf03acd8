"""Drawing explanations: an image with its heatmap over it (predict --explain) and the gallery of
confident mistakes (evaluate --explain-errors). Images are drawn nearest-neighbour so their pixels stay
visible; heatmaps come from `vitdetect.inference.explain`. No torch here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitdetect.reports.figures import CLASS_COLOURS, save

HEATMAP_COLOURS = "inferno"
HEATMAP_ALPHA = 0.55
METHOD_NAMES = {"rollout": "attention rollout", "gradcam": "Grad-CAM", "occlusion": "occlusion"}


@dataclass(frozen=True)
class Explained:
    """One judged image as the model saw it (HxWx3 uint8 at the stored size) and its heatmap."""

    picture: np.ndarray
    heatmap: np.ndarray
    p_fake: float
    label: str  # the verdict: "REAL" or "FAKE"
    name: str


def overlay(ax, item: Explained) -> None:
    ax.imshow(item.picture, interpolation="nearest")
    ax.imshow(item.heatmap, cmap=HEATMAP_COLOURS, alpha=HEATMAP_ALPHA, vmin=0, vmax=1, interpolation="bilinear")
    ax.set_axis_off()


def picture(ax, item: Explained) -> None:
    ax.imshow(item.picture, interpolation="nearest")
    ax.set_axis_off()


def draw_explanation(path: Path, item: Explained, method: str, threshold: float, fmt: str = "png") -> Path:
    """One figure: the image, and the image with the heatmap over it; the verdict and P(FAKE) on top."""

    def draw(figure) -> None:
        figure.set_size_inches(7, 4.2)
        left, right = figure.subplots(1, 2)
        picture(left, item)
        left.set_title(f"{item.name}\n{item.picture.shape[1]}x{item.picture.shape[0]} as the model sees it",
                       fontsize="small")
        overlay(right, item)
        right.set_title(f"{METHOD_NAMES[method]} heatmap", fontsize="small")
        figure.suptitle(f"{item.label}: P(FAKE) = {item.p_fake:.4f} (FAKE when >= {threshold:.4g})",
                        color=CLASS_COLOURS[item.label], fontweight="bold")

    return save(path, fmt, draw)


def draw_error_gallery(path: Path, rows: dict[str, list[Explained]], method: str, fmt: str = "png") -> Path:
    """Per kind of mistake two rows, the images and their heatmaps, most confident mistake on the left."""
    columns = max([len(items) for items in rows.values()] + [1])

    def draw(figure) -> None:
        figure.set_size_inches(max(6.0, 1.5 * columns), 1.9 * 2 * len(rows) + 0.6)
        grid = figure.subplots(2 * len(rows), columns, squeeze=False)
        for block, (kind, items) in enumerate(rows.items()):
            top, bottom = grid[2 * block], grid[2 * block + 1]
            for column in range(columns):
                top[column].set_axis_off()
                bottom[column].set_axis_off()
                if column < len(items):
                    item = items[column]
                    picture(top[column], item)
                    top[column].set_title(f"P(FAKE) {item.p_fake:.3f}\n{item.name}", fontsize="x-small")
                    overlay(bottom[column], item)
            true_label = kind.split()[0]
            top[0].text(-0.15, 0.5, kind if items else f"{kind}: none", transform=top[0].transAxes,
                        rotation=90, ha="right", va="center", color=CLASS_COLOURS[true_label], fontweight="bold")
        figure.suptitle(f"Most confident mistakes, {METHOD_NAMES[method]} heatmaps under each image",
                        fontweight="bold")

    return save(path, fmt, draw)


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, with -2, -3, ... added to repeats (a.jpg and a.png, or the same name in two folders)."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem, number = Path(path).stem, 1
        while (stem if number == 1 else f"{stem}-{number}") in used:
            number += 1
        stems.append(stem if number == 1 else f"{stem}-{number}")
        used.add(stems[-1])
    return stems
