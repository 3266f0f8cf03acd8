"""`vitdetect export --quantize int8`: an exported fp32 ONNX graph turned into int8 with ONNX Runtime's quantizer.

Static quantization, calibrated on a seeded sample of the training split: with activation ranges known ahead, ORT
fuses the QuantizeLinear/DequantizeLinear pairs into integer kernels (QLinearMatMul, QLinearConv, QLinearAdd,
QLinearSoftmax), which is where the speed is. Dynamic quantization (ranges measured per batch at run time, weighted
MatMuls only) ran no faster than PyTorch fp32 on the built-in detector, so it is only the fallback for weighted ops
the static quantizer has no rule for. Every op is handed to the quantizer: keeping the attention products (Q·K^T,
softmax·V) and the softmax in fp32 changed neither accuracy nor agreement beyond noise on 4,000 official test
images. ORT has no integer kernel for LayerNormalization, Gelu, Div or ReduceMean: it runs those in fp32 between
a dequantize and a quantize, and the file's metadata names them (fp32_op_types).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from vitdetect.data.dataset import decode_images, list_split, stratified_sample
from vitdetect.data.transforms import Preprocessing, to_model_input
from vitdetect.errors import VitdetectError
from vitdetect.inference.onnx import INPUT_NAME, runtime_graph

CALIBRATION_SPLIT = "train"  # never the test split the accuracy is reported on
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 64
# Ops that compute nothing (they move or re-label values): not worth naming among the ops left in fp32.
DATA_MOVEMENT = frozenset({"Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Shape",
                           "Gather", "Concat", "Slice", "Split", "Cast"})
# Integer kernels, and the (de)quantizers between them: what ORT runs a quantized graph with.
INTEGER_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                         "MatMulIntegerToFloat", "ConvInteger", "DynamicQuantizeMatMul", "QGemm"})


@dataclass
class Quantized:
    """The int8 file's bytes and how it was made (for the metadata and the export's notes)."""

    data: bytes
    method: str  # int8-static, or int8-static+dynamic when the fallback quantized some ops
    fp32_ops: list[str]  # op types ORT still computes in floating point


class _Calibration(CalibrationDataReader):
    """Feeds the calibration images to the quantizer batch by batch (its whole interface is get_next)."""

    def __init__(self, pixels: np.ndarray):
        self.batches = iter(np.array_split(pixels, max(1, len(pixels) // CALIBRATION_BATCH)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def calibration_pixels(data_dir: Path, count: int, prep: Preprocessing) -> np.ndarray:
    """A seeded, class-balanced sample of DATA_DIR/train as model input: what the activation ranges are fit on."""
    listed = list_split(data_dir, CALIBRATION_SPLIT)
    index = stratified_sample(torch.tensor(listed.labels), count, CALIBRATION_SEED)
    images, _, failures = decode_images([listed.paths[i] for i in index], prep.storage_size)
    if failures:
        raise VitdetectError(f"calibration image failed to decode: {failures[0][0]} ({failures[0][1]})")
    return to_model_input(images, prep).numpy()


def quantize_int8(fp32: bytes, pixels: np.ndarray) -> Quantized:
    """Static QDQ int8 (per-channel weights) of an fp32 graph, the dynamic fallback where static has no rule."""
    with tempfile.TemporaryDirectory(prefix="vitdetect-quantize-") as scratch:
        folder = Path(scratch)
        (folder / "fp32.onnx").write_bytes(fp32)
        # Shape inference and fp32 graph fusions first, as ORT advises: the quantizer then sees whole ops.
        quant_pre_process(str(folder / "fp32.onnx"), str(folder / "pre.onnx"), skip_symbolic_shape=False)
        with quiet_quantizer():
            quantize_static(str(folder / "pre.onnx"), str(folder / "int8.onnx"), _Calibration(pixels),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        fallback = dynamic_only(onnx.load(folder / "pre.onnx").graph)
        if fallback:
            quantize_dynamic(folder / "int8.onnx", folder / "mixed.onnx", nodes_to_quantize=fallback,
                             weight_type=QuantType.QInt8, per_channel=True)
        data = (folder / ("mixed.onnx" if fallback else "int8.onnx")).read_bytes()
    return Quantized(data, "int8-static+dynamic" if fallback else "int8-static", fp32_op_types(data))


@contextmanager
def quiet_quantizer() -> Iterator[None]:
    """The quantizer logs a warning on the root logger for every 1-D weight (LayerNorm's) that per-channel
    quantization skips: expected, and not the user's business."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def dynamic_only(graph: onnx.GraphProto) -> list[str]:
    """Nodes with a weight whose op type dynamic quantization takes and static does not (e.g. LSTM)."""
    weights = {initializer.name for initializer in graph.initializer}
    return [node.name for node in graph.node if node.op_type in set(IntegerOpsRegistry) - set(QDQRegistry)
            and weights & set(node.input)]


def fp32_op_types(data: bytes) -> list[str]:
    """The op types ORT computes in floating point in the graph it runs (after its QDQ fusions)."""
    return sorted({node.op_type for node in runtime_graph(data).node if not node.op_type.startswith("QLinear")}
                  - INTEGER_OPS - DATA_MOVEMENT)
