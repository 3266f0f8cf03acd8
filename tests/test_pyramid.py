"""The pvt-v2-32 preset (PVTv2, not ViTForImageClassification) through the whole tool: train, then evaluate and
predict from its checkpoint, Grad-CAM, both exports, and one-line refusals where only a ViT will do."""

import json
import sys

import numpy as np
import pytest

from conftest import make_dataset, pipeline_p_fake, run_main, user_error
from vitdetect import Detector
from vitdetect.config.commands import ExportFormat, ExportSettings
from vitdetect.export.exporter import export

PRESET = "scratch:pvt-v2-32"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One epoch of the preset on a tiny dataset (no teacher: its recipe's --distill is turned off)."""
    from typer.testing import CliRunner

    from vitdetect.cli import app

    root = tmp_path_factory.mktemp("pvt")
    data = make_dataset(root / "cifake", per_class=16)
    result = CliRunner().invoke(app, ["train", "--data-dir", str(data), "--output-dir", str(root / "results"),
                                      "--model", PRESET, "--epochs", "1", "--batch-size", "16", "--no-distill",
                                      "--cache-dir", str(root / "cache"), "--quiet"])
    assert result.exit_code == 0, result.output
    return data, root / "results"


def test_a_trained_pyramid_evaluates_and_predicts(trained_run, capsys, tmp_path):
    data, results = trained_run
    assert json.loads((results / "config.json").read_text())["settings"]["model"] == PRESET
    code, _, err = run_main(capsys, "evaluate", "--checkpoint", results / "best_model.pth", "--data-dir", data,
                            "--output-dir", tmp_path, "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_images"] == 32 and 0 <= metrics["accuracy"] <= 1
    image = sorted((data / "test" / "FAKE").iterdir())[0]
    code, out, err = run_main(capsys, "predict", image, "--checkpoint", results / "best_model.pth",
                              "--format", "json")
    assert code == 0, err
    assert json.loads(out)["label"] in ("REAL", "FAKE")


def test_occlusion_is_the_presets_explanation_and_rollout_is_refused_in_one_line(trained_run, capsys, tmp_path):
    data, results = trained_run
    image = sorted((data / "test" / "REAL").iterdir())[0]
    detector = Detector.from_checkpoint(results / "best_model.pth")
    maps = detector.explain([image], method="occlusion")
    assert maps[0].shape == (32, 32) and 0 <= maps[0].min() and maps[0].max() <= 1
    np.testing.assert_allclose(detector.explain([image])[0], maps[0], atol=1e-6)  # its default: no rollout here
    line = user_error(run_main(capsys, "predict", image, "--checkpoint", results / "best_model.pth", "--explain",
                               tmp_path / "maps", "--explain-method", "rollout"))
    assert "use --explain-method gradcam" in line
    code, _, err = run_main(capsys, "predict", image, "--checkpoint", results / "best_model.pth", "--explain",
                            tmp_path / "maps")
    assert code == 0 and "wrote 1 explanation(s) (occlusion)" in err
    assert [path.name for path in (tmp_path / "maps").iterdir()] == [image.with_suffix(".png").name]


@pytest.mark.parametrize("mode", ["head", "last-blocks"])
def test_frozen_backbone_modes_refuse_a_pyramid(mode, tiny_data, tmp_path, capsys):
    line = user_error(run_main(capsys, "train", "--data-dir", tiny_data, "--output-dir", tmp_path / "r", "--model",
                               PRESET, "--train-mode", mode, "--no-distill", "--epochs", "1"))
    assert f"--train-mode {mode} freezes a ViT backbone; PvtV2ForImageClassification trains with" in line


def test_hf_export_loads_in_plain_transformers_and_gives_the_same_p_fake(trained_run, tmp_path):
    from transformers import AutoModelForImageClassification

    data, results = trained_run
    export(ExportSettings(checkpoint=results / "best_model.pth", output=tmp_path / "hf", format=ExportFormat.hf))
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "hf")
    assert type(loaded).__name__ == "PvtV2ForImageClassification"
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "PvtV2ForImageClassification" in card and "strides 2, 2, 2, 2" in card

    images = sorted((data / "test").rglob("*.jpg"))[:8]
    ours = np.array([result.p_fake for result in Detector.from_checkpoint(results / "best_model.pth").predict(images)])
    assert np.abs(pipeline_p_fake(tmp_path / "hf", images) - ours).max() <= 1e-5


def test_onnx_export_of_the_preset_matches_pytorch(trained_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    data, results = trained_run
    export(ExportSettings(checkpoint=results / "best_model.pth", output=tmp_path / "model.onnx"))
    images = sorted((data / "test").rglob("*.jpg"))[:8]
    torch_rows = Detector.from_checkpoint(results / "best_model.pth").predict(images)
    onnx_rows = Detector.from_onnx(tmp_path / "model.onnx").predict(images)
    gap = max(abs(a.p_fake - b.p_fake) for a, b in zip(torch_rows, onnx_rows, strict=True))
    assert gap <= 1e-4 and [r.label for r in torch_rows] == [r.label for r in onnx_rows]


def test_the_server_explains_a_pyramid_with_its_own_method(trained_run):
    pytest.importorskip("fastapi")
    from serve_support import multipart, serving

    data, results = trained_run
    checkpoint = results / "best_model.pth"
    images = {path.name: path.read_bytes() for path in sorted((data / "test" / "FAKE").iterdir())[:2]}
    with serving(Detector.from_checkpoint(checkpoint), checkpoint) as client:
        response = client.post("/v1/predict?explain=true", files=multipart(images))
    assert response.status_code == 200, response.text
    assert all(result["heatmap_png"] for result in response.json()["results"])


@pytest.fixture
def without_grad_cam(monkeypatch):
    """The core install: no `vitdetect[explain]`, so no Grad-CAM or captum (importing them fails)."""
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    monkeypatch.setitem(sys.modules, "captum", None)


def test_predict_explain_without_grad_cam_fails_before_judging(trained_run, without_grad_cam, capsys, tmp_path,
                                                               monkeypatch):
    data, results = trained_run
    monkeypatch.setattr(Detector, "predict", lambda self, images: pytest.fail("judged before checking --explain"))
    image = sorted((data / "test" / "REAL").iterdir())[0]
    result = run_main(capsys, "predict", image, "--checkpoint", results / "best_model.pth", "--explain",
                      tmp_path / "maps", "--format", "json")
    assert "pip install 'vitdetect[explain]'" in user_error(result, code=2)
    assert not (tmp_path / "maps").exists() and result[1] == ""


def test_a_server_without_grad_cam_says_it_has_no_explanations(trained_run, without_grad_cam):
    pytest.importorskip("fastapi")
    from serve_support import multipart, serving

    data, results = trained_run
    checkpoint = results / "best_model.pth"
    images = {path.name: path.read_bytes() for path in sorted((data / "test" / "FAKE").iterdir())[:1]}
    with serving(Detector.from_checkpoint(checkpoint), checkpoint) as client:
        assert client.get("/v1/model").json()["explanations"] is False
        explained = client.post("/v1/predict?explain=true", files=multipart(images))
        plain = client.post("/v1/predict", files=multipart(images))
    assert explained.status_code == 501 and "vitdetect[explain]" in explained.json()["error"]  # documented: 501
    assert plain.status_code == 200
