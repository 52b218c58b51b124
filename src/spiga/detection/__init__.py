"""Face detection: one interface, several detectors, and the box SPIGA expects.

- `Detection`: a face found in an image (box, score, six BlazeFace keypoints or None).
- `Detector`: anything with `detect(image_bgr) -> list[Detection]`.
- `make_detector(name, **options)`: `blazeface` (default; ships in the package, no
  download), `haar` (OpenCV's cascades), `dlib` (dlib's HOG detector, when `dlib-bin`
  is installed), `file` (boxes read from a file; `file:PATH` for short).
- `face_box_from_detection(det)`: the documented mapping from a detector's box to the
  face box SPIGA was trained on (see `boxmap`).

Images are (H, W, 3) BGR uint8 arrays (gray and BGRA are converted); boxes are
(x, y, w, h) floats in image pixels, origin at the top-left corner of the top-left pixel.
"""

from __future__ import annotations

import abc
import inspect
from dataclasses import dataclass, field

import cv2
import numpy as np

from .. import choices
from ..errors import InputError

__all__ = [
    "DETECTOR_NAMES", "Detection", "Detector", "as_bgr", "face_box_from_detection", "make_detector",
]


@dataclass(frozen=True)
class Detection:
    """A face found by a detector.

    Attributes:
        box: (x, y, w, h) in image pixels, as the detector drew it.
        score: the detector's confidence (1.0 where it has none).
        keypoints: (6, 2) image pixels for BlazeFace: subject's right eye, left eye, nose
            tip, mouth centre, right ear tragion, left ear tragion; None for other detectors.
        source: the detector's name; `face_box_from_detection` picks its rule by it.
    """

    box: tuple[float, float, float, float]
    score: float = 1.0
    keypoints: np.ndarray | None = field(default=None, compare=False)
    source: str = "file"


class Detector(abc.ABC):
    """Finds faces in an image. Subclasses set `name` and implement `detect`."""

    name: str = "detector"

    @abc.abstractmethod
    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Faces in a (H, W, 3) BGR uint8 image, best score first."""

    def __call__(self, image_bgr: np.ndarray) -> list[Detection]:
        return self.detect(image_bgr)


def as_bgr(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR from a BGR, gray (H, W) / (H, W, 1) or BGRA uint8 array."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"a detector takes a numpy image array, not {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"a detector takes a uint8 image, not {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"a detector takes an (H, W, 3) BGR image, not shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"empty image of shape {image.shape}")
    return image


def _detector_classes() -> dict[str, type]:
    from .blazeface import BlazeFaceDetector
    from .dlib_hog import DlibHogDetector
    from .filebox import FileBoxDetector
    from .haar import HaarDetector

    return {"blazeface": BlazeFaceDetector, "haar": HaarDetector, "dlib": DlibHogDetector,
            "file": FileBoxDetector}


DETECTOR_NAMES = choices.DETECTORS


def make_detector(name: str = "blazeface", **options) -> Detector:
    """A detector by name with its options (see each class for them).

    `file:PATH` is short for `make_detector("file", path=PATH)`.
    """
    if name.startswith("file:"):
        name, options = "file", {"path": name[len("file:"):], **options}
    classes = _detector_classes()
    if name not in classes:
        raise InputError(f"unknown detector {name!r}; choose one of {', '.join(DETECTOR_NAMES)}")
    cls = classes[name]
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        raise InputError(f"detector {name!r}: {exc}") from None
    return cls(**options)


def face_box_from_detection(detection: Detection) -> tuple[float, float, float, float]:
    """The face box (x, y, w, h) SPIGA expects for a detection; see `boxmap` for the rule."""
    from .boxmap import face_box_from_detection as mapping

    return mapping(detection)
