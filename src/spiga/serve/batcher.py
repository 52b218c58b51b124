"""Dynamic batching: face crops of concurrent requests run as one forward pass.

Requests put their crops (all the faces of one image) in a queue bounded in faces.
One collector task takes the oldest request and waits until the queue holds
`max_batch` faces or the oldest request has waited `max_wait_ms`, then sends the
requests that fit in `max_batch` faces (never splitting one request that fits) to ONE
`predict` call on an inference thread, and hands each request its rows of the result.
A request larger than `max_batch` runs alone, in passes of `max_batch` faces: between
them (the batch boundary) a request that is no longer waited for (answered 504, or
cancelled) is dropped, so the model never runs on for an answer nobody reads. While all
`model_threads` inference threads are busy the collector waits, so under load batches grow
instead of queueing more passes.

Overload is answered, not absorbed: a request that would take the queue past
`max_queue` faces is refused at once, even when the queue is empty
(`ApiError("overloaded")`, HTTP 503 with a `Retry-After` estimate), and a request not
answered by its deadline (at most `timeout` seconds) is dropped from the queue
(`ApiError("timeout")`). Each pass's time goes into the shared `Costs`, from which
admission control (`spiga.serve.admission`) estimates the queue's drain time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .admission import Costs
from .errors import ApiError
from .metrics import Metrics

log = logging.getLogger(__name__)

#: predict(crops (B, S, S, 3) uint8) -> (landmarks (B, L, 2), poses (B, 6)).
Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(eq=False)
class _Job:
    """One request's crops; `taken` of them are in passes already (a request larger than
    `max_batch` is sent a pass at a time), `parts` their results by first row."""

    crops: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    taken: int = 0
    parts: dict = field(default_factory=dict)

    @property
    def faces(self) -> int:
        return len(self.crops)

    @property
    def remaining(self) -> int:
        """Faces not yet sent to a pass."""
        return len(self.crops) - self.taken

    def take(self, count: int) -> "_Part":
        part = _Part(self, self.taken, min(count, self.remaining))
        self.taken += part.faces
        return part

    def finish(self, part: "_Part", landmarks: np.ndarray, poses: np.ndarray) -> None:
        """Record a part's rows; the future gets the whole result once every row is in."""
        self.parts[part.start] = (landmarks, poses)
        if self.future.done() or sum(len(rows[0]) for rows in self.parts.values()) < self.faces:
            return
        ordered = [self.parts[start] for start in sorted(self.parts)]
        if len(ordered) == 1:
            self.future.set_result(ordered[0])
        else:
            self.future.set_result((np.concatenate([rows[0] for rows in ordered]),
                                    np.concatenate([rows[1] for rows in ordered])))


@dataclass(eq=False)
class _Part:
    """Rows start .. start + faces of a job, in one pass."""

    job: _Job
    start: int
    faces: int

    @property
    def crops(self) -> np.ndarray:
        return self.job.crops[self.start:self.start + self.faces]


class Batcher:
    """Gathers crops of concurrent requests into batches for `predict`.

    Args:
        predict: the model call (runs on an inference thread).
        max_batch: most faces per forward pass (a single larger request runs alone).
        max_wait_ms: longest time the oldest queued request waits for company.
        max_queue: most faces waiting (not yet running); more is refused (503).
        model_threads: inference threads, i.e. forward passes that may run at once
            (`spiga serve --model-threads`).
        timeout: seconds a request may wait for its result (504 after).
        metrics: where batch sizes, pass times and the queue depth are recorded.
        costs: running cost estimates that each pass updates (its own when None).
        workers: the old name of `model_threads` (a DeprecationWarning; goes in the next release).
    """

    def __init__(self, predict: Predict, max_batch: int = 16, max_wait_ms: float = 10.0, max_queue: int = 256,
                 model_threads: int = 1, timeout: float = 30.0, metrics: Metrics | None = None,
                 costs: Costs | None = None, *, workers: int | None = None) -> None:
        if workers is not None:
            warnings.warn("Batcher(workers=...) is now model_threads=...; the old name goes in the next release",
                          DeprecationWarning, stacklevel=2)
            model_threads = workers
        if max_batch < 1 or max_queue < 1 or model_threads < 1 or max_wait_ms < 0 or timeout <= 0:
            raise ValueError("max_batch, max_queue and model_threads must be >= 1, max_wait_ms >= 0, timeout > 0")
        self.predict = predict
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.model_threads = int(model_threads)
        self.timeout = float(timeout)
        self.metrics = metrics
        self._pending: deque[_Job] = deque()
        self._pending_faces = 0
        self._arrived: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._running_faces = 0
        self.costs = costs if costs is not None else Costs()

    # ------------------------------------------------------------------ life cycle

    @property
    def started(self) -> bool:
        return self._collector is not None and not self._collector.done()

    def start(self) -> None:
        """Start the collector on the running event loop (idempotent)."""
        if self.started:
            return
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(self.model_threads)
        self._executor = ThreadPoolExecutor(self.model_threads, thread_name_prefix="spiga-infer")
        self._collector = asyncio.get_running_loop().create_task(self._collect(), name="spiga-batcher")

    async def stop(self) -> None:
        """Stop collecting, fail what is still queued, wait for running passes."""
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
            self._collector = None
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(ApiError("overloaded", "the server is shutting down",
                                                  {"Retry-After": "5"}))
        self._pending_faces = 0
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ------------------------------------------------------------------ requests

    @property
    def queued_faces(self) -> int:
        """Faces waiting for a pass."""
        return self._pending_faces

    @property
    def running_faces(self) -> int:
        """Faces in the passes running now."""
        return self._running_faces

    def retry_after(self) -> int:
        """Seconds after which a refused request may find room: the queue's drain time."""
        drain = (self._pending_faces + self._running_faces) * self.costs.seconds_per_face / self.model_threads
        return max(1, math.ceil(drain))

    async def submit(self, crops: np.ndarray, deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (K, L, 2) and poses (K, 6) of K crops (K, S, S, 3), via a shared batch.

        Args:
            crops: (K, S, S, 3) uint8, K <= max_queue.
            deadline: `time.monotonic()` by which the result is needed (at most
                `timeout` seconds from now either way).
        Raises:
            ApiError: `overloaded` when the queue has no room for K faces, `timeout` at
                the deadline.
        """
        if len(crops) == 0:
            raise ValueError("no crops to submit")
        if len(crops) > self.max_queue:
            raise ValueError(f"{len(crops)} crops can never fit in a queue of {self.max_queue} faces")
        self.start()
        if self._pending_faces + len(crops) > self.max_queue:
            raise ApiError("overloaded", f"the queue is full ({self._pending_faces} faces waiting, "
                                         f"limit {self.max_queue}); retry later",
                           {"Retry-After": str(self.retry_after())})
        wait = self.timeout if deadline is None else min(self.timeout, deadline - time.monotonic())
        if wait <= 0:
            raise ApiError("timeout", "the deadline passed before the faces reached the model",
                           {"Retry-After": str(self.retry_after())})
        job = _Job(crops, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._set_queue(self._pending_faces + job.faces)
        self._arrived.set()
        try:
            return await asyncio.wait_for(job.future, wait)
        except asyncio.TimeoutError:
            raise ApiError("timeout", f"no result within {wait:.3g} s; the server is busy",
                           {"Retry-After": str(self.retry_after())}) from None
        finally:
            self._forget(job)

    def _forget(self, job: _Job) -> None:
        """Take a finished, timed-out or cancelled job off the queue if it is still there
        (with the faces it had not sent to a pass yet)."""
        try:
            self._pending.remove(job)
        except ValueError:
            return
        self._set_queue(self._pending_faces - job.remaining)

    def _set_queue(self, faces: int) -> None:
        self._pending_faces = faces
        if self.metrics is not None:
            self.metrics.queue_faces.set(faces)

    # ------------------------------------------------------------------ the collector

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            await self._slots.acquire()
            try:
                await self._fill(loop)
                batch = self._take()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until `max_batch` faces are queued or the oldest job has waited `max_wait`."""
        while self._pending and self._pending_faces < self.max_batch:
            remaining = self._pending[0].enqueued + self.max_wait - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Part]:
        """The oldest live jobs that fit in `max_batch` faces (at least one), or the next
        `max_batch` faces of a larger job, alone."""
        batch: list[_Part] = []
        faces = 0
        while self._pending:
            job = self._pending[0]
            if job.future.done():  # timed out or cancelled while queued (or between its passes)
                self._pending.popleft()
                self._set_queue(self._pending_faces - job.remaining)
                continue
            if job.remaining > self.max_batch:
                if batch:
                    break
                part = job.take(self.max_batch)  # the job stays at the head for its next pass
                self._set_queue(self._pending_faces - part.faces)
                return [part]
            if batch and faces + job.remaining > self.max_batch:
                break
            self._pending.popleft()
            self._set_queue(self._pending_faces - job.remaining)
            batch.append(job.take(job.remaining))
            faces += batch[-1].faces
        return batch

    async def _run(self, batch: list[_Part]) -> None:
        """One forward pass for `batch`; each job gets its rows (or the exception)."""
        loop = asyncio.get_running_loop()
        faces = sum(part.faces for part in batch)
        self._running_faces += faces
        try:
            crops = batch[0].crops if len(batch) == 1 else np.concatenate([part.crops for part in batch])
            start = time.perf_counter()
            try:
                landmarks, poses = await loop.run_in_executor(self._executor, self.predict, crops)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for part in batch:
                    if not part.job.future.done():
                        part.job.future.set_exception(exc)
                return
            elapsed = time.perf_counter() - start
            self.costs.observe_pass(len(crops), elapsed)
            if self.metrics is not None:
                self.metrics.batch_faces.observe(len(crops))
                self.metrics.batch_requests.observe(len(batch))
                self.metrics.inference.observe(elapsed)
            offset = 0
            for part in batch:
                rows = slice(offset, offset + part.faces)
                offset += part.faces
                part.job.finish(part, landmarks[rows], poses[rows])
        finally:
            self._running_faces -= faces
            self._slots.release()
