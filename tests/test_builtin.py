import numpy as np
import pytest
import torch

from conftest import REAL_CIFAKE, make_image, run_main, user_error
from vitdetect import Detector
from vitdetect.models.builtin import BUILTIN, builtin_card, builtin_checkpoint
from vitdetect.models.checkpoint import load_checkpoint

MAX_PACKAGED_MB = 15


def test_the_packaged_weights_are_small_fp16_and_weights_only():
    path = builtin_checkpoint()
    assert path.stat().st_size < MAX_PACKAGED_MB * 2**20
    payload = torch.load(path, map_location="cpu", weights_only=True)
    floats = [tensor for tensor in payload["state_dict"].values() if tensor.is_floating_point()]
    assert floats and all(tensor.dtype == torch.float16 for tensor in floats)
    assert "optimizer" not in payload and load_checkpoint(BUILTIN)["kind"] == "best"


def test_predict_with_no_model_here_uses_the_builtin_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no results/best_model.pth here
    make_image(1, np.random.default_rng(0)).save("img.png")
    code, out, err = run_main(capsys, "predict", "img.png", "--format", "json")
    card = builtin_card()
    assert code == 0 and ('"label": "FAKE"' in out or '"label": "REAL"' in out)
    announcement = [line for line in err.splitlines() if "built-in detector" in line]
    assert len(announcement) == 1 and card["model"] in announcement[0] and "vitdetect train" in announcement[0]
    assert f"{card['metrics']['official_test']['accuracy']:.4f}" in announcement[0]


def test_builtin_is_read_only(capsys, tiny_data):
    line = user_error(run_main(capsys, "evaluate", "--checkpoint", "builtin", "--data-dir", tiny_data,
                               "--set-threshold-at-fpr", "0.05"))
    assert "built-in detector" in line and "read-only" in line


def test_evaluate_builtin_writes_under_results_builtin(tmp_path, monkeypatch, capsys, tiny_data):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, "evaluate", "--checkpoint", "builtin", "--data-dir", tiny_data, "--quiet",
                            "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    assert (tmp_path / "results" / "builtin" / "metrics.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CIFAKE.is_dir(), reason="real CIFAKE not found at ../shared/data/cifake")
def test_builtin_reproduces_its_card_on_the_fixed_test_sample(tmp_path):
    """A changed decoder, preprocessing or weight file cannot pass silently: the card's sample accuracy, exactly."""
    from vitdetect.data.dataset import list_split, stratified_sample

    card = builtin_card()["metrics"]["official_test_sample"]
    listed = list_split(REAL_CIFAKE, "test")
    sample = stratified_sample(torch.tensor(listed.labels), card["size"], card["seed"])
    detector = Detector.from_checkpoint(BUILTIN)
    results = detector.predict([listed.paths[index] for index in sample])
    labels = [listed.labels[index] for index in sample]
    correct = sum(result.label == ("FAKE" if label else "REAL") for result, label in zip(results, labels, strict=True))
    assert correct == card["correct"] and correct / len(sample) == pytest.approx(card["accuracy"])
