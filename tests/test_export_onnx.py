"""`vitdetect export --format onnx` and `predict --backend onnx`: the same verdicts from the file alone."""

import json

import numpy as np
import pytest
import torch

from conftest import REAL_CIFAKE, make_image, random_checkpoint, run_main, user_error
from vitdetect import Detector
from vitdetect.config.commands import ExportSettings
from vitdetect.data.dataset import list_split
from vitdetect.data.transforms import to_model_input
from vitdetect.errors import VitdetectError
from vitdetect.export.exporter import export
from vitdetect.inference.scoring import TrainedModel

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random micro ViT with a stored threshold, exported: (checkpoint, onnx file)."""
    folder = tmp_path_factory.mktemp("onnx")
    checkpoint = random_checkpoint(folder / "best_model.pth", threshold=0.45)
    export(ExportSettings(checkpoint=checkpoint, output=folder / "model.onnx"))
    return checkpoint, folder / "model.onnx"


def image_files(folder, count, rng):
    """CIFAKE-like 32x32 JPEGs, plus a few other sizes that go through the decoder's resize."""
    folder.mkdir()
    for index in range(count):
        make_image(index % 2, rng, size=32 if index % 10 else 45).save(folder / f"{index:03d}.jpg", quality=90)
    return sorted(folder.iterdir())


def assert_same_verdicts(reference, onnx_results, tolerance=1e-4):
    gap = max(abs(a.p_fake - b.p_fake) for a, b in zip(reference, onnx_results, strict=True))
    assert gap <= tolerance, gap
    assert [r.label for r in reference] == [r.label for r in onnx_results]  # no verdict flips
    return gap


def test_onnx_runtime_gives_pytorchs_p_fake_and_verdicts(exported, tmp_path):
    checkpoint, onnx_file = exported
    paths = image_files(tmp_path / "images", 120, np.random.default_rng(0))
    reference = Detector.from_checkpoint(checkpoint, batch_size=32).predict(paths)
    onnx_results = Detector.from_onnx(onnx_file, batch_size=7).predict(paths)  # odd batches: the axis is dynamic
    gap = assert_same_verdicts(reference, onnx_results)
    assert gap < 1e-5  # float32 on both sides: far inside the 1e-4 promise
    labels = {r.label for r in reference}
    assert labels == {"REAL", "FAKE"}, labels  # the comparison covers both verdicts


def test_metadata_alone_rebuilds_preprocessing_threshold_and_labels(exported):
    checkpoint, onnx_file = exported
    model = onnx.load(onnx_file)
    onnx.checker.check_model(model, full_check=True)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    trained = TrainedModel.load(checkpoint)
    assert (int(metadata["image_size"]), int(metadata["storage_size"])) == (32, 32)
    assert tuple(json.loads(metadata["mean"])) == trained.prep.mean and tuple(json.loads(metadata["std"])) == \
        trained.prep.std
    assert json.loads(metadata["id2label"]) == {"0": "REAL", "1": "FAKE"} and metadata["positive_class"] == "FAKE"
    assert float(metadata["threshold"]) == 0.45 and float(metadata["temperature"]) == 1.0
    assert metadata["temperature_folded"] == "true" and "antialias=True" in metadata["resize"]
    batch, channels, height, width = model.graph.input[0].type.tensor_type.shape.dim
    assert batch.dim_param and (channels.dim_value, height.dim_value, width.dim_value) == (3, 32, 32)
    detector = Detector.from_onnx(onnx_file)
    assert detector.trained.prep == trained.prep and detector.threshold == 0.45


def test_temperature_is_folded_into_the_exported_classifier(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "calibrated.pth", temperature=2.5)
    export(ExportSettings(checkpoint=checkpoint, output=tmp_path / "calibrated.onnx"))
    images = torch.from_numpy(np.stack([np.asarray(make_image(i % 2, np.random.default_rng(i))) for i in range(16)])
                              ).permute(0, 3, 1, 2).contiguous()
    trained = TrainedModel.load(checkpoint)
    with torch.inference_mode():
        logits = trained.model(pixel_values=to_model_input(images, trained.prep)).logits
    calibrated = torch.softmax(logits / 2.5, dim=-1)[:, 1].numpy()
    uncalibrated = torch.softmax(logits, dim=-1)[:, 1].numpy()
    onnx_model = Detector.from_onnx(tmp_path / "calibrated.onnx").trained
    scores = onnx_model.fake_probabilities(images, 16)
    assert np.abs(scores - calibrated).max() < 1e-5 < np.abs(scores - uncalibrated).max()
    assert onnx_model.temperature == 2.5


def test_cli_export_refuses_an_existing_output_without_overwrite(exported, tmp_path, capsys):
    checkpoint, _ = exported
    target = tmp_path / "model.onnx"
    target.write_bytes(b"keep me")
    line = user_error(run_main(capsys, "export", "--checkpoint", checkpoint, "--output", target), 2)
    assert "already exists: pass --overwrite" in line and target.read_bytes() == b"keep me"
    code, out, err = run_main(capsys, "export", "--checkpoint", checkpoint, "--output", target, "--overwrite")
    assert code == 0, err
    assert "onnx.checker passed" in out and "max |P(FAKE) difference|" in out
    assert Detector.from_onnx(target).threshold == 0.45
    (tmp_path / "folder.onnx").mkdir()
    line = user_error(run_main(capsys, "export", "--checkpoint", checkpoint, "--output", tmp_path / "folder.onnx",
                               "--overwrite"), 2)
    assert "is a folder" in line


def test_cli_predict_backend_onnx_prints_the_same_rows(exported, tmp_path, capsys):
    checkpoint, onnx_file = exported
    paths = image_files(tmp_path / "images", 12, np.random.default_rng(3))
    rows = {}
    for flags in (["--checkpoint", checkpoint], ["--backend", "onnx", "--checkpoint", onnx_file]):
        code, out, err = run_main(capsys, "predict", tmp_path / "images", "--format", "json", "--quiet", *flags)
        assert code == 0, err
        rows[flags[-1]] = [json.loads(line) for line in out.splitlines()]
    torch_rows, onnx_rows = rows[checkpoint], rows[onnx_file]
    assert [r["path"] for r in onnx_rows] == [str(p) for p in paths]
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    assert max(abs(a["p_fake"] - b["p_fake"]) for a, b in zip(torch_rows, onnx_rows, strict=True)) < 1e-5


def test_bad_onnx_inputs_give_one_line(exported, tmp_path, capsys):
    checkpoint, onnx_file = exported
    image = tmp_path / "a.jpg"
    make_image(0, np.random.default_rng(0)).save(image)
    predict = ["predict", image, "--backend", "onnx", "--checkpoint"]
    assert "ONNX file not found" in user_error(run_main(capsys, *predict, tmp_path / "missing.onnx"), 2)
    assert "cannot load ONNX model" in user_error(run_main(capsys, *predict, checkpoint), 1)
    assert "add --backend onnx" in user_error(run_main(capsys, "predict", image, "--checkpoint", onnx_file), 2)
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2).eval(), (torch.zeros(1, 3),), foreign, dynamo=True)
    assert "has no vitdetect metadata" in user_error(run_main(capsys, *predict, foreign), 1)


def test_a_missing_onnx_extra_is_one_line_naming_the_install(exported, tmp_path, capsys, monkeypatch):
    import importlib.util

    checkpoint, onnx_file = exported
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in {"onnxruntime", "onnxscript"} else real_find_spec(name, *a))
    line = user_error(run_main(capsys, "export", "--checkpoint", checkpoint, "--output", tmp_path / "m.onnx"), 1)
    assert "onnxscript, onnxruntime not installed" in line and "pip install 'vitdetect[onnx]'" in line
    assert not (tmp_path / "m.onnx").exists()
    line = user_error(run_main(capsys, "predict", onnx_file, "--backend", "onnx", "--checkpoint", onnx_file), 1)
    assert "onnxruntime not installed" in line and "vitdetect[onnx]" in line


def test_an_invalid_stored_temperature_is_refused(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "bad.pth", temperature=-1.0)
    with pytest.raises(VitdetectError, match="invalid temperature -1.0"):
        export(ExportSettings(checkpoint=checkpoint, output=tmp_path / "bad.onnx"))
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CIFAKE.is_dir(), reason="real CIFAKE not found at ../shared/data/cifake")
def test_parity_on_1000_official_cifake_test_images(exported):
    checkpoint, onnx_file = exported
    listed = list_split(REAL_CIFAKE, "test")
    paths = [listed.paths[i] for i in np.linspace(0, len(listed.paths) - 1, 1000).round().astype(int)]
    reference = Detector.from_checkpoint(checkpoint).predict(paths)
    assert_same_verdicts(reference, Detector.from_onnx(onnx_file).predict(paths))
