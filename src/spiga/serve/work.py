"""The work of a request: decode, detect and crop on the decode threads, the model via
the batcher, all under the request's deadline and admission control.

    pipeline = Pipeline(aligner, settings, metrics)
    records = await pipeline.align([Upload(data, "a.jpg", None)], deadline)

`Pipeline.align` admits the request (`spiga.serve.admission`; 503 at once when it cannot
be answered in time, 413 when its own work is longer than the deadline), runs each
image's header probe, decode and detection on a bounded thread pool (`decode_threads`
threads; nothing that reads image bytes runs on the event loop), hands its crops to the
batcher, and answers by the deadline: `ApiError("timeout")` (504 with `Retry-After`) if
the work is not done by then. Work not started by then never runs; work under way is
dropped at its next stage (after the header, the decode, the detection; between the
batcher's passes). Once a decode thread has read an upload's header, its real size
re-judges it (413, or 503 when it no longer fits its deadline). While a request waits for
the decode threads, each finished decode and forward pass (new cost measurements)
re-checks it: one that can no longer be answered in time is refused then (503).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..draw import pose_axes
from ..errors import SpigaError
from ..face import Face
from ..inference import Aligner
from ..inference.aligner import FaceCrops
from ..io import image_record, read_image_bytes
from ..io.images import open_image_header
from .admission import MIN_MEGAPIXELS, Admission, Costs, ImageWork, Ticket
from .batcher import Batcher
from .errors import ApiError, from_spiga_error
from .metrics import Metrics

log = logging.getLogger("spiga.serve")

#: Codes that fail a whole request (retry it as a whole), not one image of a batch.
REQUEST_CODES = ("overloaded", "timeout")


@dataclass(frozen=True)
class Upload:
    """One uploaded image: its bytes, file name and boxes ((K, 4), or None to detect)."""

    data: bytes
    name: str
    boxes: np.ndarray | None = None


@dataclass
class Prepared:
    """An image decoded and its faces cropped (made on a decode thread)."""

    name: str
    width: int
    height: int
    faces: FaceCrops             # boxes, scores, crops (K, S, S, 3) uint8, matrices; `faces.faces.dropped`


# --------------------------------------------------------------------------- request fields


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
        try:
            boxes[i] = [float(v) for v in box]
        except OverflowError:  # a JSON integer such as 10**400: no float holds it
            raise ApiError("bad_box", f"{what}: box {i} has a value too large for a number") from None
        x, y, w, h = boxes[i]
        if not np.all(np.isfinite(boxes[i])):
            raise ApiError("bad_box", f"{what}: box {i} has a non-finite value")
        if w <= 0 or h <= 0:
            raise ApiError("bad_box", f"{what}: box {i} ({x:g}, {y:g}, {w:g}, {h:g}) must have positive "
                                      "width and height")
    return boxes


def load_json_field(text: str | None, what: str) -> Any:
    """A form field's JSON, None when absent or blank."""
    if text is None or not text.strip():
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ApiError("bad_request", f"{what}: not valid JSON") from None


def image_work(width: int, height: int, faces: int | None) -> ImageWork:
    """An image's work from its header's size (`faces`: its boxes, None to detect)."""
    return ImageWork(max(MIN_MEGAPIXELS, width * height / 1e6), faces)


# --------------------------------------------------------------------------- per image work


def prepare_image(aligner: Aligner, data: bytes, name: str, boxes: np.ndarray | None, max_pixels: int,
                  max_faces: int, costs: Costs | None = None, sized: Callable[[int, int], None] | None = None,
                  answered: threading.Event | None = None) -> Prepared:
    """Read the header (`open_image_header`, the decoder's own probe), let `sized(width,
    height)` judge the real size (it raises to refuse), decode, find (at most `max_faces`)
    or check the boxes, crop the faces: the aligner's own path (`Aligner.face_boxes`,
    `Aligner.crop_faces`). Stops between stages once `answered` is set (its request has
    been answered: the work is dropped).

    Blocking: runs on a decode thread. Records its decode and detection times in `costs`.
    """
    start = time.perf_counter()
    try:
        header = open_image_header(data, name, max_pixels)
        with header:
            if sized is not None:
                sized(header.width, header.height)
            _still_wanted(answered, name)
            bgr = read_image_bytes(data, name, max_pixels, aligner.depth_scaling, header=header)
    except SpigaError as exc:
        raise from_spiga_error(exc) from None
    height, width = bgr.shape[:2]
    size = width * height / 1e6
    detect_seconds = 0.0
    try:
        if boxes is None:
            if aligner.detector is None:
                raise ApiError("bad_request", f"{name}: no boxes given and the server has no face detector")
            _still_wanted(answered, name)
            detect_start = time.perf_counter()
            found = aligner.face_boxes(bgr, max_faces=max_faces)
            detect_seconds = time.perf_counter() - detect_start
            if costs is not None:
                costs.observe_detect(size, detect_seconds, len(found) + found.dropped)
            if len(found) == 0:
                raise ApiError("no_face_found", f"{name}: no face found in the {width}x{height} image; pass boxes")
        else:
            found = aligner.face_boxes(bgr, boxes)
        _still_wanted(answered, name)
        crops = aligner.crop_faces(bgr, found)
    except SpigaError as exc:  # a bad box, a detector's error: named after the upload
        error = from_spiga_error(exc)
        raise ApiError(error.code, f"{name}: {error.message}") from None
    if costs is not None:
        costs.observe_decode(size, time.perf_counter() - start - detect_seconds)
    return Prepared(name, width, height, crops)


def _still_wanted(answered: threading.Event | None, name: str) -> None:
    """Stop the work of a request that has been answered already (a 504 or a 503)."""
    if answered is not None and answered.is_set():
        raise ApiError("timeout", f"{name}: dropped, its request was answered already")


def _retrieve(future: asyncio.Future) -> None:
    """Mark a cancelled gather's outcome as seen (no 'exception was never retrieved' log)."""
    if not future.cancelled():
        future.exception()


def face_record(face: Face) -> dict:
    """`Face.to_dict()` plus its `pose_axes` (4 image points; empty when not finite)."""
    record = face.to_dict()
    axes = pose_axes(face)
    record["pose_axes"] = axes.tolist() if np.all(np.isfinite(axes)) else []
    return record


# --------------------------------------------------------------------------- the pipeline


@dataclass(eq=False)
class _Waiting:
    """An admitted request while some of its images wait for a decode thread."""

    deadline: float
    ticket: Ticket
    not_started: dict[int, float]  # image index -> its decode estimate (seconds)
    refused: asyncio.Future        # set to an ApiError when it is found overdue

    @property
    def decode_seconds(self) -> float:
        return sum(self.not_started.values())

    @property
    def faces(self) -> int:
        return sum(self.ticket.faces)


class Pipeline:
    """Decode threads, the batcher and admission control of one app.

    Args:
        aligner: the model.
        settings: a `ServeSettings` (limits, threads, timeouts).
        metrics: where the work is counted.
    """

    def __init__(self, aligner: Aligner, settings, metrics: Metrics) -> None:
        self.aligner = aligner
        self.settings = settings
        self.metrics = metrics
        self.costs = Costs()
        self.batcher = Batcher(aligner.predict_crops, settings.max_batch, settings.max_wait_ms, settings.max_queue,
                               settings.model_threads, settings.timeout, metrics, self.costs)
        self.admission = Admission(self.costs, self.batcher, settings.decode_threads, settings.model_threads,
                                   settings.max_queue, settings.max_faces, settings.max_batch)
        self._decode: ThreadPoolExecutor | None = None
        self._streams: ThreadPoolExecutor | None = None
        self._waiting: list[_Waiting] = []  # in admission order

    def start(self) -> None:
        self.batcher.start()
        if self._decode is None:
            self._decode = ThreadPoolExecutor(self.settings.decode_threads, thread_name_prefix="spiga-decode")
            self._streams = ThreadPoolExecutor(self.settings.max_streams, thread_name_prefix="spiga-stream")

    async def stop(self) -> None:
        await self.batcher.stop()
        for pool in (self._decode, self._streams):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._decode = self._streams = None

    def timeout_error(self, what: str = "the request") -> ApiError:
        return ApiError("timeout", f"{what} was not done within its deadline ({self.settings.timeout:g} s); "
                                   "the server is busy", {"Retry-After": str(self.admission.retry_after())})

    async def on_decode_threads(self, ticket: Ticket | None, index: int, function: Callable, *args,
                                waiting: _Waiting | None = None) -> Any:
        """Run `function(*args)` on a decode thread; the ticket's decode reservation for
        image `index` is given back when it leaves the pool (even after a timeout), and
        the waiting requests are re-checked then."""
        if self._decode is None:
            self.start()
        loop = asyncio.get_running_loop()

        def run():
            if waiting is not None:
                loop.call_soon_threadsafe(self._started, waiting, index)
            return function(*args)

        def left(_) -> None:
            if ticket is not None:
                ticket.decoded(index)
            self.shed()

        future: Future = self._decode.submit(run)
        if ticket is not None:
            ticket.decode_queued(index)
        def leaving(done: Future) -> None:
            try:
                loop.call_soon_threadsafe(left, done)
            except RuntimeError:  # the loop closed (shutdown): nothing left to account
                pass

        future.add_done_callback(leaving)
        return await asyncio.wrap_future(future)

    def _started(self, waiting: _Waiting, index: int) -> None:
        waiting.not_started.pop(index, None)
        if not waiting.not_started and waiting in self._waiting:
            self._waiting.remove(waiting)

    def shed(self) -> None:
        """Refuse the waiting requests that the current costs say cannot be answered in time."""
        if not self._waiting:
            return
        for entry in self.admission.overdue(self._waiting):
            self._waiting.remove(entry)
            if not entry.refused.done():
                self.admission.refused += 1
                entry.refused.set_result(ApiError(
                    "overloaded", "no longer expected to be answered within its deadline (the server got slower "
                                  "since it was admitted); retry later",
                    {"Retry-After": str(self.admission.retry_after())}))

    async def on_stream_threads(self, function: Callable, *args) -> Any:
        """Run `function(*args)` on a stream thread (one per open stream at most)."""
        if self._streams is None:
            self.start()
        return await asyncio.get_running_loop().run_in_executor(self._streams, function, *args)

    async def align(self, uploads: list[Upload], deadline: float) -> list[dict | Exception]:
        """Records (the JSON of `spiga align` per image, plus `faces_dropped`) or, per image,
        the `ApiError` that image met (any other exception: an unexpected error, for the
        caller to log and answer as `internal`).

        Uploads are costed at the smallest size until a decode thread has read their
        header (see `spiga.serve.admission`).

        Raises:
            ApiError: `too_much_work` or `overloaded` (refused at once) or `timeout` (at
                the deadline) for the whole request.
        """
        works = [ImageWork(MIN_MEGAPIXELS, None if u.boxes is None else len(u.boxes)) for u in uploads]
        ticket = self.admission.admit(works, deadline, budget=self.settings.timeout)
        answered = threading.Event()  # set when the request is answered: its leftover work is dropped
        waiting = _Waiting(deadline, ticket, dict(enumerate(ticket.decode)), asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        jobs = asyncio.ensure_future(asyncio.gather(
            *(self._align_one(ticket, i, upload, deadline, waiting, answered) for i, upload in enumerate(uploads)),
            return_exceptions=True))
        try:
            done, _ = await asyncio.wait({jobs, waiting.refused}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if jobs not in done:
                jobs.cancel()
                jobs.add_done_callback(_retrieve)
                if waiting.refused in done:
                    raise waiting.refused.result()
                raise self.timeout_error()
            results = jobs.result()
        finally:
            answered.set()
            if waiting in self._waiting:
                self._waiting.remove(waiting)
            if not waiting.refused.done():
                waiting.refused.cancel()
            ticket.release()
        for result in results:
            if isinstance(result, ApiError) and result.code in REQUEST_CODES:
                raise result
        return results

    def _on_size(self, ticket: Ticket, index: int, upload: Upload, deadline: float) -> Callable[[int, int], None]:
        """What a decode thread calls with an upload's real size: correct its reservation
        (on the event loop) and refuse it if its own work no longer fits (413 or 503)."""
        loop = asyncio.get_running_loop()
        faces = None if upload.boxes is None else len(upload.boxes)

        def sized(width: int, height: int) -> None:
            work = image_work(width, height, faces)
            try:
                loop.call_soon_threadsafe(ticket.resize, index,
                                          self.costs.prepare_seconds(work.megapixels, work.faces is None))
            except RuntimeError:  # the loop closed (shutdown)
                pass
            self.admission.check_own([work], deadline, self.settings.timeout, what=f"{upload.name} ({width}x{height})")

        return sized

    async def _align_one(self, ticket: Ticket, index: int, upload: Upload, deadline: float,
                         waiting: _Waiting | None = None, answered: threading.Event | None = None) -> dict:
        settings = self.settings
        prepared = await self.on_decode_threads(ticket, index, prepare_image, self.aligner, upload.data, upload.name,
                                                upload.boxes, settings.max_pixels, settings.max_faces, self.costs,
                                                self._on_size(ticket, index, upload, deadline), answered,
                                                waiting=waiting)
        dropped = prepared.faces.faces.dropped
        if dropped:
            self.metrics.faces_dropped.inc(dropped)
        ticket.submitted(index)  # its faces move to the batcher's queue in the same step
        try:
            landmarks, poses = await self.batcher.submit(prepared.faces.crops, deadline)
        finally:
            self.shed()  # a pass ended (or failed): its time may change what still fits
        faces = self.aligner.faces_from_crops(prepared.faces, landmarks, poses)
        return {**image_record(upload.name, prepared.width, prepared.height, [face_record(face) for face in faces]),
                "faces_dropped": dropped}

    def calibrate(self) -> None:
        """First cost estimates, measured on this machine (blocking: run on a thread).

        Runs the model on one crop and on a full batch (each twice: the first call of a
        size builds kernels), the detector on a blank 640x480 image and one decode, so
        that admission control's first estimates are of this machine rather than
        defaults, and it knows how much a full batch saves per face.
        """
        import cv2

        size = self.aligner.preprocessing.crop_size
        measured = []
        for batch in sorted({1, self.settings.max_batch}):
            crops = np.zeros((batch, size, size, 3), np.uint8)
            self.aligner.predict_crops(crops)
            start = time.perf_counter()
            self.aligner.predict_crops(crops)
            measured.append((batch, time.perf_counter() - start))
        self.costs.calibrate_passes(measured)
        blank = np.full((480, 640, 3), 128, np.uint8)
        data = cv2.imencode(".jpg", blank)[1].tobytes()
        start = time.perf_counter()
        read_image_bytes(data, "calibration", self.settings.max_pixels)
        self.costs.decode_per_mp = (time.perf_counter() - start) / 0.3072
        if self.aligner.detector is not None:
            try:
                detector = self.aligner.get_detector()
            except SpigaError as exc:
                log.warning("face detector unavailable (%s); requests must give boxes", exc)
                self.aligner.detector = None
                return
            detector.detect(blank)
            start = time.perf_counter()
            detector.detect(blank)
            self.costs.detect_per_mp = (time.perf_counter() - start) / 0.3072
        log.info("cost estimates: passes of 1 and %d faces %.3f s and %.3f s, %.3f s per MP decode, %.3f s per "
                 "MP detection", self.settings.max_batch, self.costs.pass_seconds(1),
                 self.costs.pass_seconds(self.settings.max_batch), self.costs.decode_per_mp, self.costs.detect_per_mp)
