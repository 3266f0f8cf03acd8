"""`vitdetect export`: a checkpoint as ONNX or a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import typer

from vitdetect.cli.support import described, user_errors
from vitdetect.config.commands import ExportFormat, ExportSettings, Quantization
from vitdetect.config.settings import build_settings


@user_errors
def export(
    checkpoint: Path = described(ExportSettings, "checkpoint", "--checkpoint"),
    format: ExportFormat = described(ExportSettings, "format", "--format"),
    output: Path = typer.Option(..., "--output", "-o", show_default=False,
                                help=ExportSettings.model_fields["output"].description),
    overwrite: bool = described(ExportSettings, "overwrite", "--overwrite/--no-overwrite"),
    quantize: Quantization = described(ExportSettings, "quantize", "--quantize"),
    calibration_data: Path = described(ExportSettings, "calibration_data", "--calibration-data"),
    calibration_images: int = described(ExportSettings, "calibration_images", "--calibration-images"),
) -> None:
    """Export a checkpoint: ONNX (for ONNX Runtime and friends; --quantize int8 for speed on CPUs) or a Hugging Face
    folder with a model card."""
    settings = build_settings(ExportSettings, None, **locals())
    from vitdetect.export.exporter import export as run_export

    result = run_export(settings)
    folded = "no calibration temperature" if result.temperature == 1.0 else \
        f"temperature {result.temperature:.4g} folded into the classifier"
    typer.echo(f"exported {settings.checkpoint} -> {result.output} ({result.format}, "
               f"{result.size_bytes / 2**20:,.1f} MB; {folded})")
    for note in result.notes:
        typer.echo(note)
