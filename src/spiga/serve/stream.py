"""The live webcam stream: WebSocket `/v1/stream`.

Frames go in, tracked and smoothed faces come out, one answer per frame. Tracking and
smoothing are `spiga.video`'s (`Tracker` with its One Euro smoothing, as `spiga video`
uses them); the model runs through the server's batcher, so stream frames share forward
passes with uploads, and every frame passes admission control like a request.

Protocol (JSON text messages, frames as binary messages):

    client -> {"type": "start", "api_key": "KEY"}      first, within body_timeout seconds
                                                        (api_key only when the server has one;
                                                        an `Authorization: Bearer KEY` header on
                                                        the handshake does as well)
    server -> {"type": "ready", "model", "landmarks", "max_image_bytes", "frame_timeout_s"}
    client -> binary: 8 bytes little-endian float64 capture time in milliseconds, then
              the frame as JPEG, PNG or WebP bytes
    server -> {"type": "faces", "frame": n, "t": ms, "width", "height", "detected": bool,
               "faces": [{"id", "box", "landmarks", "headpose", "score", "pose_axes"}, ...]}
           or {"type": "skipped", "frame": n, "code": "overloaded" | "timeout", "message",
               "retry_after": s}: the frame was not worked on in time; send a later one
           or {"type": "error", "frame": n, "code", "message"}: a bad frame (the stream goes on)
    client -> {"type": "stop"}                            the server closes (1000)

Send the next frame after the answer to the last one: frames then never queue up, and
the frame rate follows what the server can do. Close codes: 1008 for a missing or wrong
key or no start message, 1013 when `max_streams` streams are open, 1001 after `timeout`
seconds without a message.

Stream slots (`max_streams`) are taken at authentication (a valid start message), not at
connection: sockets that have not yet sent one have their own budget
(`max_pending_streams`) and `body_timeout` seconds to send it; when that budget is full,
the oldest of them gives way (closed 1013) to the newcomer. Idle connections therefore
never keep a client with the key from streaming.

A frame is costed at the size of the stream's last frame (the first at the smallest
size): its header is read on a stream thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import struct
import time

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import SpigaError
from ..io import read_image_bytes
from ..video import Tracker, TrackerConfig
from .admission import MIN_MEGAPIXELS, ImageWork, Ticket
from .errors import ApiError, from_spiga_error
from .work import REQUEST_CODES, face_record

log = logging.getLogger("spiga.serve")

#: The header of a binary frame message: capture time in milliseconds.
FRAME_HEADER = struct.Struct("<d")


class BatchedAligner:
    """The two calls `spiga.video.Tracker` makes, with the model run by the server's batcher.

    `detect` runs the detector here (on the stream's thread) and keeps at most
    `max_faces` faces; `align_array` crops here and sends the crops through the batcher
    on the server's event loop, so they share passes with uploads and count in its queue.
    Called from a stream thread only.
    """

    def __init__(self, pipeline, loop: asyncio.AbstractEventLoop) -> None:
        self.pipeline = pipeline
        self.aligner = pipeline.aligner
        self.loop = loop
        self.ticket: Ticket | None = None
        self.deadline = 0.0
        self.megapixels = MIN_MEGAPIXELS  # the last frame's size: the next frame's estimate

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, list[float]]:
        start = time.perf_counter()
        found = self.aligner.face_boxes(image_bgr, max_faces=self.pipeline.settings.max_faces)
        size = image_bgr.shape[0] * image_bgr.shape[1] / 1e6
        self.pipeline.costs.observe_detect(size, time.perf_counter() - start, len(found) + found.dropped)
        return found.boxes, found.scores

    def align_array(self, image_bgr: np.ndarray, boxes) -> list:
        crops = self.aligner.crop_faces(image_bgr, self.aligner.face_boxes(image_bgr, boxes))
        if len(crops) == 0:
            return []
        wait = max(0.0, self.deadline - time.monotonic()) + 1.0  # the batcher answers by the deadline
        landmarks, poses = asyncio.run_coroutine_threadsafe(self._submit(crops.crops), self.loop).result(wait)
        return self.aligner.faces_from_crops(crops, landmarks, poses)

    async def _submit(self, crops: np.ndarray):
        if self.ticket is not None:
            self.ticket.submitted(0)
        return await self.pipeline.batcher.submit(crops, self.deadline)


class _Closed(Exception):
    """The stream ends: close with this code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def run_stream(websocket: WebSocket, state) -> None:
    """Serve one WebSocket stream until the client stops or leaves (see the module docstring)."""
    settings = state.settings
    await websocket.accept()
    try:
        _check_room(state)
        evicted = _wait_in_line(state)
        try:
            await _start(websocket, settings, evicted)
        finally:
            if evicted in state.unauthenticated:
                state.unauthenticated.remove(evicted)
        _check_room(state)  # streams may have started while this one authenticated
        state.streams += 1
        try:
            await _session(websocket, state)
        finally:
            state.streams -= 1
    except _Closed as closed:
        log.info("stream closed (%d): %s", closed.code, closed.reason)
        try:
            await websocket.close(code=closed.code, reason=closed.reason)
        except (RuntimeError, OSError):
            pass
    except (WebSocketDisconnect, OSError):
        pass  # the client left
    except RuntimeError as exc:  # sending on a socket the client closed
        log.debug("stream ended: %s", exc)


def _check_room(state) -> None:
    """Close (1013) when `max_streams` authenticated streams are open."""
    limit = state.settings.max_streams
    if state.streams >= limit:
        raise _Closed(1013, f"{state.streams} streams open (limit {limit}); retry later")


def _wait_in_line(state) -> asyncio.Event:
    """Take a place among the sockets waiting for their start message; when they are
    `max_pending_streams` already, the oldest gives way (its event is set)."""
    waiting: list[asyncio.Event] = state.unauthenticated
    while len(waiting) >= state.settings.max_pending_streams:
        waiting.pop(0).set()
    evicted = asyncio.Event()
    waiting.append(evicted)
    return evicted


async def _first_message(websocket: WebSocket, settings, evicted: asyncio.Event) -> dict:
    """The first message, within `body_timeout` and unless this socket must give way."""
    receive = asyncio.ensure_future(websocket.receive())
    give_way = asyncio.ensure_future(evicted.wait())
    try:
        done, _ = await asyncio.wait({receive, give_way}, timeout=settings.body_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        give_way.cancel()
        receive.cancel()  # no-op once done
    if receive in done and not receive.cancelled():
        return receive.result()
    await asyncio.gather(receive, give_way, return_exceptions=True)
    if evicted.is_set():
        raise _Closed(1013, "too many connections waiting to send their start message; retry")
    raise _Closed(1008, f"no start message within {settings.body_timeout:g} s")


async def _start(websocket: WebSocket, settings, evicted: asyncio.Event) -> None:
    """Read the start message and check the key (raises `_Closed`)."""
    message = await _first_message(websocket, settings, evicted)
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    try:
        start = json.loads(message.get("text") or "")
    except ValueError:
        start = None
    if not isinstance(start, dict) or start.get("type") != "start":
        raise _Closed(1008, 'the first message must be {"type": "start"} (JSON text)')
    if settings.api_key is not None:
        given = start.get("api_key")
        header = websocket.headers.get("authorization", "")
        by_header = hmac.compare_digest(header.encode("utf-8", "replace"),
                                        f"Bearer {settings.api_key}".encode("utf-8"))
        by_message = isinstance(given, str) and hmac.compare_digest(given.encode("utf-8", "replace"),
                                                                     settings.api_key.encode("utf-8"))
        if not (by_header or by_message):
            raise _Closed(1008, "unauthorized: missing or wrong API key")


async def _session(websocket: WebSocket, state) -> None:
    settings = state.settings
    pipeline = state.pipeline
    loop = asyncio.get_running_loop()
    adapter = BatchedAligner(pipeline, loop)
    tracker = Tracker(adapter, TrackerConfig())
    landmark_set = state.aligner.landmark_set
    await websocket.send_json({"type": "ready", "model": state.model_id, "landmarks": landmark_set.num_landmarks,
                               "max_image_bytes": settings.max_image_bytes,
                               "frame_timeout_s": settings.frame_timeout})
    frame = 0
    last_t = -math.inf
    while True:
        try:
            message = await asyncio.wait_for(websocket.receive(), settings.timeout)
        except asyncio.TimeoutError:
            raise _Closed(1001, f"no message for {settings.timeout:g} s") from None
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is None:
            try:
                command = json.loads(message.get("text") or "")
            except ValueError:
                command = None
            if isinstance(command, dict) and command.get("type") == "stop":
                raise _Closed(1000, "stopped")
            await websocket.send_json(_error(frame, ApiError("bad_request", 'expected a binary frame or '
                                                                            '{"type": "stop"}')))
            continue
        data = message["bytes"]
        if len(data) <= FRAME_HEADER.size:
            reply = _error(frame, ApiError("bad_request", "a frame is 8 bytes of capture time (float64 ms) "
                                                          "and then an image"))
        elif len(data) - FRAME_HEADER.size > settings.max_image_bytes:
            reply = _error(frame, ApiError("image_too_large", f"frame {frame}: exceeds the limit of "
                                                              f"{settings.max_image_bytes} bytes"))
        else:
            (t_ms,) = FRAME_HEADER.unpack_from(data)
            t = t_ms / 1000.0 if math.isfinite(t_ms) else time.monotonic()
            t = t if t > last_t else last_t + 1e-3  # the smoothing needs increasing times
            last_t = t
            reply = await _frame(state, tracker, adapter, frame, data[FRAME_HEADER.size:], t, t_ms)
        state.metrics.stream_frames.labels(reply["type"]).inc()
        await websocket.send_json(reply)
        frame += 1


def _error(frame: int, error: ApiError) -> dict:
    kind = "skipped" if error.code in REQUEST_CODES else "error"
    reply = {"type": kind, "frame": frame, "code": error.code, "message": error.message}
    if "Retry-After" in error.headers:
        reply["retry_after"] = int(error.headers["Retry-After"])
    return reply


def _step(tracker: Tracker, adapter: BatchedAligner, data: bytes, frame: int, t: float, max_pixels: int, costs):
    """Decode a frame and track it (blocking: on a stream thread); its size becomes the
    next frame's estimate."""
    start = time.perf_counter()
    try:
        bgr = read_image_bytes(data, f"frame {frame}", max_pixels)  # camera frames: 8-bit
    except SpigaError as exc:
        raise from_spiga_error(exc) from None
    size = bgr.shape[0] * bgr.shape[1] / 1e6
    adapter.megapixels = max(MIN_MEGAPIXELS, size)
    costs.observe_decode(size, time.perf_counter() - start)
    return tracker.step(bgr, t), bgr.shape[1], bgr.shape[0]


async def _frame(state, tracker: Tracker, adapter: BatchedAligner, frame: int, data: bytes, t: float,
                 t_ms: float) -> dict:
    """One frame: admitted, decoded, tracked by its deadline; the reply message."""
    settings = state.settings
    pipeline = state.pipeline
    deadline = time.monotonic() + settings.frame_timeout
    work = ImageWork(adapter.megapixels, len(tracker.tracks) or None)  # None: the tracker will detect
    try:
        ticket = pipeline.admission.admit([work], deadline)
    except ApiError as exc:
        return _error(frame, exc)
    adapter.ticket, adapter.deadline = ticket, deadline
    step = asyncio.ensure_future(pipeline.on_stream_threads(_step, tracker, adapter, data, frame, t,
                                                            settings.max_pixels, pipeline.costs))
    try:
        try:
            result, width, height = await asyncio.wait_for(asyncio.shield(step), deadline - time.monotonic())
        except asyncio.TimeoutError:
            await asyncio.gather(step, return_exceptions=True)  # the tracker is free only when its step ends
            return _error(frame, pipeline.timeout_error(f"frame {frame}"))
    except ApiError as exc:
        return _error(frame, exc)
    except SpigaError as exc:
        return _error(frame, from_spiga_error(exc))
    except Exception:  # noqa: BLE001 - one bad frame does not end the stream; nothing leaks
        log.exception("stream frame %d: unexpected error", frame)
        return _error(frame, ApiError("internal", f"internal error on frame {frame}"))
    finally:
        ticket.release()
        adapter.ticket = None
    return {"type": "faces", "frame": frame, "t": t_ms, "width": width, "height": height,
            "detected": result.detected, "faces": [face_record(face) for face in result.faces]}
