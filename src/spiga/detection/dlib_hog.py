"""dlib's HOG + linear SVM face detector behind the `Detector` interface.

Needs the optional `dlib-bin` package (prebuilt dlib wheels; `pip install dlib-bin`); the
detector model is built into dlib, nothing is downloaded. Frontal and near-frontal faces
of about 80 px and up (smaller with `upsample`); no keypoints.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InputError, SpigaError
from . import Detection, Detector, as_bgr


def dlib_available() -> bool:
    """True when the `dlib` module can be imported."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


class DlibHogDetector(Detector):
    """Faces with `dlib.get_frontal_face_detector()`.

    Args:
        upsample: times the image is doubled before detection (finds smaller faces, slower).
        threshold: added to the SVM's decision threshold (higher: fewer, surer faces).

    The score is the SVM margin (unbounded; larger is surer).
    """

    name = "dlib"

    def __init__(self, upsample: int = 1, threshold: float = 0.0) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise SpigaError("the dlib detector needs the dlib-bin package: pip install dlib-bin") from exc
        if upsample < 0:
            raise InputError(f"upsample must be 0 or more, not {upsample!r}")
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = int(upsample)
        self.threshold = float(threshold)

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        rgb = np.ascontiguousarray(cv2.cvtColor(as_bgr(image_bgr), cv2.COLOR_BGR2RGB))
        rects, scores, _ = self._detector.run(rgb, self.upsample, self.threshold)
        # dlib rectangles are inclusive pixel ranges: right - left + 1 pixels wide
        found = [Detection((float(r.left()), float(r.top()), float(r.right() - r.left() + 1),
                            float(r.bottom() - r.top() + 1)), float(s), None, self.name)
                 for r, s in zip(rects, scores)]
        return sorted(found, key=lambda d: -d.score)
