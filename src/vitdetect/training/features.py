"""The head recipe's feature cache: with the backbone frozen, run it once per image view and train the
classifier on the stored [CLS] features instead of on images."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from vitdetect.config.settings import TrainSettings
from vitdetect.data.dataset import TensorBatches, keep_batch
from vitdetect.data.transforms import Preprocessing, to_model_input
from vitdetect.utils.progress import Reporter


def extract_features(
    model: torch.nn.Module,
    images: torch.Tensor,
    prep: Preprocessing,
    augmentation: torch.nn.Module | None,
    views: int,
    settings: TrainSettings,
    accelerator,
    reporter: Reporter,
    description: str,
) -> torch.Tensor:
    """The frozen backbone's [CLS] features of every image, once per view: N x D, or N x V x D.

    Processes each compute their shard and the shards are gathered, so every process ends up
    with all features in image order.
    """
    indices = torch.arange(len(images))
    loader = accelerator.prepare_data_loader(
        torch.utils.data.DataLoader(TensorBatches(images, indices), batch_size=settings.batch_size,
                                    collate_fn=keep_batch, pin_memory=accelerator.device.type == "cuda")
    )
    hidden = model.config.hidden_size
    features = torch.empty(len(images), views, hidden, device=accelerator.device)
    model.eval()
    with torch.inference_mode(), reporter.task(description, len(images) * views, transient=True) as bar:
        for view in range(views):
            for batch, index in loader:
                pixels = to_model_input(batch, prep, augmentation)
                with accelerator.autocast():
                    cls = model.vit(pixel_values=pixels).last_hidden_state[:, 0]
                cls, index = accelerator.gather_for_metrics((cls.float(), index))
                features[index, view] = cls
                bar.advance(len(index))
    return features if views > 1 else features[:, 0]


@contextmanager
def single_threaded(enabled: bool) -> Iterator[None]:
    """One intra-op thread while enabled. Training the head on cached features is a few tiny ops per
    batch; handing them to a second CPU thread costs more than the work (20x more on a busy machine)."""
    threads = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if enabled:
            torch.set_num_threads(threads)
