"""Temperature scaling: the fit, P(FAKE) = softmax(logits / T) everywhere, the folded save_pretrained model,
`vitdetect calibrate` and the threshold it must keep meaning the same operating point."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import make_dataset, run_main, user_error
from vitdetect import Detector
from vitdetect.data.dataset import load_split
from vitdetect.data.transforms import Preprocessing, to_model_input
from vitdetect.evaluation.calibration import (
    MIN_TEMPERATURE,
    fit_temperature,
    nll,
    remap_threshold,
)
from vitdetect.inference.scoring import TrainedModel, fake_probabilities, fold_temperature, model_logits
from vitdetect.models.build import load_model
from vitdetect.models.checkpoint import load_checkpoint, model_payload, save_checkpoint, save_pretrained_dir
from vitdetect.reports.metrics import read_predictions
from vitdetect.reports.plots import draw_calibration


def calibrated_logits(n: int, temperature: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from sigmoid(margin): the margin is calibrated; logits = margin x temperature, shifted
    equally in both classes (softmax ignores it). The right fit is the temperature."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0.0, 2.5, n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-margin))).astype(np.int64)
    shift = rng.normal(0.0, 3.0, n)
    logits = np.stack([shift, shift + margin * temperature], axis=1)
    return torch.from_numpy(logits), torch.from_numpy(labels)


@pytest.mark.parametrize("temperature", [0.4, 1.0, 2.5, 6.0])
def test_fit_recovers_a_known_temperature(temperature):
    logits, labels = calibrated_logits(20_000, temperature)
    fit = fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(temperature, rel=0.05)
    assert fit.nll_after <= fit.nll_before + 1e-12
    assert fit.nll_after == pytest.approx(nll(logits, labels, fit.temperature))
    assert fit.n_images == 20_000


def test_fit_agrees_with_scikit_learn_temperature_scaling():
    """The same optimum as scikit-learn's CalibratedClassifierCV(method="temperature") (>= 1.8)."""
    sklearn_calibration = pytest.importorskip("sklearn.calibration")
    if "temperature" not in (sklearn_calibration.CalibratedClassifierCV.__doc__ or ""):
        pytest.skip("scikit-learn < 1.8 has no temperature scaling")
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.frozen import FrozenEstimator

    class Margins(ClassifierMixin, BaseEstimator):  # sklearn scores a binary decision d as logits (-d, d)
        def fit(self, X, y):
            self.classes_ = np.array([0, 1])
            return self

        def predict(self, X):
            return (np.asarray(X)[:, 0] > 0).astype(int)

        def decision_function(self, X):
            return np.asarray(X)[:, 0]

    logits, labels = calibrated_logits(5_000, 2.0, seed=3)
    half_margin = ((logits[:, 1] - logits[:, 0]) / 2).numpy()[:, None]
    calibrated = sklearn_calibration.CalibratedClassifierCV(FrozenEstimator(Margins().fit(half_margin, labels)),
                                                            method="temperature").fit(half_margin, labels.numpy())
    theirs = calibrated.predict_proba(half_margin)[:, 1]
    ours = torch.softmax(logits / fit_temperature(logits, labels).temperature, dim=-1)[:, 1].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_fit_on_a_separable_split_stops_at_the_bound():
    logits = torch.tensor([[2.0, -2.0], [-1.0, 3.0]] * 10)
    fit = fit_temperature(logits, torch.tensor([0, 1] * 10))
    assert fit.temperature == MIN_TEMPERATURE and fit.at_bound


@pytest.mark.parametrize("old, new", [(1.0, 2.3), (2.3, 0.7), (0.5, 0.5)])
def test_remapped_threshold_calls_the_same_images_fake(old, new):
    logits, _ = calibrated_logits(2_000, 1.5, seed=1)
    before = torch.softmax(logits / old, dim=-1)[:, 1].numpy()
    after = torch.softmax(logits / new, dim=-1)[:, 1].numpy()
    on_an_image = before[np.random.default_rng(2).choice(len(before), 200)]  # where --set-threshold-at-fpr puts it
    for threshold in (0.05, 0.3, 0.5, 0.9, 0.999, *on_an_image):
        mapped = remap_threshold(float(threshold), old, new)
        assert np.array_equal(before >= threshold, after >= mapped), threshold
    assert remap_threshold(1e-300, 1.0, 1e-3) == 0.0 and remap_threshold(1 - 1e-16, 1.0, 1e-3) == 1.0  # no overflow
    assert remap_threshold(0.0, old, new) == 0.0 and remap_threshold(1.0, old, new) == 1.0


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random micro ViT (P(FAKE) spread over (0, 1)) saved the way train saves its best model."""
    torch.manual_seed(0)
    model, (mean, std) = load_model("scratch:vit-micro-32")
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    folder = tmp_path_factory.mktemp("calibrate")
    prep = Preprocessing(32, 32, mean, std)
    save_checkpoint(folder / "best_model.pth", model_payload(model, {}, prep, 1, {}))
    save_pretrained_dir(folder / "best_model", model, prep)
    data = make_dataset(folder / "data", per_class=20, splits=("val", "test"), seed=5)
    return folder / "best_model.pth", data


def with_temperature(source, folder, temperature):
    folder.mkdir()
    path = folder / "best_model.pth"
    save_checkpoint(path, {**load_checkpoint(source), "temperature": temperature})
    return path


def test_stored_temperature_scales_p_fake_in_predict_and_evaluate(tiny_checkpoint, tmp_path, capsys):
    source, data = tiny_checkpoint
    checkpoint = with_temperature(source, tmp_path / "run", 2.5)
    trained = TrainedModel.load(checkpoint)
    assert trained.temperature == 2.5 and TrainedModel.load(source).temperature == 1.0
    test = load_split(data, "test", 32)
    with torch.no_grad():
        logits = trained.model(pixel_values=to_model_input(test.images, trained.prep)).logits.double()
    expected = torch.softmax(logits / 2.5, dim=-1)[:, 1].numpy()
    np.testing.assert_allclose(fake_probabilities(trained, test.images, 16), expected, atol=1e-6)
    predicted = Detector(trained, batch_size=8).predict(test.paths)
    np.testing.assert_allclose([p.p_fake for p in predicted], expected, atol=1e-6)

    code, _, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, "--data-dir", data, "--cache-dir",
                            tmp_path / "cache", "-q")
    assert code == 0, err
    with open(tmp_path / "run" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    np.testing.assert_allclose([float(row["p_fake"]) for row in rows], expected, atol=1e-6)
    uncalibrated = torch.softmax(logits, dim=-1)[:, 1].numpy()
    np.testing.assert_allclose([float(row["p_fake_uncalibrated"]) for row in rows], uncalibrated, atol=1e-6)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["temperature"] == 2.5
    assert set(metrics["uncalibrated"]) == {"ece", "log_loss", "brier_score"}
    assert metrics["uncalibrated"]["log_loss"] != pytest.approx(metrics["log_loss"])
    assert metrics["roc_auc"] is not None  # a ranking: the same at any temperature

    from matplotlib.figure import Figure

    figure = Figure()  # the reliability diagram, as `vitdetect plot` rebuilds it: both curves
    draw_calibration(figure, metrics, read_predictions(tmp_path / "run" / "predictions.csv", ["REAL", "FAKE"]))
    curves = [line.get_label() for line in figure.axes[0].get_lines()]
    assert any(label.startswith("before scaling (T = 1) (ECE = ") for label in curves)
    assert any(label.startswith("T = 2.5 (ECE = ") for label in curves)


def test_calibrate_writes_temperature_and_folds_it_into_save_pretrained(tiny_checkpoint, tmp_path, capsys):
    from transformers import ViTForImageClassification

    source, data = tiny_checkpoint
    shutil.copytree(source.parent, tmp_path / "run", ignore=shutil.ignore_patterns("data"))
    checkpoint = tmp_path / "run" / "best_model.pth"
    code, out, err = run_main(capsys, "calibrate", "--checkpoint", checkpoint, "--data-dir", data, "--split", "val",
                              "--cache-dir", tmp_path / "cache", "-q")
    assert code == 0, err
    payload = load_checkpoint(checkpoint)
    trained = TrainedModel.load(checkpoint)
    val = load_split(data, "val", 32)
    refit = fit_temperature(model_logits(trained, val.images, 16), val.labels)
    assert payload["temperature"] == pytest.approx(refit.temperature) and payload["temperature"] != 1.0
    assert payload["temperature_fit"]["split"] == "val" and payload["temperature_fit"]["n_images"] == 40
    assert f"-> {payload['temperature']:.4f}" in out and "rewrote" in out

    plain = ViTForImageClassification.from_pretrained(tmp_path / "run" / "best_model").eval()
    test = load_split(data, "test", 32)
    with torch.no_grad():  # plain transformers: softmax of the folded model's logits
        p_plain = torch.softmax(plain(pixel_values=to_model_input(test.images, trained.prep)).logits, -1)[:, 1]
    np.testing.assert_allclose(p_plain.numpy(), fake_probabilities(trained, test.images, 16), atol=1e-6)


def test_fold_temperature_leaves_the_model_alone():
    model, _ = load_model("scratch:vit-micro-32")
    weight = model.classifier.weight.detach().clone()
    folded = fold_temperature(model, 4.0)
    assert torch.equal(model.classifier.weight, weight)
    torch.testing.assert_close(folded.classifier.weight, weight / 4.0)


def test_calibrate_keeps_the_stored_thresholds_operating_point(tiny_checkpoint, tmp_path, capsys):
    source, data = tiny_checkpoint
    checkpoint = with_temperature(source, tmp_path / "run", 1.0)
    evaluate_val = ("evaluate", "--checkpoint", checkpoint, "--data-dir", data, "--split", "val", "--cache-dir",
                    tmp_path / "cache", "-q")
    assert run_main(capsys, *evaluate_val, "--set-threshold-at-fpr", "0.2")[0] == 0
    stored = load_checkpoint(checkpoint)
    before = json.loads((tmp_path / "run" / "metrics.json").read_text())

    code, out, err = run_main(capsys, "calibrate", "--checkpoint", checkpoint, "--data-dir", data, "--split",
                              "test", "--cache-dir", tmp_path / "cache", "-q")
    assert code == 0, err
    after_calibration = load_checkpoint(checkpoint)
    assert after_calibration["temperature"] != 1.0
    assert after_calibration["threshold"] != stored["threshold"]
    assert after_calibration["threshold_source"]["threshold"] == after_calibration["threshold"]
    assert "same operating point" in out

    assert run_main(capsys, *evaluate_val)[0] == 0
    after = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert after["threshold"] == after_calibration["threshold"]
    assert after["confusion_matrix"] == before["confusion_matrix"]  # the same images called FAKE
    assert after["roc_auc"] == pytest.approx(before["roc_auc"])


def test_train_stores_a_temperature_unless_told_not_to(train_args, tmp_path, capsys, single_thread):
    code, out, err = run_main(capsys, *train_args)
    assert code == 0, err
    payload = load_checkpoint(tmp_path / "results" / "best_model.pth")
    fit = payload["temperature_fit"]
    assert payload["temperature"] == fit["temperature"] and fit["split"] == "validation"
    assert fit["nll_after"] <= fit["nll_before"] and fit["n_images"] == 10  # 20% of 48
    assert "temperature" in out

    code, _, err = run_main(capsys, *train_args, "--no-calibration", "--output-dir", tmp_path / "plain")
    assert code == 0, err
    assert "temperature" not in load_checkpoint(tmp_path / "plain" / "best_model.pth")
    assert TrainedModel.load(tmp_path / "plain" / "best_model.pth").temperature == 1.0


def test_calibrate_bad_input_is_one_line(tiny_checkpoint, tmp_path, capsys):
    source, data = tiny_checkpoint
    line = user_error(run_main(capsys, "calibrate", "--checkpoint", source, "--data-dir", data, "--split", "nope",
                               "--cache-dir", tmp_path / "cache"))
    assert "nope" in line
    line = user_error(run_main(capsys, "calibrate", "--checkpoint", tmp_path / "missing.pth", "--data-dir", data))
    assert "not found" in line
