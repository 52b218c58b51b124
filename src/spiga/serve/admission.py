"""Admission control: whether the server can answer a request within its deadline.

The server measures what its work costs (`Costs`: running means of wall-clock times,
so they rise at once when something else loads the machine) and keeps count of the
work it has accepted and not finished (`Admission`):

- images still to be decoded, checked and cropped (and searched for faces when no box
  was given), in estimated seconds of the decode threads;
- faces still to go through the model: those expected from admitted images not yet
  handed to the batcher, plus those the batcher holds (queued or in a pass).

A new request's answer is estimated to come after

    max(decode work ahead / decode threads + its own decode + a pass of its own faces,
        the passes of the faces ahead and its own, in batches of up to max_batch)

(the two stages run side by side, one image behind the other; a backlog runs in full
batches, whose time per face is lower than a lone face's: `Costs.pass_seconds(b)`).
When that is later than its deadline, or its faces would take the faces waiting past
`max_queue`, the request is refused at once: `ApiError("overloaded")`, HTTP 503, with
`Retry-After` the estimated time for the accepted work to drain. A request's own work
is judged first, on an idle server as much as on a busy one (`check_own`): more than
its whole deadline (`budget`, the server's timeout) can never be done in time and is
refused with `ApiError("too_much_work")`, HTTP 413 (send less per request); more than
the time it has left (its body took long to arrive) is a 503.

An upload's size is not known when it is admitted (reading its header is work for the
decode threads, never the event loop): it is costed at `MIN_MEGAPIXELS` and, once a
decode thread has read its header, re-judged with its real size (`check_own`, which
reads only the thread-safe `Costs`) and its reservation corrected (`Ticket.resize`).

Costs can rise after a request was admitted (another process starts using the CPU):
`overdue` re-runs the estimate, with the new costs, for admitted requests whose decode
has not started, in the order they wait, and names those that clearly can no longer be
answered in time (estimate beyond the time left by `OVERDUE_MARGIN`), so that they are
refused then (503) rather than answered 504 at their deadline.

Everything here runs on the event loop, except `Costs.observe_*` and `check_own`, which
the worker threads call (hence the lock of `Costs`).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ApiError

#: Weight of a new measurement in the running means: a cost that rises is followed
#: quickly (a third of the way per measurement), one that falls over about ten
#: measurements, so that a machine that gets busy refuses work early rather than missing
#: deadlines, while one slow measurement does not double the estimate.
RISE_WEIGHT = 0.3
FALL_WEIGHT = 0.1
#: An admitted request is refused later only when its new estimate overruns the time it
#: has left by this fraction: estimates are noisy, and refusing work already accepted
#: on a passing spike costs more than answering 504 at the deadline now and then.
OVERDUE_MARGIN = 0.1
#: Smallest image size costed, in megapixels: a tiny image still costs a decode call.
MIN_MEGAPIXELS = 0.05


def _log_interpolate(points: list[tuple[int, float]], size: int) -> float:
    """Piecewise-linear interpolation of (batch size, value) points in log2 batch size."""
    if size <= points[0][0]:
        return points[0][1]
    for (b0, v0), (b1, v1) in zip(points, points[1:]):
        if size <= b1:
            f = (math.log2(size) - math.log2(b0)) / (math.log2(b1) - math.log2(b0))
            return v0 + f * (v1 - v0)
    return points[-1][1]


@dataclass
class Costs:
    """Running estimates of what the work costs on this machine (seconds, wall clock;
    exponentially weighted means that follow a rise faster than a fall).

    A forward pass of b faces is estimated as `b * shape(b) * level`: `shape` is the time
    per face at each batch size measured at start-up (`calibrate_passes`; one face and a
    full batch, interpolated between), `level` how much slower (or faster) passes run now
    than then, from every pass measured since.

    Attributes:
        seconds_per_face: a forward pass's time divided by its faces (for display).
        level: measured pass times over the start-up shape's (1 at start-up).
        decode_per_mp: decoding, checking and cropping an upload, per megapixel.
        detect_per_mp: the face detector, per megapixel.
        faces_per_detection: faces the detector finds in an image (reserved ahead).
    """

    seconds_per_face: float = 0.05
    level: float = 1.0
    decode_per_mp: float = 0.02
    detect_per_mp: float = 0.2
    faces_per_detection: float = 1.0
    shape: list[tuple[int, float]] = field(default_factory=lambda: [(1, 0.05)])
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _mix(self, name: str, sample: float) -> None:
        if math.isfinite(sample) and sample >= 0:
            with self._lock:
                value = getattr(self, name)
                weight = RISE_WEIGHT if sample > value else FALL_WEIGHT
                setattr(self, name, value + weight * (sample - value))

    def calibrate_passes(self, measured: list[tuple[int, float]]) -> None:
        """Set the shape from (batch size, pass seconds) measured now; level back to 1."""
        points = sorted((int(b), t / b) for b, t in measured if b > 0 and t > 0 and math.isfinite(t))
        if points:
            self.shape, self.level = points, 1.0
            self.seconds_per_face = points[0][1]

    def pass_seconds(self, faces: int) -> float:
        """Estimated time of one forward pass of `faces` faces."""
        if faces <= 0:
            return 0.0
        return faces * _log_interpolate(self.shape, faces) * self.level

    def drain(self, faces: int, max_batch: int, model_threads: int = 1) -> float:
        """Estimated time to run `faces` queued faces in passes of up to `max_batch`."""
        full, rest = divmod(max(0, int(faces)), max_batch)
        return (full * self.pass_seconds(max_batch) + self.pass_seconds(rest)) / model_threads

    def observe_pass(self, faces: int, seconds: float) -> None:
        """A forward pass of `faces` faces took `seconds`."""
        if faces > 0:
            self._mix("seconds_per_face", seconds / faces)
            self._mix("level", seconds / (faces * _log_interpolate(self.shape, faces)))

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
        decode_threads: threads that decode and detect, side by side.
        model_threads: forward passes that may run at once.
        max_queue: most faces waiting for the model (expected or queued).
        max_faces: most faces per image (caps the faces reserved for a detection).
        max_batch: most faces per forward pass.
    """

    def __init__(self, costs: Costs, model: ModelQueue, decode_threads: int, model_threads: int, max_queue: int,
                 max_faces: int, max_batch: int = 16) -> None:
        self.costs = costs
        self.model = model
        self.decode_threads = int(decode_threads)
        self.model_threads = int(model_threads)
        self.max_batch = int(max_batch)
        self.max_queue = int(max_queue)
        self.max_faces = int(max_faces)
        self.decode_backlog = 0.0   # estimated seconds of admitted decode work not finished
        self.expected_faces = 0     # faces of admitted images not yet handed to the batcher
        self.refused = 0

    # ------------------------------------------------------------------ estimates

    def faces_waiting(self) -> int:
        """Faces expected from admitted images plus those queued in the batcher."""
        return self.expected_faces + self.model.queued_faces

    def _faces_ahead(self) -> int:
        return self.faces_waiting() + self.model.running_faces

    def _finish(self, decode_ahead: float, own_decode: list[float], faces_ahead: int, own_faces: int) -> float:
        """Seconds until a request is done: its decodes after `decode_ahead` seconds of
        decoding, its faces after `faces_ahead` faces (see the module docstring)."""
        costs = self.costs
        decode_done = decode_ahead / self.decode_threads + max(max(own_decode, default=0.0),
                                                               sum(own_decode) / self.decode_threads)
        after_decode = decode_done + costs.drain(own_faces, self.max_batch, self.model_threads)
        return max(after_decode, costs.drain(faces_ahead + own_faces, self.max_batch, self.model_threads))

    def _model_backlog(self) -> float:
        return self.costs.drain(self._faces_ahead(), self.max_batch, self.model_threads)

    def drain_seconds(self) -> float:
        """Estimated time until the accepted work is done (both stages side by side)."""
        return max(self.decode_backlog / self.decode_threads, self._model_backlog())

    def retry_after(self) -> int:
        """`Retry-After` seconds: the accepted work's drain time, at least 1."""
        return max(1, math.ceil(self.drain_seconds()))

    def faces_of(self, work: ImageWork) -> int:
        """Faces reserved for an image: its boxes, or what detections find on average."""
        if work.faces is not None:
            return work.faces
        return min(self.max_faces, max(1, round(self.costs.faces_per_detection)))

    def own_seconds(self, works: list[ImageWork]) -> float:
        """Seconds a request with these images takes on an idle server (reads only `costs`)."""
        own_decode = [self.costs.prepare_seconds(w.megapixels, w.faces is None) for w in works]
        return self._finish(0.0, own_decode, 0, sum(self.faces_of(w) for w in works))

    def check_own(self, works: list[ImageWork], deadline: float, budget: float, now: float | None = None,
                  what: str = "the request") -> None:
        """Refuse work that cannot be done by `deadline` even with nothing ahead of it.

        Thread-safe (reads only `costs` and settings): the decode threads call it once an
        upload's header gave its real size.

        Raises:
            ApiError: `too_much_work` (413) when it takes longer than `budget` (the whole
                deadline of a request) on an idle server; `overloaded` (503) when it takes
                longer than the time left before `deadline`.
        """
        now = time.monotonic() if now is None else now
        own = self.own_seconds(works)
        if own > budget:
            raise ApiError("too_much_work", f"{what}: about {own:.1f} s of work, more than the {budget:g} s "
                                            "deadline even on an idle server; send fewer faces or smaller images")
        if now + own > deadline:
            raise ApiError("overloaded", f"{what}: about {own:.1f} s of work with {max(0.0, deadline - now):.1f} s "
                                         "left before its deadline; retry later",
                           {"Retry-After": str(self.retry_after())})

    def estimate(self, works: list[ImageWork]) -> float:
        """Seconds until a new request with these images would be answered."""
        own_decode = [self.costs.prepare_seconds(w.megapixels, w.faces is None) for w in works]
        faces = sum(self.faces_of(w) for w in works)
        return self._finish(self.decode_backlog, own_decode, self._faces_ahead(), faces)

    def busy(self) -> bool:
        """Whether any accepted work is unfinished."""
        return self.decode_backlog > 1e-9 or self.faces_waiting() > 0 or self.model.running_faces > 0

    def overdue(self, waiting: list["Waiting"], now: float | None = None) -> list["Waiting"]:
        """Those of `waiting` (admitted, decode not started, in queue order) that the
        current costs say cannot be answered by their deadline: estimated to take more
        than the time they have left by `OVERDUE_MARGIN`. One with nothing ahead of it is
        never overdue (as in `admit`)."""
        now = time.monotonic() if now is None else now
        decode_ahead = max(0.0, self.decode_backlog - sum(w.decode_seconds for w in waiting))
        faces_ahead = max(0, self._faces_ahead() - sum(w.faces for w in waiting))
        late = []
        for entry in waiting:
            finish = self._finish(decode_ahead, [entry.decode_seconds], faces_ahead, entry.faces)
            if (decode_ahead > 1e-9 or faces_ahead) and finish > (1 + OVERDUE_MARGIN) * (entry.deadline - now):
                late.append(entry)
                continue
            decode_ahead += entry.decode_seconds
            faces_ahead += entry.faces
        return late

    # ------------------------------------------------------------------ admitting

    def admit(self, works: list[ImageWork], deadline: float, now: float | None = None,
              budget: float | None = None) -> "Ticket":
        """Reserve the work of a request, or refuse it at once.

        Args:
            works: its images.
            deadline: `time.monotonic()` by which it must be answered.
            budget: the whole time a request of its kind is given (the server's timeout);
                the time left before `deadline` when None.
        Raises:
            ApiError: `too_much_work` (413) when its own work is longer than `budget`;
                `overloaded` (503 + Retry-After) when its faces do not fit in `max_queue`
                or it would not be answered by `deadline`.
        """
        now = time.monotonic() if now is None else now
        faces = [self.faces_of(w) for w in works]
        if sum(faces) > self.max_queue:
            raise ApiError("bad_request", f"{sum(faces)} faces in one request, the limit is {self.max_queue}")
        try:
            self.check_own(works, deadline, deadline - now if budget is None else budget, now)
        except ApiError:
            self.refused += 1
            raise
        waiting = self.faces_waiting()
        if waiting + sum(faces) > self.max_queue:
            self.refused += 1
            raise ApiError("overloaded", f"the queue is full ({waiting} faces waiting or expected, limit "
                                         f"{self.max_queue}); retry later", {"Retry-After": str(self.retry_after())})
        estimate = self.estimate(works)
        if now + estimate > deadline:
            self.refused += 1
            raise ApiError("overloaded", f"cannot answer within the deadline: about {estimate:.1f} s of work "
                                         f"with {deadline - now:.1f} s left; retry later",
                           {"Retry-After": str(self.retry_after())})
        return Ticket(self, works, faces)


class Waiting(Protocol):
    """An admitted request whose decode has not started (see `Admission.overdue`)."""

    @property
    def deadline(self) -> float: ...

    @property
    def decode_seconds(self) -> float: ...

    @property
    def faces(self) -> int: ...


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

    def resize(self, index: int, decode_seconds: float) -> None:
        """Image `index`'s decode is now estimated at `decode_seconds` (its header was
        read); nothing changes once its decode has left the pool."""
        if self.decode[index] > 0 or index in self._in_pool:
            self.admission.decode_backlog = max(0.0, self.admission.decode_backlog + decode_seconds
                                                - self.decode[index])
            self.decode[index] = decode_seconds

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
