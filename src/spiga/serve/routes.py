"""The endpoints of the HTTP API and its error handlers (`create_app` registers them).

Every endpoint finds what it shares with the others (model, settings, pipeline,
metrics) in `request.app.state.spiga`, a `ServerState`; `add_routes` lists the paths.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..draw import AXES_COLOURS, part_colours
from ..face import POSE_FIELDS
from .errors import CODES, ApiError
from .metrics import CONTENT_TYPE
from .work import Upload, load_json_field, parse_boxes

if TYPE_CHECKING:
    from .state import ServerState

log = logging.getLogger("spiga.serve")

STATIC = Path(__file__).parent / "static"


# --------------------------------------------------------------------------- response schemas (OpenAPI)


class ErrorBody(BaseModel):
    code: str = Field(description="stable error code: " + ", ".join(CODES))
    message: str = Field(description="one line for people")
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorBody


#: The pose's fields, named once (`spiga.face.POSE_FIELDS`).
HeadPoseOut = create_model("HeadPoseOut", **{name: (float, ...) for name in POSE_FIELDS})


class FaceOut(BaseModel):
    box: list[float] = Field(description="x, y, w, h in image pixels")
    landmarks: list[list[float]] = Field(description="L points [x, y], image pixels")
    headpose: HeadPoseOut = Field(description="degrees; translation in the crop camera's units")
    score: float | None = Field(None, description="detector score (absent when boxes were given)")
    pose_axes: list[list[float]] = Field(
        description="4 image points: the head origin and the ends of its x (red), y (green), z (blue) axes")


class ImageOut(BaseModel):
    path: str = Field(description="the upload's file name")
    width: int | None = None
    height: int | None = None
    faces: list[FaceOut] = []
    faces_dropped: int = Field(0, description="detected faces left out beyond the server's max_faces "
                                              "(the best-scored are kept)")
    error: ErrorBody | None = Field(None, description="batch requests only: why this image has no result")


class AlignResponse(BaseModel):
    model: str
    images: list[ImageOut]


_ERRORS = {status: {"model": ErrorResponse, "description": ", ".join(c for c, (s, _) in CODES.items() if s == status)}
           for status in sorted({s for s, _ in CODES.values()})}


# --------------------------------------------------------------------------- helpers


def _css_colour_from_bgr(bgr: tuple[int, int, int]) -> str:
    """An OpenCV (blue, green, red) colour as the page's CSS `#rrggbb`."""
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


def _state(request: Request | WebSocket) -> "ServerState":
    return request.app.state.spiga


def _request_id(request: Request) -> str:
    return request.scope.get("spiga.request_id", "-")


def _deadline(request: Request) -> float:
    return request.scope.get("spiga.deadline") or time.monotonic() + _state(request).settings.timeout


def _answered(request: Request) -> bool:
    """Whether the gatekeeper already answered (a body cut off at the size limit or deadline)."""
    return bool(request.scope.get("spiga.refused"))


# --------------------------------------------------------------------------- error handlers


async def _api_error(request: Request, exc: ApiError):
    if _answered(request):
        return Response(status_code=413)  # dropped by the gatekeeper: it answered already
    return _state(request).error_response(exc, _request_id(request))


async def _validation_error(request: Request, exc: RequestValidationError):
    if _answered(request):
        return Response(status_code=413)
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        problems.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return _state(request).error_response(ApiError("bad_request", "; ".join(problems) or "invalid request"),
                                          _request_id(request))


async def _http_error(request: Request, exc: StarletteHTTPException):
    if _answered(request):
        return Response(status_code=413)
    code = {404: "not_found", 405: "method_not_allowed", 413: "image_too_large"}.get(exc.status_code, "bad_request")
    message = exc.detail if isinstance(exc.detail, str) else "bad request"
    if code == "not_found":
        message = f"no such endpoint: {request.url.path[:100]}"
    return _state(request).error_response(ApiError(code, message), _request_id(request))


async def _unexpected(request: Request, exc: Exception):  # pragma: no cover - the gatekeeper answers first
    log.error("request %s: unexpected error", _request_id(request), exc_info=exc)
    rid = _request_id(request)
    return _state(request).error_response(ApiError("internal", f"internal error (request id {rid})"), rid)


def add_error_handlers(app: FastAPI) -> None:
    """Every error the app raises becomes the JSON error body with its stable code."""
    for kind, handler in ((ApiError, _api_error), (RequestValidationError, _validation_error),
                          (StarletteHTTPException, _http_error), (Exception, _unexpected)):
        app.add_exception_handler(kind, handler)


# --------------------------------------------------------------------------- align


async def align(request: Request,
                image: UploadFile = File(description="the image (JPEG, PNG, WebP, BMP, TIFF, ...)"),
                boxes: str | None = Form(None, description="JSON: [x, y, w, h] or [[x, y, w, h], ...]; "
                                                           "omit to detect faces"),
                model: str | None = Form(None, description="model id (GET /v1/models); default: the "
                                                           "served one")):
    state = _state(request)
    state.check_model(model)
    box_array = parse_boxes(load_json_field(boxes, "boxes"), "boxes", state.settings.max_faces)
    data = await state.read_upload(image)
    [record] = await state.pipeline.align([Upload(data, image.filename or "upload", box_array)], _deadline(request))
    if isinstance(record, Exception):
        raise record  # an unexpected one: the gatekeeper logs it and answers `internal`
    return JSONResponse({"model": state.model_id, "images": [record]})


async def align_batch(request: Request,
                      images: list[UploadFile] = File(description="the images (repeat the field)"),
                      boxes: str | None = Form(None, description="JSON list with one entry per image: "
                                                                 "null (detect) or boxes as for /v1/align"),
                      model: str | None = Form(None, description="model id")):
    state = _state(request)
    settings = state.settings
    state.check_model(model)
    if len(images) > settings.max_images:
        raise ApiError("bad_request", f"{len(images)} images, the limit is {settings.max_images} per request")
    per_image = load_json_field(boxes, "boxes")
    if per_image is None:
        per_image = [None] * len(images)
    if not isinstance(per_image, list) or len(per_image) != len(images):
        raise ApiError("bad_request", f"boxes: expected a JSON list with one entry per image ({len(images)})")
    names = [upload.filename or f"upload{i}" for i, upload in enumerate(images)]
    records: list[dict | Exception | None] = [None] * len(images)
    uploads, where = [], []
    for i, upload in enumerate(images):
        try:
            box_array = parse_boxes(per_image[i], f"boxes[{i}]", settings.max_faces)
            uploads.append(Upload(await state.read_upload(upload), names[i], box_array))
            where.append(i)
        except ApiError as exc:
            records[i] = exc
    if uploads:
        for i, record in zip(where, await state.pipeline.align(uploads, _deadline(request))):
            records[i] = record
    out = [_batch_record(request, i, name, record) for i, (name, record) in enumerate(zip(names, records))]
    return JSONResponse({"model": state.model_id, "images": out})


def _batch_record(request: Request, index: int, name: str, record: dict | Exception) -> dict:
    """Image `index`'s record in a batch answer: its result, or its own error (logged, counted)."""
    if isinstance(record, Exception) and not isinstance(record, ApiError):  # this image only
        log.error("request %s: image %d: unexpected error", _request_id(request), index, exc_info=record)
        record = ApiError("internal", f"{name}: internal error (request id {_request_id(request)})")
    if isinstance(record, ApiError):
        rid = _request_id(request)
        _state(request).metrics.errors.labels(record.code).inc()
        log.warning("request %s: image %d: %d %s: %s", rid, index, record.status, record.code, record.message)
        record = {"path": name, "faces": [], "faces_dropped": 0,
                  "error": {"code": record.code, "message": record.message, "request_id": rid}}
    return record


async def stream(websocket: WebSocket):
    from .stream import run_stream

    await run_stream(websocket, _state(websocket))


# --------------------------------------------------------------------------- information and the page


async def models(request: Request):
    state = _state(request)
    aligner, settings = state.aligner, state.settings
    landmark_set = aligner.landmark_set
    return {
        "models": [{
            "id": state.model_id, "default": True,
            "landmarks": landmark_set.num_landmarks, "landmark_set": landmark_set.name,
            "parts": landmark_set.part_of_point(),
            "point_colours": [_css_colour_from_bgr(c) for c in part_colours(landmark_set)],
            "axes_colours": [_css_colour_from_bgr(c) for c in AXES_COLOURS],
            "input_size": aligner.config.image_size,
            "device": str(aligner.device),
            "precision": str(aligner.precision),
            "backend": getattr(aligner.backend, "name", "torch"),
            "detector": None if aligner.detector is None else getattr(aligner.detector, "name",
                                                                      str(aligner.detector)),
        }],
        "limits": {"max_image_mb": settings.max_image_mb, "max_pixels": settings.max_pixels,
                   "max_images": settings.max_images, "max_faces": settings.max_faces,
                   "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                   "max_queue": settings.max_queue, "timeout_s": settings.timeout,
                   "body_timeout_s": settings.body_timeout, "max_streams": settings.max_streams,
                   "max_pending_streams": settings.max_pending_streams,
                   "frame_timeout_s": settings.frame_timeout},
        "auth": settings.api_key is not None,
    }


async def healthz(request: Request):
    state = _state(request)
    admission = state.pipeline.admission
    return {"status": "ok", "model": state.model_id, "queue_faces": state.batcher.queued_faces,
            "inflight": state.inflight, "streams": state.streams,
            "backlog_s": round(admission.drain_seconds(), 3)}


async def metrics(request: Request):
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)


async def index():
    return FileResponse(STATIC / "index.html", media_type="text/html")


def add_routes(app: FastAPI) -> None:
    """Register the endpoints on `app`, with what the OpenAPI schema says of them."""
    app.post("/v1/align", response_model=AlignResponse, responses=_ERRORS, tags=["align"],
             summary="Landmarks and head pose for the faces of one image")(align)
    app.post("/v1/align/batch", response_model=AlignResponse, responses=_ERRORS, tags=["align"],
             summary="Several images in one request; an image that fails gets its own `error`")(align_batch)
    app.websocket("/v1/stream")(stream)
    app.get("/v1/models", tags=["info"], summary="The served model and the server's limits")(models)
    app.get("/healthz", tags=["info"], summary="Liveness: 200 while the server runs")(healthz)
    app.get("/metrics", tags=["info"], summary="Prometheus text format")(metrics)
    app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)(index)
