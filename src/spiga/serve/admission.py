"""Admission control: whether the server can answer a request within its deadline.

The server measures what its work costs (`Costs`: running means of wall-clock times,
so they rise at once when something else loads the machine) and keeps count of the
work it has accepted and not finished (`Admission`):

- images still to be decoded, checked and cropped (and searched for faces when no box
  was given), in estimated seconds of the decode threads;
- faces still to go through the model: those expected from admitted images not yet
  handed to the batcher, plus those the batcher holds (queued or in a pass).

A new request's answer is estimated to come after

    max(decode work ahead / decode threads + its own decode,  model work ahead) + its own pass

(the two stages run side by side, one image behind the other). When that is later than
its deadline, or its faces would take the faces waiting past `max_queue`, the request is
refused at once: `ApiError("overloaded")`, HTTP 503, with `Retry-After` the estimated
time for the accepted work to drain. A request that arrives while nothing is ahead of it
is always admitted (the estimate could be wrong; its deadline still holds).

Everything here runs on the event loop, except `Costs.observe_*`, which the worker
threads call (hence its lock).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ApiError

#: Weight of a new measurement in the running means: a cost that rises is followed at
#: once (half the way per measurement), one that falls over about ten measurements, so
#: that a sudden load on the machine refuses work early rather than missing deadlines.
RISE_WEIGHT = 0.5
FALL_WEIGHT = 0.2
#: Smallest image size costed, in megapixels: a tiny image still costs a decode call.
MIN_MEGAPIXELS = 0.05


@dataclass
class Costs:
    """Running estimates of what the work costs on this machine (seconds, wall clock;
    exponentially weighted means that follow a rise faster than a fall).

    Attributes:
        seconds_per_face: a forward pass's time divided by its faces.
        pass_seconds: a forward pass's time (a face waits for the whole pass).
        decode_per_mp: decoding, checking and cropping an upload, per megapixel.
        detect_per_mp: the face detector, per megapixel.
        faces_per_detection: faces the detector finds in an image (reserved ahead).
    """

    seconds_per_face: float = 0.05
    pass_seconds: float = 0.05
    decode_per_mp: float = 0.02
    detect_per_mp: float = 0.2
    faces_per_detection: float = 1.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _mix(self, name: str, sample: float) -> None:
        if math.isfinite(sample) and sample >= 0:
            with self._lock:
                value = getattr(self, name)
                weight = RISE_WEIGHT if sample > value else FALL_WEIGHT
                setattr(self, name, value + weight * (sample - value))

    def observe_pass(self, faces: int, seconds: float) -> None:
        """A forward pass of `faces` faces took `seconds`."""
        if faces > 0:
            self._mix("seconds_per_face", seconds / faces)
            self._mix("pass_seconds", seconds)

    def observe_decode(self, megapixels: float, seconds: float) -> None:
        self._mix("decode_per_mp", seconds / max(megapixels, MIN_MEGAPIXELS))

    def observe_detect(self, megapixels: float, seconds: float, faces: int) -> None:
        self._mix("detect_per_mp", seconds / max(megapixels, MIN_MEGAPIXELS))
        self._mix("faces_per_detection", float(faces))

    def prepare_seconds(self, megapixels: float, detect: bool) -> float:
        """Estimated decode (+ detection) time of one image."""
        megapixels = max(megapixels, MIN_MEGAPIXELS)
        return megapixels * (self.decode_per_mp + (self.detect_per_mp if detect else 0.0))


@dataclass(frozen=True)
class ImageWork:
    """One image of a request: its size and its faces (None: the detector finds them)."""

    megapixels: float
    faces: int | None = None


class ModelQueue(Protocol):
    """What admission reads from the batcher."""

    @property
    def queued_faces(self) -> int: ...

    @property
    def running_faces(self) -> int: ...


class Admission:
    """The accepted work and the admission rule (see the module docstring).

    Args:
        costs: the running cost estimates (shared with the batcher and the decode threads).
        model: the batcher (its queued and running faces).
        decode_workers: threads that decode and detect, side by side.
        workers: forward passes that may run at once.
        max_queue: most faces waiting for the model (expected or queued).
        max_faces: most faces per image (caps the faces reserved for a detection).
    """

    def __init__(self, costs: Costs, model: ModelQueue, decode_workers: int, workers: int, max_queue: int,
                 max_faces: int) -> None:
        self.costs = costs
        self.model = model
        self.decode_workers = int(decode_workers)
        self.workers = int(workers)
        self.max_queue = int(max_queue)
        self.max_faces = int(max_faces)
        self.decode_backlog = 0.0   # estimated seconds of admitted decode work not finished
        self.expected_faces = 0     # faces of admitted images not yet handed to the batcher
        self.refused = 0

    # ------------------------------------------------------------------ estimates

    def faces_waiting(self) -> int:
        """Faces expected from admitted images plus those queued in the batcher."""
        return self.expected_faces + self.model.queued_faces

    def _model_backlog(self) -> float:
        faces = self.faces_waiting() + self.model.running_faces
        return faces * self.costs.seconds_per_face / self.workers

    def drain_seconds(self) -> float:
        """Estimated time until the accepted work is done (both stages side by side)."""
        return max(self.decode_backlog / self.decode_workers, self._model_backlog())

    def retry_after(self) -> int:
        """`Retry-After` seconds: the accepted work's drain time, at least 1."""
        return max(1, math.ceil(self.drain_seconds()))

    def faces_of(self, work: ImageWork) -> int:
        """Faces reserved for an image: its boxes, or what detections find on average."""
        if work.faces is not None:
            return work.faces
        return min(self.max_faces, max(1, round(self.costs.faces_per_detection)))

    def estimate(self, works: list[ImageWork]) -> float:
        """Seconds until a new request with these images would be answered."""
        own_decode = [self.costs.prepare_seconds(w.megapixels, w.faces is None) for w in works]
        decode_done = self.decode_backlog / self.decode_workers + max(max(own_decode, default=0.0),
                                                                      sum(own_decode) / self.decode_workers)
        faces = sum(self.faces_of(w) for w in works)
        own_pass = max(faces * self.costs.seconds_per_face, self.costs.pass_seconds)
        return max(decode_done, self._model_backlog()) + own_pass

    def busy(self) -> bool:
        """Whether any accepted work is unfinished."""
        return self.decode_backlog > 1e-9 or self.faces_waiting() > 0 or self.model.running_faces > 0

    # ------------------------------------------------------------------ admitting

    def admit(self, works: list[ImageWork], deadline: float, now: float | None = None) -> "Ticket":
        """Reserve the work of a request, or refuse it at once.

        Args:
            works: its images.
            deadline: `time.monotonic()` by which it must be answered.
        Raises:
            ApiError: `overloaded` (503 + Retry-After) when its faces do not fit in
                `max_queue` or it would not be answered by `deadline`.
        """
        now = time.monotonic() if now is None else now
        faces = [self.faces_of(w) for w in works]
        if sum(faces) > self.max_queue:
            raise ApiError("bad_request", f"{sum(faces)} faces in one request, the limit is {self.max_queue}")
        waiting = self.faces_waiting()
        if waiting + sum(faces) > self.max_queue:
            self.refused += 1
            raise ApiError("overloaded", f"the queue is full ({waiting} faces waiting or expected, limit "
                                         f"{self.max_queue}); retry later", {"Retry-After": str(self.retry_after())})
        estimate = self.estimate(works)
        if self.busy() and now + estimate > deadline:
            self.refused += 1
            raise ApiError("overloaded", f"cannot answer within the deadline: about {estimate:.1f} s of work "
                                         f"with {deadline - now:.1f} s left; retry later",
                           {"Retry-After": str(self.retry_after())})
        return Ticket(self, works, faces)


class Ticket:
    """The reserved work of one admitted request; each part is given back once.

    An image's decode reservation is given back when its decode leaves the thread pool
    (`decoded`: done, failed, or cancelled before it started), not when the request
    ends: a decode still running after a timeout still occupies its thread.
    """

    def __init__(self, admission: Admission, works: list[ImageWork], faces: list[int]) -> None:
        self.admission = admission
        self.decode = [admission.costs.prepare_seconds(w.megapixels, w.faces is None) for w in works]
        self.faces = list(faces)
        self._in_pool: set[int] = set()
        admission.decode_backlog += sum(self.decode)
        admission.expected_faces += sum(self.faces)

    def decode_queued(self, index: int) -> None:
        """Image `index` went to the decode threads: `decoded` will be called for it."""
        self._in_pool.add(index)

    def decoded(self, index: int) -> None:
        """Image `index` left the decode threads."""
        self._in_pool.discard(index)
        self.admission.decode_backlog = max(0.0, self.admission.decode_backlog - self.decode[index])
        self.decode[index] = 0.0

    def submitted(self, index: int) -> None:
        """Image `index`'s faces went to the batcher (or it has none to send)."""
        self.admission.expected_faces -= self.faces[index]
        self.faces[index] = 0

    def release(self) -> None:
        """The request is over: give back what is reserved, but for decodes still running."""
        for index in range(len(self.faces)):
            self.submitted(index)
            if index not in self._in_pool:
                self.decoded(index)
