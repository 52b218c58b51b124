"""The HTTP API (FastAPI): `create_app(aligner_or_model, settings)`.

    POST /v1/align          one image upload (+ optional boxes) -> the JSON of `spiga align`
    POST /v1/align/batch    several images -> one record per image (errors per image)
    GET  /v1/models         the served model: landmark layout, point colours, limits
    WS   /v1/stream         webcam frames in, tracked and smoothed faces out (`spiga.serve.stream`)
    GET  /healthz           liveness (never needs the API key)
    GET  /metrics           Prometheus text format (see `spiga.serve.metrics`)
    GET  /                  the web page (static/index.html)
    GET  /openapi.json      the OpenAPI schema (/docs renders it)

A request goes: the gatekeeper middleware (`spiga.serve.middleware`: request id, API key,
the in-flight bound and a first admission check before the body is read, body size and
body-read deadline, metrics) -> the route (`spiga.serve.routes`), which hands the upload
to the `Pipeline` (`spiga.serve.work`): admission control, decode and detection on the
decode threads, the `Batcher`, which runs the crops of concurrent requests as one
forward pass, all by the request's deadline -> JSON. Errors are JSON with a stable code
(`spiga.serve.errors`).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, UploadFile
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from ..inference import Aligner
from .errors import ApiError
from .metrics import Metrics
from .middleware import PAGE_POLICY, Gatekeeper, key_matches, needs_key
from .routes import STATIC, add_error_handlers, add_routes
from .settings import ServeSettings
from .work import REQUEST_CODES, Pipeline

__all__ = ["PAGE_POLICY", "ServeSettings", "ServerState", "create_app", "key_matches", "needs_key"]

log = logging.getLogger("spiga.serve")

_FORM_OVERHEAD = 64 * 1024  # boxes JSON and multipart framing


class ServerState:
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


def _load(aligner_or_model: Aligner | str | Path, settings: ServeSettings) -> Aligner:
    if isinstance(aligner_or_model, Aligner):
        return aligner_or_model
    from ..inference import load

    return load(aligner_or_model, device=settings.device, detector=settings.detector,
                precision=settings.precision, backend=settings.backend)


def _lifespan(state: ServerState):
    """Start the pipeline and measure the model's speed before serving; stop it after."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings = state.settings
        state.pipeline.start()
        await asyncio.to_thread(state.pipeline.calibrate)
        log.info("serving %s (%s) with max_batch=%d, max_wait_ms=%g, model_threads=%d, decode_threads=%d",
                 state.model_id, state.aligner, settings.max_batch, settings.max_wait_ms, settings.model_threads,
                 settings.decode_threads)
        yield
        await state.pipeline.stop()

    return lifespan


def create_app(aligner_or_model: Aligner | str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving one model.

    Args:
        aligner_or_model: a loaded `Aligner`, or a model name / checkpoint path to load
            (with `settings.device`, `detector`, `precision` and `backend`).
        settings: limits, batching, deadlines and the API key; defaults when None.
    """
    from . import stream  # noqa: F401 - loaded with the app, not at the first webcam connection

    settings = settings or ServeSettings()
    aligner = _load(aligner_or_model, settings)
    state = ServerState(aligner, settings, settings.model_id or _model_id(aligner_or_model, aligner))
    keyed = " Every /v1 request, /metrics and this schema need `Authorization: Bearer KEY`." if settings.api_key else ""
    app = FastAPI(
        title="spiga", version=_version(), lifespan=_lifespan(state),
        description="Face landmarks and head pose with SPIGA. Errors are JSON "
                    "`{\"error\": {\"code\", \"message\", \"request_id\"}}` with a stable code." + keyed)
    app.state.spiga = state
    app.add_middleware(Gatekeeper, state=state)
    add_error_handlers(app)
    add_routes(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _version() -> str:
    from .. import __version__

    return __version__
