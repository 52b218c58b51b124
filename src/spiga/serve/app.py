"""The HTTP API (FastAPI): `create_app(aligner_or_model, settings)`.

    POST /v1/align          one image upload (+ optional boxes) -> the JSON of `spiga align`
    POST /v1/align/batch    several images -> one record per image (errors per image)
    GET  /v1/models         the served model: landmark layout, point colours, limits
    WS   /v1/stream         webcam frames in, tracked and smoothed faces out (`spiga.serve.stream`)
    GET  /healthz           liveness (never needs the API key)
    GET  /metrics           Prometheus text format (see `spiga.serve.metrics`)
    GET  /                  the web page (static/index.html)
    GET  /openapi.json      the OpenAPI schema (/docs renders it)

A request goes: the gatekeeper middleware (request id, API key, the in-flight bound and a
first admission check before the body is read, body size and body-read deadline,
metrics) -> the route, which hands the upload to the `Pipeline` (`spiga.serve.work`):
admission control, decode and detection on the decode threads, the `Batcher`, which
runs the crops of concurrent requests as one forward pass, all by the request's
deadline -> JSON. Errors are JSON with a stable code (`spiga.serve.errors`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, create_model
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..draw import AXES_COLOURS, part_colours
from ..errors import SpigaError
from ..face import POSE_FIELDS
from ..inference import Aligner
from .errors import CODES, ApiError
from .metrics import CONTENT_TYPE, Metrics
from .work import REQUEST_CODES, Pipeline, Upload, load_json_field, parse_boxes

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
        max_queue: most faces waiting for the model, counting those expected from
            admitted images still being decoded; more answers 503 + Retry-After.
        max_inflight: most align requests being handled at once (upload to answer);
            more answers 503 at once, before the body is read. Bounds memory.
        workers: inference threads (forward passes that may run at once).
        decode_workers: threads that decode uploads, run the face detector and crop.
        max_image_mb: largest upload per image, in MiB.
        max_pixels: largest image, in pixels (checked on the header, before decoding).
        max_images: most images per batch request.
        max_faces: most faces per image (at most max_queue): boxes given (more is
            refused) or detected (the best-scored are kept; the answer says how many
            were dropped).
        timeout: seconds from a request's arrival to its answer; decode, detection and
            the model all run within it (504 after; 503 at once when the estimate of
            the queued work says it cannot be met).
        body_timeout: seconds a request's body may take to arrive (408 after).
        max_streams: most webcam streams (WebSocket /v1/stream) at once, counted from
            authentication (a valid start message).
        max_pending_streams: most stream sockets waiting for their start message (at most
            body_timeout seconds each); beyond it the oldest is closed (1013).
        frame_timeout: seconds a webcam frame may take; a later frame is skipped.
        api_key: when set, /v1 requests, /metrics, /openapi.json and the /docs pages
            need `Authorization: Bearer KEY` (the stream: the key in its first message).
        device, detector, precision, backend: for loading a model by name (ignored for
            an `Aligner`), as `spiga.load` takes them.
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
    decode_workers: int = 1
    body_timeout: float = 10.0
    max_streams: int = 4
    max_pending_streams: int = 16
    frame_timeout: float = 5.0
    api_key: str | None = None
    device: str | None = None
    detector: Any = "blazeface"
    precision: str = "float32"
    backend: str = "torch"

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= 1" for name in ("max_batch", "max_queue", "max_inflight", "workers",
                                                         "decode_workers", "max_pixels", "max_images", "max_faces",
                                                         "max_streams", "max_pending_streams")
                    if getattr(self, name) < 1]
        if self.max_wait_ms < 0:
            problems.append("max_wait_ms must be >= 0")
        if not all(getattr(self, name) > 0 for name in ("max_image_mb", "timeout", "body_timeout", "frame_timeout")):
            problems.append("max_image_mb, timeout, body_timeout and frame_timeout must be > 0")
        if not problems:
            self.max_faces = min(self.max_faces, self.max_queue)  # an image's faces must fit in the queue
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


def _hex(bgr: tuple[int, int, int]) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


# --------------------------------------------------------------------------- the gatekeeper middleware


class _Refused(Exception):
    """Raised into the app when the gatekeeper has already answered (body too large or late)."""


def _endpoint(path: str) -> str:
    """A bounded label for metrics (never the raw path: no label explosion from scanners)."""
    if path in ("/", "/v1/align", "/v1/align/batch", "/v1/models", "/v1/stream", "/healthz", "/metrics",
                "/openapi.json", "/docs", "/redoc"):
        return path
    if path.startswith("/static/"):
        return "/static"
    return "other"


def needs_key(path: str) -> bool:
    """Whether `path` needs the API key when one is set: the API, the metrics, the schema
    and its pages. The web page, its static files and /healthz stay open."""
    return (path.startswith("/v1/") or path in ("/metrics", "/openapi.json", "/docs", "/redoc")
            or path.startswith("/docs/"))


def key_matches(given: str, api_key: str) -> bool:
    """`given` is `Bearer KEY` for the configured key (compared in constant time)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {api_key}".encode("utf-8"))


#: The web page's Content-Security-Policy: its own scripts only (no inline code, no eval),
#: the camera's frames drawn from blob: URLs, connections (fetch, WebSocket) to itself only.
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class _Gatekeeper:
    """Pure ASGI middleware: request id, API key, in-flight bound and first admission
    check (before the body is read), body size limit and body-read deadline, security
    headers, metrics and the last-resort JSON 500 (no stack trace leaves the server)."""

    def __init__(self, app, state: "_State") -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # the stream checks its own key (spiga.serve.stream)
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
        arrival = time.monotonic()
        scope["spiga.deadline"] = arrival + settings.timeout
        body_deadline = arrival + min(settings.body_timeout, settings.timeout)
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
                    out["Content-Security-Policy"] = PAGE_POLICY
            await send(message)

        async def answer_error(error: ApiError) -> None:
            response = state.error_response(error, request_id)
            answer["started"] = True
            await response(scope, receive, guarded_send)

        async def refuse(error: ApiError) -> None:
            """Answer `error` while the app is reading the body, then stop the app."""
            if not answer["started"]:
                await answer_error(error)
            answer["refused"] = True
            scope["spiga.refused"] = True  # the app's own error for the cut body is not logged
            raise _Refused()

        inflight = False
        try:
            if settings.api_key is not None and needs_key(path) and \
                    not key_matches(headers.get("authorization", ""), settings.api_key):
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
                admission = state.pipeline.admission
                if state.inflight >= settings.max_inflight:
                    await answer_error(ApiError("overloaded", f"{state.inflight} requests in progress (limit "
                                                              f"{settings.max_inflight}); retry later",
                                                {"Retry-After": str(admission.retry_after())}))
                    return
                drain = admission.drain_seconds()
                if admission.busy() and drain >= settings.timeout:
                    # not even an empty request could be answered in time: say so before the upload
                    await answer_error(ApiError("overloaded", f"about {drain:.1f} s of work queued, more than "
                                                              f"the {settings.timeout:g} s deadline; retry later",
                                                {"Retry-After": str(admission.retry_after())}))
                    return
                state.inflight += 1
                inflight = True
            received = 0
            body_done = False

            async def limited_receive():
                nonlocal received, body_done
                if body_done:
                    return await receive()  # after the body: waiting for a disconnect has no deadline
                try:
                    message = await asyncio.wait_for(receive(), body_deadline - time.monotonic())
                except asyncio.TimeoutError:
                    await refuse(ApiError("request_timeout", f"the request body did not arrive within "
                                                             f"{min(settings.body_timeout, settings.timeout):g} s",
                                          {"Connection": "close"}))
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        await refuse(ApiError("image_too_large", f"request body exceeds the limit of {limit} "
                                                                 "bytes"))
                    body_done = not message.get("more_body", False)
                else:
                    body_done = True
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
    """What the routes share: the model, settings, pipeline (batcher, admission), metrics."""

    def __init__(self, aligner: Aligner, settings: ServeSettings, model_id: str) -> None:
        self.aligner = aligner
        self.settings = settings
        self.model_id = model_id
        self.metrics = Metrics()
        self.pipeline = Pipeline(aligner, settings, self.metrics)
        self.metrics.watch(self.pipeline.admission)
        self.inflight = 0
        self.streams = 0  # authenticated streams
        self.unauthenticated: list[asyncio.Event] = []  # sockets waiting for their start message, oldest first

    @property
    def batcher(self):
        return self.pipeline.batcher

    def body_limit(self, path: str) -> int:
        """Largest request body in bytes: the images plus 64 KiB for fields and multipart framing."""
        images = self.settings.max_images if path == "/v1/align/batch" else 1
        return images * self.settings.max_image_bytes + _FORM_OVERHEAD

    def error_response(self, error: ApiError, request_id: str) -> JSONResponse:
        """Log `error` with the request id, count it, and make its JSON response."""
        level = logging.ERROR if error.status >= 500 and error.code not in REQUEST_CODES else logging.WARNING
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


def _model_id(model: Any, aligner: Aligner) -> str:
    if isinstance(model, (str, Path)) and not isinstance(model, Aligner):
        path = Path(model)
        return path.stem if path.suffix else str(model)
    return Path(aligner.name).stem if aligner.name != "<in memory>" else "model"


def create_app(aligner_or_model: Aligner | str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving one model.

    Args:
        aligner_or_model: a loaded `Aligner`, or a model name / checkpoint path to load
            (with `settings.device`, `detector`, `precision` and `backend`).
        settings: limits, batching, deadlines and the API key; defaults when None.
    """
    from .stream import run_stream

    settings = settings or ServeSettings()
    if isinstance(aligner_or_model, Aligner):
        aligner = aligner_or_model
    else:
        from ..inference import load

        aligner = load(aligner_or_model, device=settings.device, detector=settings.detector,
                       precision=settings.precision, backend=settings.backend)
    state = _State(aligner, settings, settings.model_id or _model_id(aligner_or_model, aligner))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.pipeline.start()
        await asyncio.to_thread(state.pipeline.calibrate)
        log.info("serving %s (%s) with max_batch=%d, max_wait_ms=%g, workers=%d, decode_workers=%d", state.model_id,
                 aligner, settings.max_batch, settings.max_wait_ms, settings.workers, settings.decode_workers)
        yield
        await state.pipeline.stop()

    keyed = " Every /v1 request, /metrics and this schema need `Authorization: Bearer KEY`." if settings.api_key else ""
    app = FastAPI(
        title="spiga", version=_version(), lifespan=lifespan,
        description="Face landmarks and head pose with SPIGA. Errors are JSON "
                    "`{\"error\": {\"code\", \"message\", \"request_id\"}}` with a stable code." + keyed)
    app.state.spiga = state
    app.add_middleware(_Gatekeeper, state=state)

    def request_id(request: Request) -> str:
        return request.scope.get("spiga.request_id", "-")

    def deadline(request: Request) -> float:
        return request.scope.get("spiga.deadline") or time.monotonic() + settings.timeout

    def answered(request: Request) -> bool:
        """Whether the gatekeeper already answered (a body cut off at the size limit or deadline)."""
        return bool(request.scope.get("spiga.refused"))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        if answered(request):
            return Response(status_code=413)  # dropped by the gatekeeper: it answered already
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
            return Response(status_code=413)
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
    async def align(request: Request,
                    image: UploadFile = File(description="the image (JPEG, PNG, WebP, BMP, TIFF, ...)"),
                    boxes: str | None = Form(None, description="JSON: [x, y, w, h] or [[x, y, w, h], ...]; "
                                                               "omit to detect faces"),
                    model: str | None = Form(None, description="model id (GET /v1/models); default: the "
                                                               "served one")):
        state.check_model(model)
        box_array = parse_boxes(load_json_field(boxes, "boxes"), "boxes", settings.max_faces)
        data = await state.read_upload(image)
        [record] = await state.pipeline.align([Upload(data, image.filename or "upload", box_array)],
                                              deadline(request))
        if isinstance(record, Exception):
            raise record  # an unexpected one: the gatekeeper logs it and answers `internal`
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
            for i, record in zip(where, await state.pipeline.align(uploads, deadline(request))):
                records[i] = record
        out = []
        for i, record in enumerate(records):
            if isinstance(record, Exception) and not isinstance(record, ApiError):  # this image only
                log.error("request %s: image %d: unexpected error", request_id(request), i, exc_info=record)
                record = ApiError("internal", f"{names[i]}: internal error (request id {request_id(request)})")
            if isinstance(record, ApiError):
                rid = request_id(request)
                state.metrics.errors.labels(record.code).inc()
                log.warning("request %s: image %d: %d %s: %s", rid, i, record.status, record.code, record.message)
                record = {"path": names[i], "faces": [], "faces_dropped": 0,
                          "error": {"code": record.code, "message": record.message, "request_id": rid}}
            out.append(record)
        return JSONResponse({"model": state.model_id, "images": out})

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket):
        await run_stream(websocket, state)

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

    @app.get("/healthz", tags=["info"], summary="Liveness: 200 while the server runs")
    async def healthz():
        admission = state.pipeline.admission
        return {"status": "ok", "model": state.model_id, "queue_faces": state.batcher.queued_faces,
                "inflight": state.inflight, "streams": state.streams,
                "backlog_s": round(admission.drain_seconds(), 3)}

    @app.get("/metrics", tags=["info"], summary="Prometheus text format")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _version() -> str:
    from .. import __version__

    return __version__
