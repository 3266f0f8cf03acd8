"""The robustness suite's perturbations do what their names say, measured on images with known content."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vitdetect.config.commands import EvaluateSettings
from vitdetect.data.perturbations import FAMILIES, PERTURBATIONS, SUITE, has_webp, resolve_suite
from vitdetect.errors import UsageError


def photo_like(count: int = 6, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth colour gradients and blobs with a little sensor noise, never JPEG-compressed: Nx3xSxS uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        channels = [128 + 80 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y + rng.uniform()))
                    for _ in range(3)]
        images.append(np.stack(channels) + rng.normal(0, 3, (3, size, size)))
    return torch.from_numpy(np.clip(np.round(images), 0, 255).astype(np.uint8))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_every_perturbation_keeps_shape_and_dtype():
    images = photo_like(3, 32)
    for perturbation in SUITE:
        out = perturbation(images, seed=0)
        assert out.shape == images.shape and out.dtype == torch.uint8, perturbation.name


def test_jpeg_is_a_real_lossy_codec_losing_more_at_lower_quality():
    images = photo_like()
    scores = []
    for quality in (95, 75, 50, 30):
        out = PERTURBATIONS[f"jpeg-{quality}"](images, seed=0)
        assert not torch.equal(out, images)  # lossy: the pixels change
        scores.append(psnr(out, images))
        # The same bytes as Pillow's encoder at that quality (both libjpeg): a real codec, not an imitation.
        for image, ours in zip(images, out, strict=True):
            buffer = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
            pillow = np.asarray(Image.open(buffer).convert("RGB"))
            assert np.array_equal(ours.permute(1, 2, 0).numpy(), pillow)
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4, scores
    assert scores[0] > 35 and scores[-1] < scores[0] - 3, scores


def test_png_round_trip_is_the_identity():
    images = photo_like()
    assert torch.equal(PERTURBATIONS["png"](images, seed=0), images)


@pytest.mark.skipif(not has_webp(), reason="Pillow without WebP: the WebP re-saves are left out of the suite")
def test_webp_resaves_are_the_real_codec_lossless_and_at_quality_80():
    images = photo_like()
    assert torch.equal(PERTURBATIONS["webp-lossless"](images, seed=0), images)
    lossy = PERTURBATIONS["webp-80"](images, seed=0)
    assert not torch.equal(lossy, images) and 30 < psnr(lossy, images) < 60
    for image, ours in zip(images, lossy, strict=True):  # the bytes Pillow's own WebP encoder gives
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "WEBP", quality=80)
        assert buffer.getvalue()[8:12] == b"WEBP"
        assert np.array_equal(ours.permute(1, 2, 0).numpy(), np.asarray(Image.open(buffer).convert("RGB")))


def test_jpeg_100_is_a_nearly_lossless_real_jpeg_resave():
    images = photo_like()
    out = PERTURBATIONS["jpeg-100"](images, seed=0)
    assert not torch.equal(out, images) and psnr(out, images) > psnr(PERTURBATIONS["jpeg-95"](images, seed=0), images)
    assert PERTURBATIONS["jpeg-100"].family == "resave" and PERTURBATIONS["jpeg-100"] not in resolve_suite("jpeg")


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_spreads_an_edge_by_sigma(sigma):
    """A black-to-white edge blurred by a Gaussian has a Gaussian slope: its spread is sigma."""
    edge = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    edge[..., 16:] = 255
    profile = PERTURBATIONS[f"blur-{sigma:g}"](edge, seed=0)[0, 0, 16].double()
    slope = torch.diff(profile)
    assert slope.sum() == 255 and (slope >= 0).all()
    positions = torch.arange(31, dtype=torch.float64) + 0.5
    centre = (slope * positions).sum() / 255
    assert centre.item() == pytest.approx(15.5, abs=0.05)  # between the last black and first white pixel
    measured = torch.sqrt((slope * (positions - centre) ** 2).sum() / 255).item()
    assert measured == pytest.approx(sigma, rel=0.1)


def test_downscale_removes_detail_finer_than_the_scale_and_keeps_flat_areas():
    checkerboard = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 200 + 20).to(torch.uint8)
    images = checkerboard.expand(1, 3, 32, 32).contiguous()
    for factor in (2, 4):
        out = PERTURBATIONS[f"downscale-{factor}"](images, seed=0).double()
        assert out.std() < 2 and out.mean() == pytest.approx(120, abs=2)  # the 1-pixel pattern averages out
    flat = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(PERTURBATIONS["downscale-4"](flat, seed=0), flat)


@pytest.mark.parametrize("sigma", [2, 5, 10])
def test_noise_has_its_sigma_in_0_255_units_and_is_seeded(sigma):
    grey = torch.full((4, 3, 64, 64), 128, dtype=torch.uint8)  # far from 0 and 255: nothing clipped
    perturbation = PERTURBATIONS[f"noise-{sigma}"]
    out = perturbation(grey, seed=1)
    difference = out.double() - 128
    assert difference.std().item() == pytest.approx(sigma, rel=0.03)
    assert abs(difference.mean().item()) < 0.1
    assert torch.equal(perturbation(grey, seed=1), out) and not torch.equal(perturbation(grey, seed=2), out)


def test_suite_names_families_and_order():
    resaves = ["webp-lossless", "jpeg-100", "webp-80"] if has_webp() else ["jpeg-100"]
    assert [p.name for p in SUITE] == ["jpeg-95", "jpeg-75", "jpeg-50", "jpeg-30", "blur-0.5", "blur-1", "blur-2",
                                       "downscale-2", "downscale-4", "noise-2", "noise-5", "noise-10", "png",
                                       *resaves]
    assert FAMILIES == ("jpeg", "blur", "downscale", "noise", "png", "resave")
    assert [p.name for p in resolve_suite("resave")] == resaves
    assert [p.name for p in resolve_suite("noise-5, JPEG")] == ["jpeg-95", "jpeg-75", "jpeg-50", "jpeg-30",
                                                                "noise-5"]
    assert resolve_suite("all") == list(SUITE)
    for spec in ("jpeg-80", "blur,sharpen", ","):
        with pytest.raises(UsageError, match="unknown perturbation"):
            resolve_suite(spec)


def test_the_flag_help_lists_every_perturbation():
    described = EvaluateSettings.model_fields["perturbations"].description
    assert all(name in described for name in [*PERTURBATIONS, *FAMILIES])
