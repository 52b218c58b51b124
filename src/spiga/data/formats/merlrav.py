"""MERL-RAV: 68-point `.pts` files beside AFLW images, with visibility in the coordinates.

PATH is the organised folder (`frontal`, `left`, `lefthalf`, `right`, `righthalf`, each
with `trainset` and `testset`). Samples are tagged with the pose folder and with
`train` / `test`.

MERL-RAV codes three kinds of point, and both non-visible kinds are kept apart:
- a point written `-1 -1` has no position (MERL-RAV calls it self-occluded: hidden by the
  head itself in profile views, not located by the annotators): `annotated` False;
- a point with negative coordinates is located but hidden (MERL-RAV: externally occluded,
  by hair, a hand, ...); its position is the absolute value: `annotated` True,
  `visible` False;
- other points are visible.
The face box is the bounding box of the annotated points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...landmarks import IBUG_68, LandmarkSet
from ..sample import BadEntries, Sample
from .common import require_set
from .ibug300w import read_pts_folder

NAME = "merlrav"
_POSES = ("frontal", "left", "lefthalf", "right", "righthalf")


def decode_points(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 2) MERL-RAV coordinates -> landmarks (NaN where unannotated), visible, annotated."""
    unannotated = np.all(points == -1.0, axis=1)
    hidden = np.any(points < 0, axis=1) & ~unannotated
    landmarks = np.where(unannotated[:, None], np.nan, np.abs(points))
    annotated = ~unannotated
    return landmarks, annotated & ~hidden, annotated


def split_tags(parts: tuple[str, ...]) -> set[str]:
    tags = {p for p in parts if p in _POSES}
    if "trainset" in parts:
        tags.add("train")
    if "testset" in parts:
        tags.add("test")
    return tags


def read(path: Path, root: Path | None, landmark_set: LandmarkSet | None,
         bad: BadEntries) -> tuple[LandmarkSet, list[Sample]]:
    """Read a MERL-RAV folder; see the module docstring."""
    landmark_set = require_set(landmark_set, IBUG_68, NAME)
    return landmark_set, read_pts_folder(path, root, landmark_set, bad, split_tags, decode_points)
