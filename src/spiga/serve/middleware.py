"""The gatekeeper: pure ASGI middleware in front of every HTTP request of the app.

Per request, in order: a request id (the client's `X-Request-ID` when it is sane), the
API key, the body size the client declares, the in-flight bound and a first admission
check (all before the body is read); then, while the app reads the body, its size limit
and its deadline; on the way out, the request id and security headers, the metrics and
the last-resort JSON 500 (no stack trace leaves the server). WebSockets pass straight
through: the stream checks its own key (`spiga.serve.stream`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from starlette.datastructures import MutableHeaders

from .errors import ApiError

if TYPE_CHECKING:  # the state imports the pipeline; the gatekeeper only uses it
    from .state import ServerState

log = logging.getLogger("spiga.serve")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

#: The web page's Content-Security-Policy: its own scripts only (no inline code, no eval),
#: the camera's frames drawn from blob: URLs, connections (fetch, WebSocket) to itself only.
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


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


class Gatekeeper:
    """Pure ASGI middleware: request id, API key, in-flight bound and first admission
    check (before the body is read), body size limit and body-read deadline, security
    headers, metrics and the last-resort JSON 500 (no stack trace leaves the server)."""

    def __init__(self, app, state: "ServerState") -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # the stream checks its own key (spiga.serve.stream)
            return
        await _Passage(self.state, scope, receive, send).run(self.app)


class _Passage:
    """One HTTP request through the gatekeeper: what it knows of the request and of the
    answer sent so far."""

    def __init__(self, state: "ServerState", scope: dict[str, Any], receive, send) -> None:
        self.state = state
        self.settings = settings = state.settings
        self.scope, self._receive_raw, self._send_raw = scope, receive, send
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        incoming = self.headers.get("x-request-id", "")
        self.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope["spiga.request_id"] = self.request_id
        self.path = scope.get("path", "")
        self.endpoint = _endpoint(self.path)
        self.start = time.perf_counter()
        arrival = time.monotonic()
        scope["spiga.deadline"] = arrival + settings.timeout
        self.body_deadline = arrival + min(settings.body_timeout, settings.timeout)
        self.body_limit = state.body_limit(self.path)
        self.started = False  # the response has started
        self.status = 500
        self.refused = False  # the gatekeeper answered while the app was reading the body
        self.inflight = False  # counted in state.inflight
        self.received = 0
        self.body_done = False

    async def run(self, app) -> None:
        try:
            error = self._check_before_body()
            if error is not None:
                await self.answer_error(error)
                return
            await app(self.scope, self.receive, self.send)
        except _Refused:
            pass
        except Exception:  # noqa: BLE001 - the last resort: log it all, answer one JSON line
            await self._last_resort()
        finally:
            self._finish()

    # ----------------------------------------------------------------- before the body

    def _check_before_body(self) -> ApiError | None:
        """The first refusal that applies before the body is read (and, for an align
        request that passes, its place among the in-flight requests)."""
        settings = self.settings
        if settings.api_key is not None and needs_key(self.path) and \
                not key_matches(self.headers.get("authorization", ""), settings.api_key):
            return ApiError("unauthorized", "missing or wrong API key: send `Authorization: Bearer KEY`")
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.body_limit:
            return ApiError("image_too_large", f"request body of {int(declared)} bytes exceeds "
                                               f"the limit of {self.body_limit} bytes")
        if self.scope.get("method") == "POST" and self.path.startswith("/v1/align"):
            error = self._admission_error()
            if error is not None:
                return error
            self.state.inflight += 1
            self.inflight = True
        return None

    def _admission_error(self) -> ApiError | None:
        """503 when too many align requests are in flight, or when not even an empty
        request could be answered by its deadline (said before the upload)."""
        state, settings = self.state, self.settings
        admission = state.pipeline.admission
        if state.inflight >= settings.max_inflight:
            return ApiError("overloaded", f"{state.inflight} requests in progress (limit "
                                          f"{settings.max_inflight}); retry later",
                            {"Retry-After": str(admission.retry_after())})
        drain = admission.drain_seconds()
        if admission.busy() and drain >= settings.timeout:
            return ApiError("overloaded", f"about {drain:.1f} s of work queued, more than "
                                          f"the {settings.timeout:g} s deadline; retry later",
                            {"Retry-After": str(admission.retry_after())})
        return None

    # ----------------------------------------------------------------- the body

    async def receive(self) -> dict[str, Any]:
        """The app's `receive`: the body within its size limit and deadline."""
        if self.body_done:
            return await self._receive_raw()  # after the body: waiting for a disconnect has no deadline
        try:
            message = await asyncio.wait_for(self._receive_raw(), self.body_deadline - time.monotonic())
        except asyncio.TimeoutError:
            seconds = min(self.settings.body_timeout, self.settings.timeout)
            await self.refuse(ApiError("request_timeout", f"the request body did not arrive within {seconds:g} s",
                                       {"Connection": "close"}))
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.body_limit:
                await self.refuse(ApiError("image_too_large", f"request body exceeds the limit of "
                                                              f"{self.body_limit} bytes"))
            self.body_done = not message.get("more_body", False)
        else:
            self.body_done = True
        return message

    async def refuse(self, error: ApiError) -> None:
        """Answer `error` while the app is reading the body, then stop the app."""
        if not self.started:
            await self.answer_error(error)
        self.refused = True
        self.scope["spiga.refused"] = True  # the app's own error for the cut body is not logged
        raise _Refused()

    # ----------------------------------------------------------------- the answer

    async def send(self, message: dict[str, Any]) -> None:
        """The app's `send`: adds the request id and security headers; drops the app's
        own reply once the gatekeeper has answered."""
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            out = MutableHeaders(scope=message)
            out["X-Request-ID"] = self.request_id
            out["X-Content-Type-Options"] = "nosniff"
            if self.endpoint in ("/", "/static"):
                out["Content-Security-Policy"] = PAGE_POLICY
        await self._send_raw(message)

    async def answer_error(self, error: ApiError) -> None:
        response = self.state.error_response(error, self.request_id)
        self.started = True
        await response(self.scope, self._receive_raw, self.send)

    async def _last_resort(self) -> None:
        """After an unexpected error: log it all, and answer one JSON line if still possible."""
        if self.refused:
            return
        if not self.started:
            log.exception("request %s: unexpected error on %s %s", self.request_id, self.scope.get("method"),
                          self.path)
            await self.answer_error(ApiError("internal", f"internal error (request id {self.request_id})"))
        else:
            log.exception("request %s: error after the response started", self.request_id)

    def _finish(self) -> None:
        metrics = self.state.metrics
        if self.inflight:
            self.state.inflight -= 1
        metrics.requests.labels(self.endpoint, str(self.status)).inc()
        metrics.latency.labels(self.endpoint).observe(time.perf_counter() - self.start)
