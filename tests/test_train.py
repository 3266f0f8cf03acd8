import csv
import json

import pytest
import torch

from conftest import REAL_CIFAKE, seed_for_learning_tests
from vitdetect.config.settings import TrainSettings
from vitdetect.models.build import load_model, model_from_config
from vitdetect.models.checkpoint import load_checkpoint
from vitdetect.training.trainer import train
from vitdetect.utils.locking import LOCK_NAME


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def settings_for(data_dir, tmp_path, **overrides):
    values = dict(data_dir=data_dir, output_dir=tmp_path / "results", model="scratch:vit-micro-32", batch_size=16,
                  epochs=2, cache_dir=tmp_path / "cache", quiet=True)
    return TrainSettings(**{**values, **overrides})


def test_tiny_model_learns_a_learnable_signal(tiny_data, tmp_path, tiny_model_dir):
    settings = settings_for(tiny_data, tmp_path, model=str(tiny_model_dir), train_mode="full", lr=3e-3,
                            epochs=2, augment=False, seed=seed_for_learning_tests(42))
    result = train(settings)
    assert result.best["val_accuracy"] >= 0.9  # chance is 0.5
    assert result.trainable == result.total


def test_artifacts_are_complete_and_load_weights_only(tiny_data, tmp_path):
    result = train(settings_for(tiny_data, tmp_path))
    out = result.output_dir
    payload = torch.load(out / "best_model.pth", weights_only=True)
    assert payload["format"] == "vitdetect" and payload["id2label"] == {0: "REAL", 1: "FAKE"}
    assert payload["settings"]["model"] == "scratch:vit-micro-32"
    assert payload["preprocessing"]["storage_size"] == 32
    assert payload["epoch"] == result.state.best_epoch
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["batch_size"] == 16
    assert config["parameters"] == {"trainable": result.trainable, "total": result.total}
    epochs = read_rows(out / "history.csv")
    assert [int(row["epoch"]) for row in epochs] == [1, 2]
    assert {"train_loss", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1"} <= set(epochs[0])
    assert read_rows(out / "batch_history.csv")
    assert load_checkpoint(out / "last.pth", kind="last")["train_state"]["epoch"] == 2
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [LOCK_NAME]  # no temp or holder file left


def test_checkpoint_round_trip_gives_the_same_model(tiny_data, tmp_path):
    from transformers import ViTForImageClassification

    result = train(settings_for(tiny_data, tmp_path, train_mode="full", lr=1e-3))
    payload = load_checkpoint(result.output_dir / "best_model.pth")
    rebuilt = model_from_config(payload["model_config"], payload["state_dict"])
    pretrained = ViTForImageClassification.from_pretrained(result.output_dir / "best_model").eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():  # best_model/ has the temperature folded into its classifier
        assert torch.allclose(rebuilt(pixels).logits / payload["temperature"], pretrained(pixels).logits, atol=1e-5)
    assert pretrained.config.id2label == {0: "REAL", 1: "FAKE"}


def test_same_seed_same_history(tiny_data, tmp_path):
    def history(run):
        out = train(settings_for(tiny_data, tmp_path / run, train_mode="full", lr=1e-3)).output_dir
        return [{k: v for k, v in row.items() if k != "seconds"} for row in read_rows(out / "history.csv")]

    assert history("a") == history("b")


def test_head_only_trains_only_the_head(tiny_data, tmp_path):
    result = train(settings_for(tiny_data, tmp_path, train_mode="head", model="scratch:vit-micro-32",
                                epochs=1, lr=1e-2))
    assert result.trainable == 32 * 2 + 2
    # The backbone in best_model.pth equals a fresh init with the same seed: only the head moved.
    payload = load_checkpoint(result.output_dir / "best_model.pth")
    torch.manual_seed(42)
    fresh, _ = load_model("scratch:vit-micro-32")
    for name, tensor in fresh.state_dict().items():
        if not name.startswith("classifier"):
            assert torch.equal(tensor, payload["state_dict"][name]), name


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CIFAKE.is_dir(), reason="real CIFAKE not found at ../shared/data/cifake")
def test_end_to_end_on_real_cifake(tmp_path):
    """A short from-scratch run on real images: it must learn (chance is 0.5) and write its artifacts."""
    settings = TrainSettings(data_dir=REAL_CIFAKE, output_dir=tmp_path / "results", model="scratch:vit-tiny-32",
                             epochs=3, max_images=4000, val_fraction=0.05, cache_dir=tmp_path / "cache", quiet=True)
    result = train(settings)
    assert result.best["val_accuracy"] > 0.6
    assert {"best_model.pth", "last.pth", "history.csv", "epoch_training_curves.png"} <= {
        path.name for path in result.output_dir.iterdir()}
