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

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..inference import Aligner
from .middleware import PAGE_POLICY, Gatekeeper, key_matches, needs_key
from .routes import STATIC, add_error_handlers, add_routes
from .settings import ServeSettings
from .state import ServerState

__all__ = ["PAGE_POLICY", "ServeSettings", "ServerState", "create_app", "key_matches", "needs_key"]

log = logging.getLogger("spiga.serve")

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
