"""Shared fixtures: tiny CIFAKE-layout datasets and tiny local models, made offline in tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import hypothesis
import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
REAL_CIFAKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifake"


def seed_for_learning_tests(default: int) -> int:
    """The seed of a test that trains a model and asserts what it learned: its own default in CI, another one from
    VITDETECT_TEST_SEED when checking that the assertion holds for any seed (README "Development")."""
    return int(os.environ.get("VITDETECT_TEST_SEED", default))


def make_image(label: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A learnable signal: REAL images lean red and smooth, FAKE images lean blue and noisy."""
    base = np.full((size, size, 3), 110.0)
    base[..., 0 if label == 0 else 2] += 70
    noise = rng.normal(0, 12 if label == 0 else 40, (size, size, 3))
    pixels = np.clip(base + noise + rng.normal(0, 15, (1, 1, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_dataset(root: Path, per_class: int = 24, splits=("train", "test"), size: int = 32, seed: int = 0) -> Path:
    """DATA_DIR/{train,test}/{REAL,FAKE}/*.jpg with per_class JPEGs in each class folder."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, name in enumerate(("REAL", "FAKE")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                make_image(label, rng, size).save(folder / f"{index}.jpg", quality=95)
    return root


def random_checkpoint(path: Path, seed: int = 0, **extra) -> Path:
    """A random-init micro ViT saved as a vitdetect checkpoint (judging needs weights, not skill), with extra keys
    (threshold, temperature, ...) in its payload."""
    import torch

    from vitdetect.data.transforms import Preprocessing
    from vitdetect.models.build import load_model
    from vitdetect.models.checkpoint import model_payload, save_checkpoint

    torch.manual_seed(seed)
    model, (mean, std) = load_model("scratch:vit-micro-32")
    torch.nn.init.normal_(model.classifier.weight, std=0.5)  # spread P(FAKE) over (0, 1)
    save_checkpoint(path, {**model_payload(model, {}, Preprocessing(32, 32, mean, std), 1, {}), **extra})
    return path


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "cifake")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init ViT saved with save_pretrained: loaded through the same path as a hub id."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=1000)
    directory = tmp_path_factory.mktemp("tiny-vit")
    ViTForImageClassification(config).save_pretrained(directory)
    return directory


@pytest.fixture
def train_args(tiny_data: Path, tmp_path: Path) -> list[str]:
    """Flags for a fast training run on the tiny dataset; tests append what they vary."""
    return ["train", "--data-dir", str(tiny_data), "--output-dir", str(tmp_path / "results"),
            "--model", "scratch:vit-micro-32", "--batch-size", "16", "--epochs", "1",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results dir after `vitdetect train` (2 epochs) and `vitdetect evaluate` on a tiny dataset.

    Holds the checkpoints, history, metrics.json, predictions.csv and every figure (not calibrated: its tiny
    validation split is separable, which would push P(FAKE) to 0 and 1); its dataset is
    ../cifake (46 test images: an odd count per class). Tests only read it: copy before changing.
    """
    from typer.testing import CliRunner

    from vitdetect.cli import app

    root = tmp_path_factory.mktemp("evaluated")
    data, results, cache = make_dataset(root / "cifake", per_class=23), root / "results", root / "cache"
    train = ["train", "--data-dir", str(data), "--output-dir", str(results), "--model",
             "scratch:vit-micro-32", "--batch-size", "16", "--epochs", "2", "--log-every", "1",
             "--cache-dir", str(cache), "--quiet", "--no-calibration"]
    evaluate = ["evaluate", "--checkpoint", str(results / "best_model.pth"), "--data-dir", str(data),
                "--batch-size", "8", "--cache-dir", str(cache), "--quiet"]
    for args in (train, evaluate):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    return results


@pytest.fixture(scope="module")
def checkpoint(evaluated_run: Path) -> Path:
    """The evaluated run's best checkpoint (a module may define its own `checkpoint` instead)."""
    return evaluated_run / "best_model.pth"


@pytest.fixture(scope="module")
def images(evaluated_run: Path) -> dict[str, bytes]:
    """name -> bytes of the uploads the serve tests send (needs the serve extra)."""
    from serve_support import upload_images

    return upload_images(evaluated_run)


def run_main(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """`vitdetect ARGS` in-process through the console-script entry point: (exit code, stdout, stderr)."""
    from vitdetect.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def user_error(result: tuple[int, str, str], code: int | None = None) -> str:
    """Assert that a command failed with one `error: ...` line on stderr and no traceback; return the line."""
    exit_code, out, err = result
    assert exit_code != 0 and (code is None or exit_code == code), (exit_code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out + err, err
    return lines[0]


def pipeline_p_fake(folder: Path, paths: list[Path]) -> np.ndarray:
    """P(FAKE) of each image by `transformers.pipeline` on an exported Hugging Face folder."""
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    classifier = pipeline("image-classification", model=str(folder), device="cpu")
    return np.array([{o["label"]: o["score"] for o in out}["FAKE"] for out in classifier(list(map(str, paths)),
                                                                                          top_k=2)])


@pytest.fixture
def single_thread(monkeypatch: pytest.MonkeyPatch):
    """Tiny models on a busy 2-core machine: with one thread (here and in subprocesses) torch skips OpenMP
    spin-waits, which made a tiny training run 5-10x slower."""
    import torch

    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Fuzzing with Hypothesis (tests/test_fuzz_*.py): a fixed seed and example count in CI; `pytest
# --hypothesis-profile=long` runs the same tests with random seeds and LONG_FUZZ_FACTOR times the examples.
LONG_FUZZ_PROFILE, LONG_FUZZ_FACTOR = "long", 25
hypothesis.settings.register_profile(LONG_FUZZ_PROFILE, deadline=None)


def fuzz_settings(examples: int) -> hypothesis.settings:
    """A fuzz test's settings: derandomized (the seed comes from the test's name), `examples` examples and no
    example database in CI; random and LONG_FUZZ_FACTOR times longer under the long profile. No deadline: a
    shared machine's pauses are not slow code (the tests bound each call's time themselves)."""
    long = hypothesis.settings.default is hypothesis.settings.get_profile(LONG_FUZZ_PROFILE)
    slow = [hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.data_too_large,
            hypothesis.HealthCheck.function_scoped_fixture]
    return hypothesis.settings(max_examples=examples * (LONG_FUZZ_FACTOR if long else 1), derandomize=not long,
                               database=hypothesis.settings.default.database if long else None, deadline=None,
                               suppress_health_check=slow)
