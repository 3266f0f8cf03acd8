"""`vitdetect export --quantize int8`: the int8 file runs wherever the fp32 one does, says how it was made, agrees
with PyTorch within int8's error, and quantization asked of what cannot do it is refused in one line.

int8 and fp32 are never compared for equality: how far they are apart depends on the CPU's integer kernels, so the
tolerances below are loose bounds (a broken quantization lands far outside them), not measurements.
"""

import json

import numpy as np
import pytest
import torch

from conftest import make_dataset, make_image, random_checkpoint, run_main, user_error
from vitdetect import Detector
from vitdetect.config.commands import ExportSettings
from vitdetect.export.exporter import export
from vitdetect.inference.scoring import TrainedModel
from vitdetect.models.checkpoint import model_name

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

CALIBRATION_IMAGES = 24
# int8 vs PyTorch fp32 on the tiny random model, calibrated on 24 images (measured: mean |P(FAKE) gap| 0.034,
# 92% of verdicts agree); a broken quantization (wrong scales, a dropped op) gives about 0.3 and 50%.
MAX_MEAN_P_FAKE_GAP = 0.08
MIN_AGREEMENT = 0.8


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A random micro ViT, its training data and its int8 export: (checkpoint, data dir, int8 file)."""
    folder = tmp_path_factory.mktemp("quantize")
    checkpoint = random_checkpoint(folder / "best_model.pth", threshold=0.5)
    data = make_dataset(folder / "cifake", per_class=16, splits=("train",))
    export(ExportSettings(checkpoint=checkpoint, output=folder / "int8.onnx", quantize="int8", calibration_data=data,
                          calibration_images=CALIBRATION_IMAGES))
    return checkpoint, data, folder / "int8.onnx"


def image_folder(folder, count, seed):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for index in range(count):
        make_image(index % 2, rng).save(folder / f"{index:03d}.jpg", quality=90)
    return sorted(folder.iterdir())


def assert_close_to_fp32(reference, results):
    gaps = [abs(a.p_fake - b.p_fake) for a, b in zip(reference, results, strict=True)]
    agreement = np.mean([a.label == b.label for a, b in zip(reference, results, strict=True)])
    assert np.mean(gaps) <= MAX_MEAN_P_FAKE_GAP and agreement >= MIN_AGREEMENT, (np.mean(gaps), agreement)


def test_int8_file_is_quantized_and_says_how(quantized):
    checkpoint, data, int8_file = quantized
    model = onnx.load(int8_file)
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert metadata["quantization"] == "int8-static"
    assert metadata["calibration_data"] == f"{data}/train" and metadata["calibration_images"] == "24"
    fp32_ops = json.loads(metadata["fp32_op_types"])
    assert "LayerNormalization" in fp32_ops and "MatMul" not in fp32_ops  # no integer LayerNorm kernel in ORT
    assert metadata["model"] == model_name(TrainedModel.load(checkpoint).checkpoint) and int(metadata["parameters"]) > 0
    assert float(metadata["threshold"]) == 0.5 and metadata["temperature_folded"] == "true"


def test_int8_detector_agrees_with_pytorch(quantized, tmp_path):
    checkpoint, _, int8_file = quantized
    paths = image_folder(tmp_path / "images", 60, seed=1)
    reference = Detector.from_checkpoint(checkpoint).predict(paths)
    assert {r.label for r in reference} == {"REAL", "FAKE"}  # the comparison covers both verdicts
    with Detector.from_onnx(int8_file, batch_size=7, threads=1) as detector:
        assert detector.trained.session.get_session_options().intra_op_num_threads == 1
        assert_close_to_fp32(reference, detector.predict(paths))


def test_cli_predict_runs_the_int8_file(quantized, tmp_path, capsys):
    checkpoint, _, int8_file = quantized
    image_folder(tmp_path / "images", 20, seed=2)
    threads = torch.get_num_threads()
    try:
        code, out, err = run_main(capsys, "predict", tmp_path / "images", "--backend", "onnx", "--checkpoint",
                                  int8_file, "--format", "json", "--quiet", "--threads", "1")
        assert code == 0, err
        assert torch.get_num_threads() == 1  # --threads reached the process
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 20 and {row["label"] for row in rows} <= {"REAL", "FAKE"}


def test_serve_describes_the_int8_file(quantized):
    from serve_support import serving

    checkpoint, _, int8_file = quantized
    with serving(Detector.from_onnx(int8_file), int8_file, backend="onnx") as client:
        info = client.get("/v1/model").json()
    assert info["name"] == model_name(TrainedModel.load(checkpoint).checkpoint) and info["parameters"] > 0
    assert info["metrics"]["quantization"] == "int8-static" and info["explanations"] is False


def test_quantization_refusals_are_one_line(quantized, tmp_path, capsys):
    checkpoint, data, _ = quantized
    export_args = ["export", "--checkpoint", checkpoint, "--output"]
    line = user_error(run_main(capsys, *export_args, tmp_path / "hf", "--format", "hf", "--quantize", "int8"), 2)
    assert "--quantize int8 needs --format onnx" in line
    line = user_error(run_main(capsys, *export_args, tmp_path / "a.onnx", "--calibration-images", "8"), 2)
    assert "only used with --quantize int8" in line
    line = user_error(run_main(capsys, *export_args, tmp_path / "b.onnx", "--quantize", "int8"), 2)
    assert "records no training data: pass --calibration-data" in line  # random_checkpoint has no data_dir
    line = user_error(run_main(capsys, *export_args, tmp_path / "c.onnx", "--quantize", "int8", "--calibration-data",
                               tmp_path / "missing"), 2)
    assert "--calibration-data" in line and "not found" in line
    assert not any(tmp_path.glob("*.onnx"))


def test_a_missing_runtime_refuses_quantization(quantized, tmp_path, capsys, monkeypatch):
    import importlib.util

    checkpoint, data, _ = quantized
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    line = user_error(run_main(capsys, "export", "--checkpoint", checkpoint, "--output", tmp_path / "m.onnx",
                               "--quantize", "int8", "--calibration-data", data), 1)
    assert "onnxruntime not installed" in line and "vitdetect[onnx]" in line



def test_dynamic_fallback_takes_only_weighted_ops_static_cannot():
    from onnx import TensorProto, helper, numpy_helper

    from vitdetect.export.quantize import dynamic_only

    weight = numpy_helper.from_array(np.zeros((1, 8, 4), np.float32), "W")
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="lstm", hidden_size=2),
             helper.make_node("MatMul", ["x", "W"], ["z"], name="matmul")]  # static quantization takes MatMul
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    assert dynamic_only(graph) == ["lstm"]
