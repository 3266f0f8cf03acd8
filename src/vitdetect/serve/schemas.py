"""What the API answers, as pydantic models: FastAPI validates the responses and documents them in /openapi.json."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ImageResult(BaseModel):
    name: str = Field(description="The uploaded file's name (the multipart filename; 'body' for a raw image body).")
    label: Literal["REAL", "FAKE", "UNSURE"] | None = Field(
        None, description="The verdict; UNSURE when the request's min_confidence or check_stability makes the model "
        "abstain (reason says why); null when the file is unreadable.")
    p_fake: float | None = Field(None, description="P(FAKE): the probability that the image is AI-generated.")
    confidence: float | None = Field(None, description="The probability of the label P(FAKE) and the threshold "
                                     "give (REAL or FAKE), also for UNSURE.")
    error: str | None = Field(None, description="Why the file could not be judged (corrupt, empty, not an image).")
    reason: str | None = Field(
        None, description="Why the label is UNSURE: the confidence below min_confidence, or each edit that changes "
        "the verdict with its P(FAKE), e.g. 'jpeg-75 (JPEG re-compression, quality 75) turns it FAKE: P(FAKE) 0.412 "
        "-> 0.633'. Null otherwise.",
    )
    heatmap_png: str | None = Field(
        None, description="With ?explain=true: where the model looked, as a base64 PNG heatmap (bright = more "
        "influence). Null otherwise, and for unreadable files.",
    )


class PredictResponse(BaseModel):
    threshold: float = Field(description="An image is FAKE when P(FAKE) >= threshold.")
    min_confidence: float = Field(description="The request's min_confidence: UNSURE below this confidence.")
    check_stability: bool = Field(description="Whether the request asked for the stability check.")
    results: list[ImageResult] = Field(description="One result per uploaded image, in upload order.")


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong, in one line.")
    results: list[ImageResult] | None = Field(None, description="Per-file reasons, when no file was an image.")


class Limits(BaseModel):
    max_files: int = Field(description="Most images in one request.")
    max_upload_mb: float = Field(description="Largest request body, in MB (10^6 bytes).")
    max_batch: int = Field(description="Most images scored together in one model call.")


class ModelInfo(BaseModel):
    name: str = Field(description="The model the checkpoint was trained from (hub id or scratch preset).")
    checkpoint: str = Field(description="The checkpoint's file name.")
    epoch: int | None = Field(None, description="The training epoch the checkpoint was saved at.")
    parameters: int = Field(description="Number of model parameters.")
    threshold: float = Field(description="An image is FAKE when P(FAKE) >= threshold.")
    temperature: float = Field(description="Calibration temperature: P(FAKE) = softmax(logits / T)[FAKE].")
    labels: dict[int, str] = Field(description="Label ids and names; FAKE is the positive class.")
    positive_class: str = "FAKE"
    preprocessing: dict[str, Any] = Field(description="Decoded size, model input size and normalisation.")
    metrics: dict[str, Any] = Field(description="The metrics the checkpoint was saved with (validation split).")
    explanations: bool = Field(description="Whether ?explain=true heatmaps are available.")
    limits: Limits


class Health(BaseModel):
    status: Literal["ok"] = "ok"
