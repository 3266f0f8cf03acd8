"""The ASGI app: `create_app(detector, settings)` -> FastAPI with the API, the web page and JSON errors.

Routes: POST /v1/predict, GET /v1/model, GET /healthz, and the page at / with its two static files,
read from the package once at start-up and served from memory (no request path reaches the disk).
"""

from __future__ import annotations

import functools
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from vitdetect import __version__
from vitdetect.config.commands import ServeSettings
from vitdetect.config.labels import ID2LABEL, POSITIVE_CLASS
from vitdetect.inference.detector import Detector, Prediction, UnsureRule
from vitdetect.inference.onnx import QUANTIZATION_KEYS, OnnxModel
from vitdetect.inference.scoring import TrainedModel
from vitdetect.models.checkpoint import model_name
from vitdetect.serve.batching import BatchingQueue
from vitdetect.serve.heatmaps import heatmap_png
from vitdetect.serve.schemas import ErrorResponse, Health, ImageResult, Limits, ModelInfo, PredictResponse
from vitdetect.serve.uploads import ApiError, Upload, UploadLimits, read_uploads

log = logging.getLogger("vitdetect.serve")
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; base-uri 'none'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
BINARY = {"schema": {"type": "string", "format": "binary", "minLength": 1}}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
        "description": "One or more image files (JPEG, PNG, WebP, BMP, GIF); repeat the field per file."}}}},
    "image/*": BINARY, "application/octet-stream": BINARY}}}
ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in (
    (400, "Malformed request"), (408, "The request body did not arrive within the read timeout"),
    (413, "Request too large, or too many files"),
    (415, "Neither multipart/form-data nor an image body"),
    (422, "No file in the request is an image that can be read"), (501, "Explanations not available"))}
MIN_CONFIDENCE_HELP = ("Answer UNSURE for an image whose calibrated probability of the predicted label is below "
                       "this (0-1); p_fake is still given. 0: every image gets REAL or FAKE.")
CHECK_STABILITY_HELP = ("Also judge each image after mild everyday edits (JPEG quality 75, blur sigma 0.5, "
                        "down-scale to 1/2 and back) and answer UNSURE when one of them changes the verdict; the "
                        "reason names the edit. Takes 4 times the model time.")


@dataclass
class Service:
    """What the routes share: the detector, the batching queue in front of it, the limits, the model card."""

    detector: Detector
    queue: BatchingQueue
    limits: UploadLimits
    info: ModelInfo
    static: dict[str, bytes]


def create_app(detector: Detector, settings: ServeSettings) -> FastAPI:
    """The app around one loaded detector; settings give the limits and batching."""
    queue = BatchingQueue(functools.partial(judge_batch, detector), settings.max_batch, settings.max_wait_ms / 1000)
    limits = UploadLimits(int(settings.max_upload_mb * 1e6), settings.max_files, settings.read_timeout_s)
    service = Service(detector, queue, limits, model_info(detector, settings), read_static_files())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        queue.start()
        yield
        await queue.stop()

    app = FastAPI(title="vitdetect", version=__version__, lifespan=lifespan,
                  description="Tell real photos from AI-generated images. FAKE (AI-generated) is the positive "
                  "class: an image is FAKE when P(FAKE) >= the threshold, or UNSURE when a request asks the model to "
                  "abstain (min_confidence, check_stability). Errors are JSON: {\"error\": message}.")
    app.state.service = service
    add_routes(app)
    add_error_handlers(app)
    return app


def model_info(detector: Detector, settings: ServeSettings) -> ModelInfo:
    trained = detector.trained
    return ModelInfo(
        **described(trained), checkpoint=Path(settings.checkpoint).name,
        threshold=detector.threshold, temperature=trained.temperature,
        labels=dict(ID2LABEL), positive_class=POSITIVE_CLASS, preprocessing=trained.prep.to_dict(),
        explanations=detector.explanations_unavailable() is None,
        limits=Limits(max_files=settings.max_files, max_upload_mb=settings.max_upload_mb,
                      max_batch=settings.max_batch),
    )


def described(trained: TrainedModel | OnnxModel) -> dict[str, Any]:
    """Name, epoch, parameters and metrics: from the checkpoint, or from an exported file's metadata (which keeps
    the model and its size, and for an int8 file how it was quantized, in place of the training metrics)."""
    if isinstance(trained, OnnxModel):
        meta = trained.metadata
        return {"name": meta.get("model") or "ONNX", "epoch": None, "parameters": int(meta.get("parameters", 0)),
                "metrics": {key: meta[key] for key in QUANTIZATION_KEYS if key in meta}}
    payload = trained.checkpoint
    return {"name": model_name(payload), "epoch": payload.get("epoch"), "metrics": payload.get("metrics") or {},
            "parameters": sum(parameter.numel() for parameter in trained.model.parameters())}


def read_static_files() -> dict[str, bytes]:
    folder = resources.files("vitdetect.serve") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_FILES}


def add_routes(app: FastAPI) -> None:
    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=UPLOAD_BODY,
              summary="Judge images: REAL or FAKE with P(FAKE), one result per image in upload order")
    async def predict(request: Request, explain: bool = Query(
            False, description="Add a heatmap of where the model looked to each result (heatmap_png)"),
            min_confidence: float = Query(0.0, ge=0, le=1, allow_inf_nan=False, description=MIN_CONFIDENCE_HELP),
            check_stability: bool = Query(False, description=CHECK_STABILITY_HELP)):
        service: Service = request.app.state.service
        if explain and (reason := service.detector.explanations_unavailable()):
            raise ApiError(501, f"this server gives no explanations: {reason}")
        uploads = await read_uploads(request, service.limits)
        unsure = UnsureRule(min_confidence, check_stability)
        predictions = await service.queue.submit([(upload.data, unsure) for upload in uploads])
        heatmaps = await explain_readable(service, service.detector.explain, uploads, predictions) if explain else {}
        results = [image_result(upload.name, prediction, heatmaps.get(index))
                   for index, (upload, prediction) in enumerate(zip(uploads, predictions, strict=True))]
        if not any(prediction.ok for prediction in predictions):
            raise ApiError(422, f"no uploaded file is an image that can be read ({len(results)} file(s))",
                           results=[result.model_dump() for result in results])
        return PredictResponse(threshold=service.detector.threshold, min_confidence=min_confidence,
                               check_stability=check_stability, results=results)

    @app.get("/v1/model", response_model=ModelInfo, summary="The model being served, its threshold and metrics")
    async def model(request: Request) -> ModelInfo:
        return request.app.state.service.info

    @app.get("/healthz", response_model=Health, summary="Liveness and readiness probe")
    async def healthz() -> Health:
        return Health()

    for route, name in (("/", "index.html"), ("/static/app.js", "app.js"), ("/static/style.css", "style.css")):
        app.add_api_route(route, static_page(name), methods=["GET"], include_in_schema=False)


def static_page(name: str):
    async def page(request: Request) -> Response:
        return Response(request.app.state.service.static[name], media_type=STATIC_FILES[name],
                        headers=PAGE_HEADERS)

    return page


async def explain_readable(service: Service, explain_images, uploads: list[Upload],
                           predictions: list[Prediction]) -> dict[int, str]:
    """Heatmaps (base64 PNG) of the readable uploads, by upload index, computed on the model thread."""
    readable = [index for index, prediction in enumerate(predictions) if prediction.ok]
    maps = await service.queue.run_on_model_thread(explain_images, [uploads[index].data for index in readable])
    return {index: heatmap_png(heatmap) for index, heatmap in zip(readable, maps, strict=True)}


def judge_batch(detector: Detector, items: list[tuple[bytes, UnsureRule]]) -> list[Prediction]:
    """The batching queue's model call: requests that asked for different UNSURE rules share a batch, and each
    rule's images go through one Detector.predict."""
    judged: dict[int, Prediction] = {}
    for unsure in dict.fromkeys(unsure for _, unsure in items):
        chosen = [index for index, (_, wanted) in enumerate(items) if wanted == unsure]
        judged.update(zip(chosen, detector.predict([items[index][0] for index in chosen], unsure), strict=True))
    return [judged[index] for index in range(len(items))]


def image_result(name: str, prediction: Prediction, heatmap: str | None) -> ImageResult:
    return ImageResult(name=name, label=prediction.label, p_fake=prediction.p_fake,
                       confidence=prediction.confidence, error=prediction.error, reason=prediction.reason,
                       heatmap_png=heatmap)


def add_error_handlers(app: FastAPI) -> None:
    """Every error is {"error": message} with its status; an unexpected one is a 500 without a traceback."""

    def error(status: int, message: str, **extra) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.message, **exc.extra)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in {"query", "body"})
        return error(422, f"invalid {where or 'request'}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("error while answering %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, "internal server error (details in the server log)")
