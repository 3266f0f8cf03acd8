"""Running an exported ONNX file with ONNX Runtime, and the metadata that makes the file self-describing.

`vitdetect export --format onnx` stores in the file's metadata_props everything a user of the file alone
needs to reproduce a verdict: the preprocessing (sizes, mean, std, resize rule), the label map, the
threshold and the calibration temperature (folded into the weights). `onnx_metadata` writes that schema
and `OnnxModel.load` reads it back into the `Preprocessing` that `transforms.to_model_input` applies, so
ONNX Runtime sees exactly the input PyTorch sees.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vitdetect.config.labels import POSITIVE_CLASS
from vitdetect.data.transforms import Preprocessing, to_model_input
from vitdetect.errors import UsageError, VitdetectError
from vitdetect.inference.scoring import fake_probability, stored_temperature, stored_threshold

INSTALL_HINT = "pip install 'vitdetect[onnx]'"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
METADATA_VERSION = "1"
RESIZE_RULE = (
    "decode to RGB (EXIF orientation applied, alpha composited on white, first frame of animations); if the "
    "image is not storage_size x storage_size, resize it to that with Pillow's bilinear filter "
    "(Image.resize(..., Image.BILINEAR)); scale to [0, 1]; normalise per channel: (x - mean) / std; if "
    "image_size differs from storage_size, resize the normalised values to image_size x image_size with "
    "antialiased bilinear interpolation (torch.nn.functional.interpolate(mode='bilinear', align_corners=False, "
    "antialias=True)); see vitdetect/data/transforms.py"
)
USAGE = (
    "input pixel_values: float32 [batch, 3, image_size, image_size], RGB preprocessed as the 'resize' entry says; "
    "output logits: float32 [batch, 2] in id2label order; P(FAKE) = softmax(logits)[:, id of FAKE]; the image is "
    "FAKE when P(FAKE) >= threshold. The calibration temperature is already folded into the weights "
    "(temperature_folded): do not divide the logits by it again."
)
REQUIRED_KEYS = ("image_size", "storage_size", "mean", "std", "id2label", "threshold", "temperature")
NOT_QUANTIZED = {"quantization": "none"}
QUANTIZATION_KEYS = ("quantization", "calibration_data", "calibration_images", "fp32_op_types")


def require(*modules: str) -> None:
    """One clear line when the [onnx] extra is missing."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise VitdetectError(f"{', '.join(missing)} not installed, needed for ONNX: {INSTALL_HINT}")


def onnx_metadata(prep: Preprocessing, id2label: dict[int, str], threshold: float, temperature: float,
                  source: str, details: dict[str, str] = NOT_QUANTIZED) -> dict[str, str]:
    """The metadata_props of an exported file: strings, JSON for lists and maps. details: what the model is
    (model, parameters) and how it was quantized (quantization; for int8 the calibration source and image count and
    the op types left in fp32)."""
    return {
        "vitdetect_metadata_version": METADATA_VERSION,
        "image_size": str(prep.image_size),
        "storage_size": str(prep.storage_size),
        "mean": json.dumps(list(prep.mean)),
        "std": json.dumps(list(prep.std)),
        "resize": RESIZE_RULE,
        "id2label": json.dumps({str(index): name for index, name in sorted(id2label.items())}),
        "positive_class": POSITIVE_CLASS,
        "threshold": repr(float(threshold)),
        "temperature": repr(float(temperature)),
        "temperature_folded": "true",
        "usage": USAGE,
        "source_checkpoint": source,
        **details,
    }


@dataclass
class OnnxModel:
    """An exported file in an ONNX Runtime session, with its preprocessing and decision threshold."""

    session: object  # onnxruntime.InferenceSession
    prep: Preprocessing
    threshold: float
    temperature: float  # already folded into the logits; kept to report it
    fake_index: int
    metadata: dict[str, str]
    # On the CPU, `threads` sessions of one intra-op thread each, every batch split between them: for a model this
    # small, one session's intra-op threads barely help (benchmarks/bench_inference.py: int8 ran slower at 2 threads
    # than at 1), while ORT releases the GIL, so sessions side by side scale with the cores.
    replicas: tuple = ()
    pool: ThreadPoolExecutor | None = None  # runs the sessions side by side; made once, not per batch

    @classmethod
    def load(cls, source: str | Path | bytes, cpu: bool = False, threads: int | None = None) -> OnnxModel:
        """A file written by `vitdetect export --format onnx` (or its bytes), fp32 or int8.

        threads: ORT's intra-op threads; None: torch's count (OMP_NUM_THREADS and --threads set both backends).
        """
        require("onnxruntime")
        import onnxruntime as ort

        name = "the exported model" if isinstance(source, bytes) else str(source)
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise UsageError(f"ONNX file not found: {source} (write one with `vitdetect export --format onnx`)")
        providers = _providers(ort, cpu)
        sessions = (threads or torch.get_num_threads()) if providers == ["CPUExecutionProvider"] else 1
        options = session_options(ort, 1 if sessions > 1 else threads)
        try:
            session, *replicas = [ort.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                                       providers=providers) for _ in range(sessions)]
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types for damaged or foreign files
            detail = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .* failed:)?", "",
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__).strip()[:200]
            raise VitdetectError(f"cannot load ONNX model {name}: {detail}") from None
        metadata = session.get_modelmeta().custom_metadata_map
        prep, *rest = _read_metadata(metadata, name)
        _check_graph(session, prep, name)
        pool = ThreadPoolExecutor(sessions, thread_name_prefix="vitdetect-ort") if replicas else None
        return cls(session, prep, *rest, metadata, tuple(replicas), pool)

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixel_values, np.float32)
        sessions = (self.session, *self.replicas)
        if self.pool is None or len(pixels) < 2 * len(sessions):
            return _run(self.session, pixels)
        return np.concatenate(list(self.pool.map(_run, sessions, np.array_split(pixels, len(sessions)))))

    def fake_probabilities(self, images: torch.Tensor, batch_size: int) -> np.ndarray:
        """P(FAKE) for each Nx3xSxS uint8 image, in input order (as `inference.fake_probabilities`)."""
        probabilities = np.empty(len(images), dtype=np.float64)
        for start in range(0, len(images), batch_size):
            pixels = to_model_input(images[start:start + batch_size], self.prep).numpy()
            probabilities[start:start + len(pixels)] = self.probabilities_of(pixels)
        return probabilities

    def probabilities_of(self, pixels: np.ndarray) -> np.ndarray:
        """P(FAKE) for a batch already preprocessed (float32 model input)."""
        return fake_probability(self.logits(pixels), 1.0, self.fake_index)


def _run(session, pixels: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]


def session_options(ort, threads: int | None = None, level: str = "ORT_ENABLE_ALL"):
    """ORT's options, stated rather than left to its defaults: every graph optimization (the QDQ fusions into
    integer kernels included), the intra-op thread count, errors only in the log (ORT's warnings are not the
    user's business)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return options


def runtime_graph(data: bytes):
    """The graph ORT runs for a file on the CPU, after its fusions (extended level: the QDQ pairs become integer
    kernels; the hardware-specific layout passes of the 'all' level are left out, so the answer is portable)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="vitdetect-ort-") as scratch:
        options = session_options(ort, 1, "ORT_ENABLE_EXTENDED")
        options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath).graph


def _providers(ort, cpu: bool) -> list[str]:
    available = ort.get_available_providers()
    wanted = ["CPUExecutionProvider"] if cpu else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [provider for provider in wanted if provider in available] or available


def _read_metadata(metadata: dict[str, str], name: str) -> tuple[Preprocessing, float, float, int]:
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise VitdetectError(f"{name} has no vitdetect metadata ({', '.join(missing)} missing): export it "
                             "with `vitdetect export --format onnx`")
    try:
        prep = Preprocessing.from_dict({key: json.loads(metadata[key]) for key in
                                        ("image_size", "storage_size", "mean", "std")})
        labels = {name: int(index) for index, name in json.loads(metadata["id2label"]).items()}
        threshold, temperature = float(metadata["threshold"]), float(metadata["temperature"])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise VitdetectError(f"{name} has damaged vitdetect metadata ({exc!r})") from None
    if labels.get(POSITIVE_CLASS) not in (0, 1):
        raise VitdetectError(f"{name} has damaged vitdetect metadata (id2label has no {POSITIVE_CLASS} at 0 or 1)")
    return (prep, stored_threshold(threshold, name), stored_temperature({"temperature": temperature}, name),
            labels[POSITIVE_CLASS])


def _check_graph(session, prep: Preprocessing, name: str) -> None:
    """The graph must take what the metadata says the preprocessing makes and give two logits: else the first
    batch would fail deep inside ONNX Runtime, or a changed graph would be fed the wrong input."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    want = [None, 3, prep.image_size, prep.image_size]  # None: any batch size
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    fits = (len(inputs) == 1 and inputs[0].name == INPUT_NAME and inputs[0].type == "tensor(float)"
            and len(shape) == 4 and all(w is None or d == w for d, w in zip(shape, want, strict=True))
            and [output.name for output in outputs][:1] == [OUTPUT_NAME] and list(outputs[0].shape)[-1:] == [2])
    if not fits:
        found = ", ".join(f"{node.name} {node.type} {list(node.shape)}" for node in inputs)
        raise VitdetectError(f"{name} does not fit its vitdetect metadata: its graph takes {found or 'nothing'}, "
                             f"expected {INPUT_NAME} tensor(float) [batch, 3, {prep.image_size}, "
                             f"{prep.image_size}] and an output {OUTPUT_NAME} with 2 logits")
