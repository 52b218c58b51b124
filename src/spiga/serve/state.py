"""What the server's routes and middleware share: `ServerState` (the model, the settings,
the pipeline, the metrics, the counts of requests and streams), built by `create_app`."""

from __future__ import annotations

import asyncio
import logging

from fastapi import UploadFile
from fastapi.responses import JSONResponse

from ..inference import Aligner
from .errors import ApiError
from .metrics import Metrics
from .settings import ServeSettings
from .work import REQUEST_CODES, Pipeline

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
