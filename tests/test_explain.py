"""Explanations explain: a model that can only tell FAKE by a planted patch gets heatmaps on that patch.
Plus the API (Detector.explain), predict --explain and evaluate --explain-errors."""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import make_dataset, run_main, seed_for_learning_tests, user_error
from vitdetect import Detector
from vitdetect.data.transforms import Preprocessing, to_model_input
from vitdetect.inference.explain import METHODS, confident_mistakes, explain_images, heatmaps
from vitdetect.inference.scoring import TrainedModel, fake_probabilities
from vitdetect.models.build import load_model
from vitdetect.models.checkpoint import model_payload, save_checkpoint

SIZE, TOP, LEFT, SIDE = 32, 4, 20, 8  # the planted patch: 8x8 pixels (2x2 of the model's 4x4 patches)
PATCH = np.zeros((SIZE, SIZE), dtype=bool)
PATCH[TOP:TOP + SIDE, LEFT:LEFT + SIDE] = True
SEED = seed_for_learning_tests(0)  # the planted models' seed


def planted_images(count: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random colour fields; FAKE (odd indices) differ only by a black-and-white checkerboard in PATCH."""
    coarse = torch.from_numpy(rng.integers(0, 256, (count, 3, 4, 4)).astype(np.float32))
    images = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images += torch.from_numpy(rng.normal(0, 8, images.shape).astype(np.float32))
    labels = torch.arange(count) % 2
    rows, columns = np.mgrid[0:SIDE, 0:SIDE]
    images[labels == 1, :, TOP:TOP + SIDE, LEFT:LEFT + SIDE] = torch.from_numpy((rows + columns) % 2 * 255.0).float()
    return images.clamp(0, 255).round().to(torch.uint8), labels


def train_planted(model: torch.nn.Module) -> tuple[TrainedModel, torch.Tensor, torch.Tensor]:
    """model trained (4 epochs, one thread) to tell the planted patch; its held-out test images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    train_images, train_labels = planted_images(1024, rng)
    test_images, test_labels = planted_images(256, rng)
    prep = Preprocessing(SIZE, SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(4):
        order = torch.randperm(len(train_images))
        for start in range(0, len(order), 64):
            batch = order[start:start + 64]
            logits = model(pixel_values=to_model_input(train_images[batch], prep)).logits
            loss = F.cross_entropy(logits, train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    torch.set_num_threads(threads)
    return TrainedModel(model, prep, 0.5, {}), test_images, test_labels


@pytest.fixture(scope="module")
def planted():
    """A tiny ViT (4x4 patches) trained to tell the planted patch."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(SEED)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=SIZE, patch_size=4, num_labels=2)
    return train_planted(ViTForImageClassification(config))


@pytest.fixture(scope="module")
def planted_pyramid():
    """A tiny PVTv2 (the pvt-v2-32 preset's layout at quarter width) trained to tell the planted patch."""
    from transformers import PvtV2Config, PvtV2ForImageClassification

    torch.manual_seed(SEED)
    config = PvtV2Config(image_size=SIZE, hidden_sizes=[8, 16, 32, 64], patch_sizes=[3, 3, 3, 3],
                         strides=[2, 2, 2, 2], num_attention_heads=[1, 1, 2, 2], mlp_ratios=[2, 2, 2, 2], num_labels=2)
    return train_planted(PvtV2ForImageClassification(config))


def patch_share(maps: np.ndarray) -> np.ndarray:
    """Share of each heatmap's mass that lies on the planted patch."""
    return maps[:, PATCH].sum(axis=1) / np.maximum(maps.sum(axis=(1, 2)), 1e-12)


@pytest.mark.parametrize("model, method", [("planted", "rollout"), ("planted", "gradcam"), ("planted", "occlusion"),
                                           ("planted_pyramid", "occlusion")])
def test_heatmaps_find_the_planted_patch(model, method, request):
    trained, images, labels = request.getfixturevalue(model)
    with torch.no_grad():
        predicted = trained.model(pixel_values=to_model_input(images, trained.prep)).logits.argmax(-1)
    assert (predicted == labels).float().mean() >= 0.95  # the model learned the patch

    area = PATCH.mean()  # 1/16 of the image
    fake = heatmaps(trained, images[labels == 1], method)
    assert fake.shape == (int((labels == 1).sum()), SIZE, SIZE) and fake.dtype == np.float32
    assert fake.min() >= 0 and fake.max() <= 1
    shares = patch_share(fake)
    assert shares.mean() >= 4 * area, f"{method}: {shares.mean():.3f} of the mass on {area:.3f} of the area"
    assert np.median(shares) >= 3 * area
    real = patch_share(heatmaps(trained, images[labels == 0], method))
    assert real.mean() < shares.mean() / 2  # the patch, not a place the method always lights up


def test_rollout_needs_a_cls_token_and_says_to_use_gradcam(planted_pyramid):
    from vitdetect.errors import UsageError

    trained, images, _ = planted_pyramid
    with pytest.raises(UsageError, match="PvtV2ForImageClassification does not have: use --explain-method gradcam"):
        heatmaps(trained, images[:1], "rollout")


def test_rollout_switches_to_eager_attention_only_for_the_call(planted):
    trained, images, _ = planted
    assert trained.model.config._attn_implementation == "sdpa"
    heatmaps(trained, images[:2], "rollout")
    assert trained.model.config._attn_implementation == "sdpa"


def test_gradcam_leaves_no_gradients_behind(planted):
    trained, images, _ = planted
    heatmaps(trained, images[:4], "gradcam")
    assert all(parameter.grad is None for parameter in trained.model.parameters())


def test_unknown_method_and_missing_grad_cam_are_clear(planted, monkeypatch):
    from vitdetect.errors import UsageError

    trained, images, _ = planted
    with pytest.raises(UsageError, match="unknown explanation method"):
        heatmaps(trained, images[:1], "saliency")
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # as if grad-cam were not installed
    with pytest.raises(UsageError, match=r"gradcam needs the grad-cam package: pip install 'vitdetect\[explain\]'"):
        heatmaps(trained, images[:1], "gradcam")
    monkeypatch.setitem(sys.modules, "captum", None)
    with pytest.raises(UsageError, match=r"occlusion needs the captum package: pip install 'vitdetect\[explain\]'"):
        heatmaps(trained, images[:1], "occlusion")


def test_detector_explain_returns_one_map_per_image(planted, tmp_path):
    trained, images, labels = planted
    pictures = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images[:3]]
    maps = Detector(trained, batch_size=2).explain([*pictures, b"not an image"], method="gradcam")
    assert len(maps) == 4 and maps[3] is None
    assert all(heat.shape == (SIZE, SIZE) for heat in maps[:3])
    np.testing.assert_allclose(maps[1], heatmaps(trained, images[1:2], "gradcam")[0], atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_explanations_carry_the_verdicts_p_fake(planted, method):
    trained, images, _ = planted
    found = explain_images(trained, images[:8], method, batch_size=3)
    np.testing.assert_allclose(found.p_fake, fake_probabilities(trained, images[:8], 8), atol=1e-5)


def test_confident_mistakes_are_ordered_by_confidence():
    labels = np.array([0, 0, 0, 1, 1, 1, 0])
    p_fake = np.array([0.9, 0.6, 0.1, 0.2, 0.05, 0.8, 0.99])
    mistakes = confident_mistakes(labels, p_fake, 0.5, 2)
    assert mistakes["REAL called FAKE"].tolist() == [6, 0]
    assert mistakes["FAKE called REAL"].tolist() == [4, 3]
    assert confident_mistakes(labels, p_fake, 0.5, 0)["REAL called FAKE"].size == 0


@pytest.fixture
def random_checkpoint(tmp_path):
    torch.manual_seed(1)
    model, (mean, std) = load_model("scratch:vit-micro-32")
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    path = tmp_path / "best_model.pth"
    save_checkpoint(path, model_payload(model, {}, Preprocessing(32, 32, mean, std), 1, {}))
    return path


def test_predict_explain_writes_one_png_per_image(random_checkpoint, tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=2, splits=("test",))
    images = sorted((data / "test").rglob("*.jpg"))  # REAL/0.jpg and FAKE/0.jpg share a name
    (tmp_path / "broken.jpg").write_bytes(b"no")
    for method in METHODS:
        out = tmp_path / f"explained-{method}"
        code, _, err = run_main(capsys, "predict", *images, tmp_path / "broken.jpg", "--checkpoint",
                                random_checkpoint, "--explain", out, "--explain-method", method)
        assert code == 1  # the broken file: an error row, no explanation
        assert sorted(path.name for path in out.iterdir()) == ["0-2.png", "0.png", "1-2.png", "1.png"]
        assert Image.open(out / "0.png").size[0] > 600 and f"wrote 4 explanation(s) ({method})" in err


def test_evaluate_explain_errors_draws_the_gallery(random_checkpoint, tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=6, splits=("test",))
    code, _, err = run_main(capsys, "evaluate", "--checkpoint", random_checkpoint, "--data-dir", data,
                            "--cache-dir", tmp_path / "cache", "--explain-errors", "2", "--explain-method", "gradcam")
    assert code == 0, err
    assert Image.open(tmp_path / "errors.png").size[1] > 500
    assert "confident mistake" in err


def test_explain_flags_are_validated(random_checkpoint, tmp_path, capsys):
    line = user_error(run_main(capsys, "evaluate", "--checkpoint", random_checkpoint, "--explain-errors", "-1"), 2)
    assert "--explain-errors" in line
    line = user_error(run_main(capsys, "predict", "x.png", "--explain-method", "saliency"), 2)
    assert "saliency" in line
