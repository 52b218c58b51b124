"""The HTTP API (FastAPI): `create_app(aligner_or_model, settings)`.

    POST /v1/align          one image upload (+ optional boxes) -> the JSON of `spiga align`
    POST /v1/align/batch    several images -> one record per image (errors per image)
    GET  /v1/models         the served model: landmark layout, point colours, limits
    GET  /healthz           liveness (never needs the API key)
    GET  /metrics           Prometheus text format (see `spiga.serve.metrics`)
    GET  /                  the web page (static/index.html)
    GET  /openapi.json      the OpenAPI schema (/docs renders it)

A request goes: the gatekeeper middleware (request id, API key, body-size limit, the
in-flight bound, metrics) -> the route, which decodes the upload and crops the faces on
a worker thread -> the `Batcher`, which runs the crops of concurrent requests as one
forward pass -> crop coordinates back to image pixels -> JSON. Errors are JSON with a
stable code (`spiga.serve.errors`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..draw import AXES_COLOURS, part_colours, pose_axes
from ..errors import SpigaError
from ..face import Face, HeadPose
from ..geometry.crop import crop_images, invert_affine, transform_points
from ..inference import Aligner
from ..io import read_image_bytes
from .batcher import Batcher
from .errors import CODES, ApiError, from_spiga_error
from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("spiga.serve")

STATIC = Path(__file__).parent / "static"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MB = 1024 * 1024
_FORM_OVERHEAD = 64 * 1024  # boxes JSON and multipart framing


@dataclass
class ServeSettings:
    """What `spiga serve` takes; the defaults suit one CPU or GPU machine.

    Attributes:
        model_id: the name clients see and may pass as `model` (default: the model
            name given, or the checkpoint file's stem).
        max_batch: most faces per forward pass.
        max_wait_ms: longest wait of the oldest queued request for company.
        max_queue: most faces waiting for the model; more answers 503 + Retry-After.
        max_inflight: most align requests being handled at once (upload to answer);
            more answers 503 at once, before the body is read. Bounds memory.
        workers: inference threads (forward passes that may run at once).
        max_image_mb: largest upload per image, in MiB.
        max_pixels: largest image, in pixels (checked on the header, before decoding).
        max_images: most images per batch request.
        max_faces: most boxes per image.
        timeout: seconds a request may wait for the model (504 after).
        api_key: when set, /v1 requests need `Authorization: Bearer KEY`.
        device, detector: for loading a model by name (ignored for an `Aligner`).
    """

    model_id: str | None = None
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_inflight: int = 64
    workers: int = 1
    max_image_mb: float = 10.0
    max_pixels: int = 50_000_000
    max_images: int = 16
    max_faces: int = 64
    timeout: float = 30.0
    api_key: str | None = None
    device: str | None = None
    detector: Any = "blazeface"

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= 1" for name in ("max_batch", "max_queue", "max_inflight", "workers",
                                                         "max_pixels", "max_images", "max_faces")
                    if getattr(self, name) < 1]
        if self.max_wait_ms < 0:
            problems.append("max_wait_ms must be >= 0")
        if not self.max_image_mb > 0 or not self.timeout > 0:
            problems.append("max_image_mb and timeout must be > 0")
        if self.api_key is not None and not self.api_key.strip():
            problems.append("api_key must not be empty")
        if problems:
            raise SpigaError("serve settings: " + "; ".join(problems))

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * _MB)


# --------------------------------------------------------------------------- response schemas (OpenAPI)


class ErrorBody(BaseModel):
    code: str = Field(description="stable error code: " + ", ".join(CODES))
    message: str = Field(description="one line for people")
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class HeadPoseOut(BaseModel):
    yaw: float
    pitch: float
    roll: float
    tx: float
    ty: float
    tz: float


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
    error: ErrorBody | None = Field(None, description="batch requests only: why this image has no result")


class AlignResponse(BaseModel):
    model: str
    images: list[ImageOut]


_ERRORS = {status: {"model": ErrorResponse, "description": ", ".join(c for c, (s, _) in CODES.items() if s == status)}
           for status in sorted({s for s, _ in CODES.values()})}


# --------------------------------------------------------------------------- per image work


@dataclass
class _Prepared:
    """An image decoded and its faces cropped (made on a worker thread)."""

    name: str
    width: int
    height: int
    boxes: np.ndarray            # (K, 4)
    scores: list[float | None]
    crops: np.ndarray            # (K, S, S, 3) uint8
    matrices: np.ndarray         # (K, 2, 3)


def parse_boxes(value: Any, what: str, max_faces: int) -> np.ndarray | None:
    """JSON boxes -> (K, 4) float64, or None for none. One box [x, y, w, h] or a list of them.

    Raises:
        ApiError: `bad_box` for anything but finite x, y, w, h with w, h > 0.
    """
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 4 and all(not isinstance(v, (list, dict)) for v in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ApiError("bad_box", f"{what}: expected a box [x, y, w, h] or a non-empty list of boxes")
    if len(value) > max_faces:
        raise ApiError("bad_request", f"{what}: {len(value)} boxes, the limit is {max_faces} per image")
    boxes = np.zeros((len(value), 4))
    for i, box in enumerate(value):
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise ApiError("bad_box", f"{what}: box {i} must be 4 numbers x, y, w, h, got {json.dumps(box)[:80]}")
        boxes[i] = box
        x, y, w, h = boxes[i]
        if not np.all(np.isfinite(boxes[i])):
            raise ApiError("bad_box", f"{what}: box {i} has a non-finite value")
        if w <= 0 or h <= 0:
            raise ApiError("bad_box", f"{what}: box {i} ({x:g}, {y:g}, {w:g}, {h:g}) must have positive "
                                      "width and height")
    return boxes


def _load_json_field(text: str | None, what: str) -> Any:
    if text is None or not text.strip():
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ApiError("bad_request", f"{what}: not valid JSON") from None


def prepare_image(aligner: Aligner, data: bytes, name: str, boxes: np.ndarray | None,
                  max_pixels: int) -> _Prepared:
    """Decode `data`, find or check the boxes, crop the faces (blocking; run on a thread)."""
    try:
        bgr = read_image_bytes(data, name, max_pixels)
    except SpigaError as exc:
        raise from_spiga_error(exc) from None
    height, width = bgr.shape[:2]
    scores: list[float | None]
    if boxes is None:
        if aligner.detector is None:
            raise ApiError("bad_request", f"{name}: no boxes given and the server has no face detector")
        boxes, detected = aligner.detect(bgr)
        if len(boxes) == 0:
            raise ApiError("no_face_found", f"{name}: no face found in the {width}x{height} image; pass boxes")
        scores = list(detected)
    else:
        for i, (x, y, w, h) in enumerate(boxes):
            if x >= width or y >= height or x + w <= 0 or y + h <= 0:
                raise ApiError("box_outside_image", f"{name}: box {i} ({x:g}, {y:g}, {w:g}, {h:g}) lies "
                                                    f"entirely outside the {width}x{height} image")
        scores = [None] * len(boxes)
    config = aligner.config
    crops, matrices = crop_images(bgr, boxes, config.image_size, config.crop_enlarge)
    return _Prepared(name, width, height, boxes, scores, crops, matrices)


def face_records(aligner: Aligner, prepared: _Prepared, landmarks_crop: np.ndarray,
                 poses: np.ndarray) -> list[dict]:
    """Model outputs in crop pixels -> `Face.to_dict()` records plus their `pose_axes`."""
    config = aligner.config
    landmarks = transform_points(landmarks_crop, invert_affine(prepared.matrices))
    records = []
    for i, box in enumerate(prepared.boxes):
        face = Face(box=tuple(float(v) for v in box), landmarks=landmarks[i],
                    headpose=HeadPose(*map(float, poses[i])), score=prepared.scores[i],
                    crop_matrix=prepared.matrices[i], crop_size=config.image_size,
                    focal_ratio=config.focal_ratio)
        record = face.to_dict()
        axes = pose_axes(face)
        record["pose_axes"] = axes.tolist() if np.all(np.isfinite(axes)) else []
        records.append(record)
    return records


def _hex(bgr: tuple[int, int, int]) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


# --------------------------------------------------------------------------- the gatekeeper middleware


class _Refused(Exception):
    """Raised into the app when the gatekeeper has already answered (body too large)."""


def _endpoint(path: str) -> str:
    """A bounded label for metrics (never the raw path: no label explosion from scanners)."""
    if path in ("/", "/v1/align", "/v1/align/batch", "/v1/models", "/healthz", "/metrics", "/openapi.json",
                "/docs"):
        return path
    if path.startswith("/static/"):
        return "/static"
    return "other"


class _Gatekeeper:
    """Pure ASGI middleware: request id, API key, body limit, in-flight bound, security
    headers, metrics and the last-resort JSON 500 (no stack trace leaves the server)."""

    def __init__(self, app, state: "_State") -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        settings = state.settings
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope["spiga.request_id"] = request_id
        path = scope.get("path", "")
        endpoint = _endpoint(path)
        start = time.perf_counter()
        answer = {"started": False, "status": 500, "refused": False}

        async def guarded_send(message) -> None:
            if answer["refused"]:
                return  # the gatekeeper already answered; drop the app's own reply
            if message["type"] == "http.response.start":
                answer["started"] = True
                answer["status"] = message["status"]
                out = MutableHeaders(scope=message)
                out["X-Request-ID"] = request_id
                out["X-Content-Type-Options"] = "nosniff"
                if endpoint in ("/", "/static"):
                    out["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' blob: data:; "
                                                      "object-src 'none'; frame-ancestors 'none'")
            await send(message)

        async def answer_error(error: ApiError) -> None:
            response = state.error_response(error, request_id)
            answer["started"] = True
            await response(scope, receive, guarded_send)

        inflight = False
        try:
            if path.startswith("/v1/") and settings.api_key is not None:
                given = headers.get("authorization", "")
                expected = f"Bearer {settings.api_key}"
                if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8")):
                    await answer_error(ApiError("unauthorized", "missing or wrong API key: send "
                                                                "`Authorization: Bearer KEY`"))
                    return
            limit = state.body_limit(path)
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                await answer_error(ApiError("image_too_large", f"request body of {int(declared)} bytes exceeds "
                                                               f"the limit of {limit} bytes"))
                return
            if scope.get("method") == "POST" and path.startswith("/v1/align"):
                if state.inflight >= settings.max_inflight:
                    await answer_error(ApiError("overloaded", f"{state.inflight} requests in progress (limit "
                                                              f"{settings.max_inflight}); retry later",
                                                {"Retry-After": str(state.batcher.retry_after())}))
                    return
                state.inflight += 1
                inflight = True
            received = 0

            async def limited_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit and not answer["started"]:
                        await answer_error(ApiError("image_too_large", f"request body exceeds the limit of "
                                                                       f"{limit} bytes"))
                        answer["refused"] = True
                        scope["spiga.refused"] = True  # the app's own error for the cut body is not logged
                        raise _Refused()
                return message

            await self.app(scope, limited_receive, guarded_send)
        except _Refused:
            pass
        except Exception:  # noqa: BLE001 - the last resort: log it all, answer one JSON line
            if answer["refused"]:
                pass
            elif not answer["started"]:
                log.exception("request %s: unexpected error on %s %s", request_id, scope.get("method"), path)
                await answer_error(ApiError("internal", f"internal error (request id {request_id})"))
            else:
                log.exception("request %s: error after the response started", request_id)
        finally:
            if inflight:
                state.inflight -= 1
            state.metrics.requests.labels(endpoint, str(answer["status"])).inc()
            state.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


# --------------------------------------------------------------------------- the app


class _State:
    """What the routes share: the model, settings, batcher, metrics."""

    def __init__(self, aligner: Aligner, settings: ServeSettings, model_id: str) -> None:
        self.aligner = aligner
        self.settings = settings
        self.model_id = model_id
        self.metrics = Metrics()
        self.batcher = Batcher(aligner.predict_crops, settings.max_batch, settings.max_wait_ms, settings.max_queue,
                               settings.workers, settings.timeout, self.metrics)
        self.inflight = 0

    def body_limit(self, path: str) -> int:
        """Largest request body in bytes: the images plus 64 KiB for fields and multipart framing."""
        images = self.settings.max_images if path == "/v1/align/batch" else 1
        return images * self.settings.max_image_bytes + _FORM_OVERHEAD

    def error_response(self, error: ApiError, request_id: str) -> JSONResponse:
        """Log `error` with the request id, count it, and make its JSON response."""
        level = logging.ERROR if error.status >= 500 and error.code != "overloaded" else logging.WARNING
        log.log(level, "request %s: %d %s: %s", request_id, error.status, error.code, error.message)
        self.metrics.errors.labels(error.code).inc()
        body = {"error": {"code": error.code, "message": error.message, "request_id": request_id}}
        return JSONResponse(body, status_code=error.status, headers=error.headers)

    def check_model(self, model: str | None) -> None:
        if model is not None and model.strip() and model != self.model_id:
            raise ApiError("unknown_model", f"model {model!r} is not served here; GET /v1/models lists "
                                            f"{self.model_id!r}")

    async def read_upload(self, upload: UploadFile) -> bytes:
        limit = self.settings.max_image_bytes
        name = upload.filename or "upload"
        if upload.size is not None and upload.size > limit:
            raise ApiError("image_too_large", f"{name}: {upload.size} bytes exceeds the limit of {limit} bytes "
                                              f"({self.settings.max_image_mb:g} MiB)")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ApiError("image_too_large", f"{name}: exceeds the limit of {limit} bytes")
        return data

    async def align_one(self, data: bytes, name: str, boxes: np.ndarray | None) -> dict:
        """One image: decode and crop on a thread, batch with other requests, back to pixels."""
        prepared = await asyncio.to_thread(prepare_image, self.aligner, data, name, boxes, self.settings.max_pixels)
        landmarks, poses = await self.batcher.submit(prepared.crops)
        return {"path": name, "width": prepared.width, "height": prepared.height,
                "faces": face_records(self.aligner, prepared, landmarks, poses)}

    def warm_up(self) -> None:
        """Build the detector and run the model once, so the first request is not slow."""
        size = self.aligner.config.image_size
        self.aligner.predict_crops(np.zeros((1, size, size, 3), np.uint8))
        if self.aligner.detector is not None:
            try:
                self.aligner.get_detector()
            except SpigaError as exc:
                log.warning("face detector unavailable (%s); requests must give boxes", exc)
                self.aligner.detector = None


def _model_id(model: Any, aligner: Aligner) -> str:
    if isinstance(model, (str, Path)) and not isinstance(model, Aligner):
        path = Path(model)
        return path.stem if path.suffix else str(model)
    return Path(aligner.name).stem if aligner.name != "<in memory>" else "model"


def create_app(aligner_or_model: Aligner | str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving one model.

    Args:
        aligner_or_model: a loaded `Aligner`, or a model name / checkpoint path to load
            (with `settings.device` and `settings.detector`).
        settings: limits, batching and the API key; defaults when None.
    """
    settings = settings or ServeSettings()
    if isinstance(aligner_or_model, Aligner):
        aligner = aligner_or_model
    else:
        from ..inference import load

        aligner = load(aligner_or_model, device=settings.device, detector=settings.detector)
    state = _State(aligner, settings, settings.model_id or _model_id(aligner_or_model, aligner))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        await asyncio.to_thread(state.warm_up)
        log.info("serving %s (%s) with max_batch=%d, max_wait_ms=%g, workers=%d", state.model_id, aligner,
                 settings.max_batch, settings.max_wait_ms, settings.workers)
        yield
        await state.batcher.stop()

    app = FastAPI(
        title="spiga", version=_version(), lifespan=lifespan,
        description="Face landmarks and head pose with SPIGA. Errors are JSON "
                    "`{\"error\": {\"code\", \"message\", \"request_id\"}}` with a stable code."
                    + (" Every /v1 request needs `Authorization: Bearer KEY`." if settings.api_key else ""))
    app.state.spiga = state
    app.add_middleware(_Gatekeeper, state=state)

    def request_id(request: Request) -> str:
        return request.scope.get("spiga.request_id", "-")

    def answered(request: Request) -> bool:
        """Whether the gatekeeper already answered (a body cut off at the size limit)."""
        return bool(request.scope.get("spiga.refused"))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        if answered(request):
            return Response(status_code=413)
        return state.error_response(exc, request_id(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        if answered(request):
            return Response(status_code=413)
        problems = []
        for error in exc.errors()[:3]:
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
            problems.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
        return state.error_response(ApiError("bad_request", "; ".join(problems) or "invalid request"),
                                    request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if answered(request):
            return Response(status_code=413)  # dropped by the gatekeeper: it answered already
        code = {404: "not_found", 405: "method_not_allowed", 413: "image_too_large"}.get(exc.status_code,
                                                                                        "bad_request")
        message = exc.detail if isinstance(exc.detail, str) else "bad request"
        if code == "not_found":
            message = f"no such endpoint: {request.url.path[:100]}"
        return state.error_response(ApiError(code, message), request_id(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # pragma: no cover - the gatekeeper answers first
        log.error("request %s: unexpected error", request_id(request), exc_info=exc)
        rid = request_id(request)
        return state.error_response(ApiError("internal", f"internal error (request id {rid})"), rid)

    @app.post("/v1/align", response_model=AlignResponse, responses=_ERRORS, tags=["align"],
              summary="Landmarks and head pose for the faces of one image")
    async def align(image: UploadFile = File(description="the image (JPEG, PNG, WebP, BMP, TIFF, ...)"),
                    boxes: str | None = Form(None, description="JSON: [x, y, w, h] or [[x, y, w, h], ...]; "
                                                               "omit to detect faces"),
                    model: str | None = Form(None, description="model id (GET /v1/models); default: the "
                                                               "served one")):
        state.check_model(model)
        box_array = parse_boxes(_load_json_field(boxes, "boxes"), "boxes", settings.max_faces)
        data = await state.read_upload(image)
        record = await state.align_one(data, image.filename or "upload", box_array)
        return JSONResponse({"model": state.model_id, "images": [record]})

    @app.post("/v1/align/batch", response_model=AlignResponse, responses=_ERRORS, tags=["align"],
              summary="Several images in one request; an image that fails gets its own `error`")
    async def align_batch(request: Request,
                          images: list[UploadFile] = File(description="the images (repeat the field)"),
                          boxes: str | None = Form(None, description="JSON list with one entry per image: "
                                                                     "null (detect) or boxes as for /v1/align"),
                          model: str | None = Form(None, description="model id")):
        state.check_model(model)
        if len(images) > settings.max_images:
            raise ApiError("bad_request", f"{len(images)} images, the limit is {settings.max_images} per request")
        per_image = _load_json_field(boxes, "boxes")
        if per_image is None:
            per_image = [None] * len(images)
        if not isinstance(per_image, list) or len(per_image) != len(images):
            raise ApiError("bad_request", f"boxes: expected a JSON list with one entry per image ({len(images)})")
        jobs = []
        for i, upload in enumerate(images):
            name = upload.filename or f"upload{i}"
            jobs.append(_batch_item(state, upload, name, per_image[i], f"boxes[{i}]"))
        records = await asyncio.gather(*jobs, return_exceptions=True)
        out = []
        for i, (upload, record) in enumerate(zip(images, records)):
            if isinstance(record, ApiError):
                if record.code in ("overloaded", "timeout"):
                    raise record  # the whole request is retried, not some of its images
                rid = request_id(request)
                state.metrics.errors.labels(record.code).inc()
                log.warning("request %s: image %d: %d %s: %s", rid, i, record.status, record.code, record.message)
                record = {"path": upload.filename or f"upload{i}", "faces": [],
                          "error": {"code": record.code, "message": record.message, "request_id": rid}}
            elif isinstance(record, BaseException):
                raise record
            out.append(record)
        return JSONResponse({"model": state.model_id, "images": out})

    @app.get("/v1/models", tags=["info"], summary="The served model and the server's limits")
    async def models():
        landmark_set = aligner.landmark_set
        return {
            "models": [{
                "id": state.model_id, "default": True,
                "landmarks": landmark_set.num_landmarks, "landmark_set": landmark_set.name,
                "parts": landmark_set.part_of_point(),
                "point_colours": [_hex(c) for c in part_colours(landmark_set)],
                "axes_colours": [_hex(c) for c in AXES_COLOURS],
                "input_size": aligner.config.image_size,
                "device": str(aligner.device),
                "detector": None if aligner.detector is None else getattr(aligner.detector, "name",
                                                                          str(aligner.detector)),
            }],
            "limits": {"max_image_mb": settings.max_image_mb, "max_pixels": settings.max_pixels,
                       "max_images": settings.max_images, "max_faces": settings.max_faces,
                       "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                       "max_queue": settings.max_queue, "timeout_s": settings.timeout},
            "auth": settings.api_key is not None,
        }

    @app.get("/healthz", tags=["info"], summary="Liveness: 200 while the server runs")
    async def healthz():
        return {"status": "ok", "model": state.model_id, "queue_faces": state.batcher.queued_faces}

    @app.get("/metrics", tags=["info"], summary="Prometheus text format")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _batch_item(state: _State, upload: UploadFile, name: str, boxes: Any, what: str) -> dict:
    box_array = parse_boxes(boxes, what, state.settings.max_faces)
    data = await state.read_upload(upload)
    return await state.align_one(data, name, box_array)


def _version() -> str:
    from .. import __version__

    return __version__
