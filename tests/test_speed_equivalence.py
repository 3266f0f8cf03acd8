"""The fast paths compute what the slow ones do: cached features vs the per-epoch backbone pass,
and the batched tensor preprocessing vs the reference's PIL transforms."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from conftest import REAL_CIFAKE, make_image
from vitdetect.config.run_files import BEST_NAME, LAST_NAME
from vitdetect.config.settings import TrainSettings
from vitdetect.data.decode import decode_rgb
from vitdetect.data.transforms import Preprocessing, to_model_input
from vitdetect.models.build import load_model
from vitdetect.models.checkpoint import load_checkpoint
from vitdetect.training.trainer import train

MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def classifier_weights(path):
    state = load_checkpoint(path)["state_dict"]
    return {name: value for name, value in state.items() if name.startswith("classifier.")}


def test_cached_features_and_per_epoch_backbone_train_the_same_head(tiny_data, tiny_model_dir, tmp_path):
    from accelerate.utils import set_seed

    runs = {}
    for feature_cache in (True, False):
        settings = TrainSettings(
            data_dir=tiny_data, output_dir=tmp_path / f"cache-{feature_cache}", model=str(tiny_model_dir),
            train_mode="head", epochs=1, batch_size=16, lr=1e-2, augment=False, feature_cache=feature_cache,
            cache_dir=tmp_path / "cache", quiet=True,
        )
        runs[feature_cache] = (train(settings), classifier_weights(settings.output_dir / BEST_NAME))
    (cached, cached_head), (per_epoch, per_epoch_head) = runs[True], runs[False]

    assert cached_head.keys() == per_epoch_head.keys() == {"classifier.weight", "classifier.bias"}
    for name in cached_head:
        torch.testing.assert_close(cached_head[name], per_epoch_head[name], rtol=1e-5, atol=1e-6)
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert cached.state.epochs[0][key] == pytest.approx(per_epoch.state.epochs[0][key], rel=1e-5, abs=1e-6)
    set_seed(0)
    initial, _ = load_model(str(tiny_model_dir))
    assert not torch.allclose(initial.classifier.weight, cached_head["classifier.weight"], atol=1e-3)  # it trained
    backbone = {k: v for k, v in load_checkpoint(tmp_path / "cache-True" / LAST_NAME)["state_dict"].items()
                if k.startswith("vit.")}
    for name, value in initial.vit.state_dict().items():  # and the frozen backbone stayed as loaded
        torch.testing.assert_close(backbone[f"vit.{name}"], value, rtol=0, atol=0)


def pil_reference(image: Image.Image, size: int) -> torch.Tensor:
    """The reference's preprocessing without augmentation: PIL bilinear resize, ToTensor, Normalize."""
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BILINEAR), T.ToTensor(),
                      T.Normalize(*MEAN_STD)])(image)


def synthetic(size: int) -> np.ndarray:
    return np.asarray(make_image(1, np.random.default_rng(size), size))


def real_cifake() -> np.ndarray:
    if not REAL_CIFAKE.is_dir():
        pytest.skip(f"real CIFAKE not found at {REAL_CIFAKE}")
    return decode_rgb(next(iter(sorted((REAL_CIFAKE / "test" / "REAL").iterdir()))))


@pytest.mark.parametrize(
    ("pixels", "model_size"),
    [(lambda: synthetic(32), 224), (real_cifake, 224), (lambda: synthetic(96), 32)],
    ids=["synthetic-32-up-to-224", "cifake-32-up-to-224", "synthetic-96-down-to-32"],
)
def test_tensor_pipeline_matches_the_pil_reference(pixels, model_size):
    """PIL resizes in two separable passes and rounds to uint8 after each, so it may differ from the
    float pipeline by up to one uint8 level (1/255 before normalization): the tolerance. On average
    the two agree far closer than that, with no bias."""
    array = pixels()
    reference = pil_reference(Image.fromarray(array), model_size)
    prep = Preprocessing(model_size, array.shape[0], *MEAN_STD)
    ours = to_model_input(torch.from_numpy(array.copy()).permute(2, 0, 1)[None], prep)[0]

    assert ours.shape == reference.shape == (3, model_size, model_size)
    one_level = 1 / 255 / MEAN_STD[1][0]  # one uint8 step, after normalization
    difference = ours - reference
    assert difference.abs().max() <= one_level * 1.001
    assert difference.abs().mean() <= one_level / 2
    assert abs(difference.mean()) <= one_level / 20
