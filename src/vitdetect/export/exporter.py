"""`vitdetect export`: a checkpoint as an ONNX file or as a Hugging Face model folder with its model card.

Both fold the checkpoint's calibration temperature T into the classifier (weight and bias divided by T),
so every consumer gets the calibrated P(FAKE) = softmax(logits) without knowing about T. The ONNX file is
checked with `onnx.checker` and run once with ONNX Runtime against PyTorch before it is written. With
`--quantize int8` the checked fp32 graph is then quantized (`export.quantize`) and the int8 file written instead.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitdetect.config.commands import ExportFormat, ExportSettings, Quantization
from vitdetect.config.run_files import METRICS_NAME
from vitdetect.errors import UsageError, VitdetectError
from vitdetect.export.model_card import render_model_card
from vitdetect.inference.onnx import INPUT_NAME, NOT_QUANTIZED, OUTPUT_NAME, OnnxModel, onnx_metadata, require
from vitdetect.inference.scoring import TrainedModel, fake_probability, fold_temperature
from vitdetect.models.build import LogitsOnly
from vitdetect.models.checkpoint import model_name, write_pretrained
from vitdetect.reports.metrics import read_metrics
from vitdetect.utils.atomic import atomic_write, atomic_write_dir, ensure_writable_parent

CARD_NAME = "README.md"
PARITY_TOLERANCE = 1e-4  # max |P(FAKE) difference| between ONNX Runtime and PyTorch before writing
PARITY_IMAGES = 5  # not the export example's batch of 2: the check also proves the batch axis is dynamic


@dataclass
class ExportResult:
    output: Path
    format: str
    temperature: float
    size_bytes: int
    notes: list[str] = field(default_factory=list)  # checks passed, what the model card used


def export(settings: ExportSettings) -> ExportResult:
    """Write settings.checkpoint in settings.format to settings.output."""
    check_output(settings.output, settings.format, settings.overwrite)
    if settings.format == ExportFormat.onnx:
        require("onnx", "onnxscript", "onnxruntime")
    trained = TrainedModel.load(settings.checkpoint)
    if settings.quantize == Quantization.int8:
        settings = settings.model_copy(update={"calibration_data": calibration_dir(settings, trained)})
    temperature = trained.temperature
    model = fold_temperature(trained.model, temperature)
    if settings.format == ExportFormat.onnx:
        notes = export_onnx(model, trained, temperature, settings)
    else:
        notes = export_hf(model, trained, temperature, settings.output, settings.checkpoint)
    return ExportResult(settings.output, settings.format, temperature, _size(settings.output), notes)


def check_output(output: Path, fmt: str, overwrite: bool) -> None:
    """Fail before any work: an existing --output is only replaced with --overwrite, and by its own kind."""
    kind = "file" if fmt == ExportFormat.onnx else "folder"
    if output.exists() and not overwrite:
        raise UsageError(f"--output {output} already exists: pass --overwrite to replace it")
    if output.exists() and output.is_dir() != (kind == "folder"):
        raise UsageError(f"--output {output} is a {'folder' if output.is_dir() else 'file'}; --format {fmt} "
                         f"writes a {kind}")
    ensure_writable_parent(output)


def export_onnx(model: torch.nn.Module, trained: TrainedModel, temperature: float,
                settings: ExportSettings) -> list[str]:
    """The fp32 graph, checked against PyTorch; with --quantize int8 its int8 version; then written."""
    proto = onnx_graph(model, trained)
    details = {"model": model_name(trained.checkpoint),
               "parameters": str(sum(parameter.numel() for parameter in model.parameters()))}
    metadata = onnx_metadata(trained.prep, trained.checkpoint.get("id2label") or model.config.id2label,
                             trained.threshold, temperature,
                             f"{settings.checkpoint.name}, epoch {trained.checkpoint.get('epoch')}",
                             {**details, **NOT_QUANTIZED})
    serialized = finished(proto, metadata)
    gap = parity_gap(model, trained, OnnxModel.load(serialized, cpu=True))
    if gap > PARITY_TOLERANCE:
        raise VitdetectError(f"ONNX Runtime and PyTorch disagree on P(FAKE) by {gap:.2e} (> {PARITY_TOLERANCE:g}); "
                             "nothing written")
    side = trained.prep.image_size
    opset = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    notes = [f"onnx.checker passed; opset {opset}; input {INPUT_NAME} [batch, 3, {side}, {side}], output "
             f"{OUTPUT_NAME} [batch, 2]",
             f"ONNX Runtime vs PyTorch on {PARITY_IMAGES} random images: max |P(FAKE) difference| {gap:.1e}"]
    if settings.quantize == Quantization.int8:
        serialized, quantized_notes = quantized(serialized, metadata, trained, settings)
        notes += quantized_notes
    atomic_write(settings.output, lambda tmp: tmp.write_bytes(serialized))
    return notes


def onnx_graph(model: torch.nn.Module, trained: TrainedModel):
    """torch.onnx.export (the torch.export-based exporter) with a dynamic batch axis: the ModelProto."""
    side = trained.prep.image_size
    example = torch.zeros(2, 3, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its internals
        program = torch.onnx.export(LogitsOnly(model).eval(), (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
    return program.model_proto


def finished(proto, metadata: dict[str, str]) -> bytes:
    """The graph with its metadata and doc string, passed through onnx.checker, serialized."""
    import onnx

    del proto.metadata_props[:]  # an int8 graph arrives with the fp32 file's: replaced, not appended
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = "vitdetect REAL/FAKE image detector (FAKE = AI-generated). " + metadata["usage"]
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise VitdetectError(f"the exported graph failed onnx.checker: {str(exc).splitlines()[0]}") from None
    return proto.SerializeToString()


def quantized(fp32: bytes, metadata: dict[str, str], trained: TrainedModel,
              settings: ExportSettings) -> tuple[bytes, list[str]]:
    """The int8 file (export.quantize) with metadata saying how it was made, and its agreement with fp32 on the
    calibration images: reported, not enforced (benchmarks/bench_inference.py measures it on the test split)."""
    import onnx

    from vitdetect.export.quantize import calibration_pixels, quantize_int8

    data_dir = settings.calibration_data
    pixels = calibration_pixels(data_dir, settings.calibration_images, trained.prep)
    result = quantize_int8(fp32, pixels)
    data = finished(onnx.load_from_string(result.data), {
        **metadata, "quantization": result.method, "calibration_data": f"{data_dir}/train",
        "calibration_images": str(len(pixels)), "fp32_op_types": json.dumps(result.fp32_ops)})
    fp32_p, int8_p = (OnnxModel.load(model, cpu=True).probabilities_of(pixels) for model in (fp32, data))
    threshold = trained.threshold
    agreement = float(((fp32_p >= threshold) == (int8_p >= threshold)).mean())
    return data, [f"quantized: {result.method} (QDQ, per-channel weights), calibrated on {len(pixels):,} images of "
                  f"{data_dir}/train; still fp32: {', '.join(result.fp32_ops) or 'none'}",
                  f"int8 vs fp32 on those images: verdict agreement {agreement:.2%}, max |P(FAKE) difference| "
                  f"{np.abs(fp32_p - int8_p).max():.1e}"]


def calibration_dir(settings: ExportSettings, trained: TrainedModel) -> Path:
    """--calibration-data, else the data_dir the checkpoint was trained on; one line, before any work, when neither
    is there."""
    if settings.calibration_data is not None:
        if not settings.calibration_data.is_dir():
            raise UsageError(f"--calibration-data {settings.calibration_data} not found (a CIFAKE root holding "
                             "train/REAL and train/FAKE)")
        return settings.calibration_data
    trained_on = (trained.checkpoint.get("settings") or {}).get("data_dir")
    if trained_on is None or not Path(trained_on).is_dir():
        where = f"its training data {trained_on} is not here" if trained_on else "it records no training data"
        raise UsageError(f"--quantize int8 calibrates on training images and {where}: pass --calibration-data "
                         "DIR (a CIFAKE root holding train/REAL and train/FAKE)")
    return Path(trained_on)


def parity_gap(model: torch.nn.Module, trained: TrainedModel, exported: OnnxModel) -> float:
    """Max |P(FAKE)| difference between the exported file (with its metadata's preprocessing) and PyTorch."""
    from vitdetect.data.transforms import to_model_input

    side = trained.prep.storage_size
    images = torch.randint(0, 256, (PARITY_IMAGES, 3, side, side), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = fake_probability(model(pixel_values=to_model_input(images, trained.prep)).logits)
    return float(np.abs(exported.fake_probabilities(images, PARITY_IMAGES) - expected).max())


def export_hf(model: torch.nn.Module, trained: TrainedModel, temperature: float, output: Path,
              checkpoint: Path) -> list[str]:
    """save_pretrained + image processor + model card README.md, swapped into place in one step."""
    metrics, note = evaluation_metrics(checkpoint, trained)
    card = render_model_card(trained, temperature, metrics)

    def write(folder: Path) -> None:
        write_pretrained(folder, model, trained.prep)
        (folder / CARD_NAME).write_text(card, encoding="utf-8")

    atomic_write_dir(output, write)
    return [note, f"load it with transformers.pipeline('image-classification', model='{output}')"]


def evaluation_metrics(checkpoint: Path, trained: TrainedModel) -> tuple[dict[str, Any] | None, str]:
    """The metrics.json beside the checkpoint when `vitdetect evaluate` wrote it for this checkpoint and epoch."""
    path = Path(checkpoint).parent / METRICS_NAME
    if not path.is_file():
        return None, f"model card: no evaluation results (no {path}; run `vitdetect evaluate` first to add them)"
    metrics = read_metrics(path)
    same_file = Path(str(metrics.get("checkpoint", ""))).name == Path(checkpoint).name
    if not same_file or metrics.get("checkpoint_epoch") != trained.checkpoint.get("epoch"):
        return None, (f"model card: no evaluation results ({path} is for {metrics.get('checkpoint')} epoch "
                      f"{metrics.get('checkpoint_epoch')}, not this checkpoint; run `vitdetect evaluate` again)")
    return metrics, f"model card: evaluation results from {path} ({metrics['split']} split, " \
                    f"{metrics['n_images']:,} images)"


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
