"""Robust training: --augment-jpeg / --augment-blur build kornia's RandomJPEG / RandomGaussianBlur and reach
the training batches."""

import json
from pathlib import Path

import kornia.augmentation as K
import pytest
import torch
from typer.testing import CliRunner

import vitdetect.data.transforms as transforms
from conftest import run_main, user_error
from test_perturbations import photo_like, psnr
from vitdetect.cli import app
from vitdetect.data.transforms import build_augmentation

runner = CliRunner()


def steps_of(augmentation):
    return {type(step): step for step in augmentation}


def drawn(step, key: str, count: int = 2000) -> tuple[torch.Tensor, float]:
    """The values of key a kornia step draws for count images, and the share of images it applies to."""
    params = step.forward_parameters(torch.Size([count, 3, 32, 32]))
    return params[key], params["batch_prob"].float().mean().item()


def test_the_robust_steps_are_added_only_when_asked_with_their_settings():
    plain = steps_of(build_augmentation(0, color_jitter=False))
    assert set(plain) == {K.RandomHorizontalFlip}
    steps = steps_of(build_augmentation(0, color_jitter=False, jpeg=0.3, jpeg_quality=(40, 80), blur=0.6,
                                        blur_sigma=(0.2, 1.5)))
    assert list(steps)[-2:] == [K.RandomGaussianBlur, K.RandomJPEG]  # edited, then saved: blur before JPEG
    assert steps[K.RandomGaussianBlur].flags["kernel_size"] == 11  # covers +-3 sigma at sigma 1.5
    for step, key, share, (low, high) in ((steps[K.RandomJPEG], "jpeg_quality", 0.3, (40, 80)),
                                          (steps[K.RandomGaussianBlur], "sigma", 0.6, (0.2, 1.5))):
        values, applied = drawn(step, key)
        assert applied == pytest.approx(share, abs=0.05)
        assert low <= values.min() < low + 0.1 * (high - low) and high - 0.1 * (high - low) < values.max() <= high


def test_jpeg_augmentation_loses_more_at_lower_quality_and_blur_smooths():
    images = photo_like(8, 32).float() / 255
    torch.manual_seed(0)
    mild, harsh = (build_augmentation(0, False, jpeg=1.0, jpeg_quality=(q, q))[-1](images) for q in (95.0, 20.0))
    assert psnr(mild * 255, images * 255) > psnr(harsh * 255, images * 255) + 3
    noise = torch.rand(8, 3, 32, 32)
    blurred = build_augmentation(0, False, blur=1.0, blur_sigma=(2.0, 2.0))[-1](noise)
    detail = lambda x: torch.diff(x, dim=-1).abs().mean()  # noqa: E731
    assert detail(blurred) < 0.2 * detail(noise)
    untouched = build_augmentation(0, False, jpeg=1e-9, blur=1e-9)
    assert torch.equal(untouched[1](images), images) and torch.equal(untouched[2](images), images)


def test_the_flags_reach_the_training_batches(train_args, monkeypatch, single_thread):
    """Through the CLI: the settings are saved, and the augmentation applied to each training batch holds
    RandomJPEG and RandomGaussianBlur with the given probabilities and ranges."""
    built, calls = [], []
    original = transforms.build_augmentation

    def spy(*args, **kwargs):
        augmentation = original(*args, **kwargs)
        augmentation.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
        built.append(augmentation)
        return augmentation

    monkeypatch.setattr("vitdetect.training.trainer.build_augmentation", spy)  # where the run builds it
    flags = ["--augment-jpeg", "0.7", "--augment-jpeg-quality", "40", "80", "--augment-blur", "0.3",
             "--augment-blur-sigma", "0.5", "1.0"]
    result = runner.invoke(app, [*train_args, *flags])
    assert result.exit_code == 0, result.output
    steps = steps_of(built[0])
    qualities, applied = drawn(steps[K.RandomJPEG], "jpeg_quality")
    assert applied == pytest.approx(0.7, abs=0.05) and 40 <= qualities.min() and qualities.max() <= 80
    sigmas, applied = drawn(steps[K.RandomGaussianBlur], "sigma")
    assert applied == pytest.approx(0.3, abs=0.05) and 0.5 <= sigmas.min() and sigmas.max() <= 1.0
    assert sum(calls) == 38  # every training image of the epoch (80% of 48) went through it once
    output = train_args[train_args.index("--output-dir") + 1]
    saved = json.loads((Path(output) / "config.json").read_text())["settings"]
    assert (saved["augment_jpeg"], saved["augment_jpeg_quality"]) == (0.7, [40.0, 80.0])
    assert (saved["augment_blur"], saved["augment_blur_sigma"]) == (0.3, [0.5, 1.0])


@pytest.mark.parametrize(("flags", "expected"), [
    (["--no-augment", "--augment-jpeg", "0.5"], "cannot be combined with --no-augment"),
    (["--augment-jpeg", "1.5"], "--augment-jpeg"),
    (["--augment-jpeg-quality", "90", "30"], "--augment-jpeg-quality: needs LOW HIGH with 1 <= LOW <= HIGH"),
    (["--augment-blur-sigma", "0", "1"], "--augment-blur-sigma"),
])
def test_bad_augmentation_flags_are_usage_errors(train_args, capsys, flags, expected):
    line = user_error(run_main(capsys, *train_args, *flags), code=2)
    assert expected in line


def test_downscale_augmentation_is_the_suites_round_trip_on_the_chosen_images():
    """--augment-downscale: the same antialiased down-and-up resize as the suite's down-scale family, applied to
    about p of the images, at a factor drawn from the range (one per batch)."""
    from vitdetect.data.perturbations import downscale_round_trip
    from vitdetect.data.transforms import RandomDownscale

    images = photo_like(64, 32)
    steps = build_augmentation(0, False, downscale=0.4, downscale_factor=(2.0, 2.0), blur=0.5)
    assert [type(step) for step in steps][-2:] == [RandomDownscale, K.RandomGaussianBlur]  # resized, then blurred
    torch.manual_seed(0)
    out = RandomDownscale(1.0, (2.0, 2.0))(images.float() / 255)
    suite = downscale_round_trip(images, torch.Generator(), 2).float() / 255
    assert (out - suite).abs().max() <= 1 / 255 + 1e-6  # the suite rounds to uint8, training stays in float
    changed = (RandomDownscale(0.4, (2.0, 4.0))(images.float() / 255) != images.float() / 255).flatten(1).any(1)
    assert 0.15 < changed.float().mean() < 0.65
    assert torch.equal(RandomDownscale(0.0, (2.0, 4.0))(images.float()), images.float())


def test_downscale_flags_are_checked(train_args, capsys):
    line = user_error(run_main(capsys, *train_args, "--augment-downscale", "0.5", "--augment-downscale-factor", "3",
                               "2"))
    assert "--augment-downscale-factor" in line and "LOW <= HIGH" in line
    line = user_error(run_main(capsys, *train_args, "--augment-downscale", "0.5", "--no-augment"))
    assert "--augment-downscale are augmentations" in line
