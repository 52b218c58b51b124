"""`ServeSettings`: what `spiga serve` takes, named as its command-line options."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import SpigaError

_MB = 1024 * 1024
#: Keywords renamed to the CLI's names (`--model-threads`, `--decode-threads`); the old
#: ones are accepted, with a DeprecationWarning, until the next release.
_RENAMED = {"workers": "model_threads", "decode_workers": "decode_threads"}


def _deprecated(old: str) -> str:
    return (f"ServeSettings.{old} is now {_RENAMED[old]} (as the --{_RENAMED[old].replace('_', '-')} option); "
            f"the old name goes in the next release")


def _accept_old_names(cls):
    """Let `cls` take and show the renamed fields under their old names too, warning."""
    generated = cls.__init__

    @functools.wraps(generated)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for old, new in _RENAMED.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"ServeSettings got both {old} and {new}")
                warnings.warn(_deprecated(old), DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
        generated(self, *args, **kwargs)

    def alias(old: str) -> property:
        new = _RENAMED[old]

        def get(self) -> Any:
            warnings.warn(_deprecated(old), DeprecationWarning, stacklevel=2)
            return getattr(self, new)

        def set_(self, value: Any) -> None:
            warnings.warn(_deprecated(old), DeprecationWarning, stacklevel=2)
            setattr(self, new, value)

        return property(get, set_)

    cls.__init__ = __init__
    for old in _RENAMED:
        setattr(cls, old, alias(old))
    return cls


@_accept_old_names
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
        model_threads: inference threads (forward passes that may run at once;
            `--model-threads`). Formerly `workers`, still accepted with a warning.
        decode_threads: threads that decode uploads, run the face detector and crop
            (`--decode-threads`). Formerly `decode_workers`, still accepted with a warning.
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
    model_threads: int = 1
    max_image_mb: float = 10.0
    max_pixels: int = 50_000_000
    max_images: int = 16
    max_faces: int = 64
    timeout: float = 30.0
    decode_threads: int = 1
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
        problems = [f"{name} must be >= 1" for name in ("max_batch", "max_queue", "max_inflight", "model_threads",
                                                         "decode_threads", "max_pixels", "max_images", "max_faces",
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
