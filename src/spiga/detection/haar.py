"""OpenCV's Haar cascade face detector behind the `Detector` interface.

The cascades ship with the `opencv-python(-headless)` 4.x wheels (`cv2.data.haarcascades`);
OpenCV 5 ships none, hence the `<5` pin. Frontal faces only; no keypoints.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import CheckpointError, InputError
from . import Detection, Detector, as_bgr


def cascade_path(cascade: str) -> Path:
    """A cascade file: a path, or a name in OpenCV's folder (`frontalface_default` ->
    `haarcascade_frontalface_default.xml`)."""
    candidate = Path(cascade)
    if candidate.suffix == ".xml" and candidate.is_file():
        return candidate
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder is None:
        raise CheckpointError("this OpenCV build ships no Haar cascades (cv2.data.haarcascades is missing); "
                              "install opencv-python-headless<5 or pass a cascade .xml path")
    name = cascade if cascade.endswith(".xml") else f"haarcascade_{cascade}.xml"
    path = Path(folder) / name
    if not path.is_file():
        raise CheckpointError(f"{path}: no such Haar cascade")
    return path


class HaarDetector(Detector):
    """Faces with OpenCV's `CascadeClassifier.detectMultiScale3`.

    Args:
        cascade: cascade name or .xml path (default `frontalface_default`).
        scale_factor: pyramid step between scales (> 1).
        min_neighbors: overlapping hits a face needs (higher: fewer false faces).
        min_size: smallest face side in pixels.
        equalize: equalise the gray image's histogram first.

    The score is the cascade's last-stage weight (`levelWeights`): a confidence without a
    fixed range, larger is surer.
    """

    name = "haar"

    def __init__(self, cascade: str = "frontalface_default", scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: int = 24, equalize: bool = True) -> None:
        if not scale_factor > 1:
            raise InputError(f"scale_factor must be above 1, not {scale_factor!r}")
        path = cascade_path(cascade)
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise CheckpointError(f"{path}: OpenCV could not load this cascade")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.equalize = equalize

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        gray = cv2.cvtColor(as_bgr(image_bgr), cv2.COLOR_BGR2GRAY)
        if self.equalize:
            gray = cv2.equalizeHist(gray)
        rects, _, weights = self.classifier.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size), outputRejectLevels=True)
        found = [Detection(tuple(float(v) for v in rect), float(weight), None, self.name)
                 for rect, weight in zip(np.reshape(rects, (-1, 4)), np.reshape(weights, -1))]
        return sorted(found, key=lambda d: -d.score)
