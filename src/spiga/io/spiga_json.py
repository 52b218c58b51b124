"""The original SPIGA annotation JSON: one parser for training and evaluation.

A file is a list of entries, one per face:

    [{"imgpath": "images/01345.jpg",                 # relative to the dataset folder
      "bbox": [x, y, w, h],                          # face box, pixels (or null)
      "headpose": [yaw, pitch, roll, tx, ty, tz],    # optional (null or absent); 3 to 6 numbers
      "ids": [101, 102, ...],                        # landmark ids, as in LandmarkSet.ids
      "landmarks": [[x, y], ...],                    # one per id, pixels
      "visible": [1.0, 0.0, ...]}, ...]              # optional, one per id

Points are placed by id, so an entry may list fewer points than its landmark set
(MERL-RAV leaves out self-occluded ones): the others are not annotated, and so is a point
given as `[null, null]`. Without `ids`, an entry lists every point of the set in its order.

`parse_entry` checks the structure every reader needs (types, ids, one value per point)
and returns an `Entry` on the landmark set's rows; what each reader further requires
(the evaluation: a box and finite values; training: an image inside the dataset folder)
is the reader's own rule. `entry_record` is the writer's side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # files know nothing of landmark layouts beyond what a LandmarkSet holds
    from ..landmarks import LandmarkSet


@dataclass
class Entry:
    """One face of a SPIGA JSON file, on its landmark set's L rows.

    Attributes:
        imgpath: the image path as written.
        bbox: (4,) x, y, w, h, or None.
        headpose: (6,) yaw, pitch, roll, tx, ty, tz (NaN where the entry gives fewer than 6
            numbers), or None.
        landmarks: (L, 2) pixels, NaN where the entry lists no point.
        annotated: (L,) bool, the points the entry lists.
        visible: (L,) bool visibility flags (True where the entry has none).
    """

    imgpath: str
    bbox: np.ndarray | None
    headpose: np.ndarray | None
    landmarks: np.ndarray
    annotated: np.ndarray
    visible: np.ndarray


def _vector(value: Any, what: str, lengths: range) -> np.ndarray:
    count = f"{lengths.start}" if len(lengths) == 1 else f"{lengths.start} to {lengths.stop - 1}"
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{what} must be a list of {count} numbers") from None
    if array.ndim != 1 or array.size not in lengths:
        raise ValueError(f"{what} must be a list of {count} numbers")
    return array


def integral(value: Any) -> bool:
    """An int, or a float with an integer value (JSON writers differ); never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or (math.isfinite(value) and value == int(value))


def parse_entry(entry: Any, landmark_set: LandmarkSet) -> Entry:
    """Check one entry and place its points on `landmark_set`; ValueError says what is wrong."""
    if not isinstance(entry, dict):
        raise ValueError(f"must be an object {{imgpath, bbox, headpose, ids, landmarks, visible}}, found a JSON "
                         f"{type(entry).__name__}")
    missing = [key for key in ("imgpath", "landmarks") if key not in entry]
    if missing:
        raise ValueError(f"missing {', '.join(repr(k) for k in missing)}")
    if not isinstance(entry["imgpath"], str):
        raise ValueError("'imgpath' must be a string")
    if isinstance(entry["landmarks"], list) and not entry["landmarks"]:
        raise ValueError("'landmarks' is empty: no landmarks given")
    pairs = "'landmarks' must be a list of [x, y] pairs of numbers"
    try:
        listed = np.asarray(entry["landmarks"], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(pairs) from None
    if listed.ndim != 2 or listed.shape[1] != 2:
        raise ValueError(f"{pairs}, found shape {listed.shape}")
    rows = _rows(entry.get("ids"), len(listed), landmark_set)
    count = landmark_set.num_landmarks
    landmarks = np.full((count, 2), np.nan)
    annotated = np.zeros(count, bool)
    visible = np.ones(count, bool)
    landmarks[rows] = listed
    # a point given as [null, null] is one the annotator left out (the thermal fork's files)
    annotated[rows] = ~np.isnan(listed).all(axis=1)
    if entry.get("visible") is not None:
        flags = _vector(entry["visible"], f"'visible' (one flag per landmark, {len(listed)})",
                        range(len(listed), len(listed) + 1))
        visible[rows] = flags > 0.5
    bbox = None if entry.get("bbox") is None else _vector(entry["bbox"], "'bbox'", range(4, 5))
    headpose = None
    if entry.get("headpose") is not None:
        pose = _vector(entry["headpose"], "'headpose' [yaw, pitch, roll, tx, ty, tz]", range(3, 7))
        headpose = np.full(6, np.nan)
        headpose[:pose.size] = pose
    return Entry(entry["imgpath"], bbox, headpose, landmarks, annotated, visible)


def _rows(ids: Any, count: int, landmark_set: LandmarkSet) -> list[int]:
    """The set's rows of an entry's points, from its `ids` (or the set's order without ids)."""
    if ids is None:
        if count != landmark_set.num_landmarks:
            raise ValueError(f"has {count} landmarks and no 'ids'; without ids an entry must list all "
                             f"{landmark_set.num_landmarks} points of landmark set {landmark_set.name!r}")
        return list(range(count))
    if not isinstance(ids, list) or len(ids) != count:
        raise ValueError(f"'ids' must be a list with one id per landmark ({count})")
    position = {point_id: row for row, point_id in enumerate(landmark_set.ids)}
    rows = []
    for point_id in ids:
        if not integral(point_id):
            raise ValueError(f"landmark id {point_id!r} is not an integer")
        if int(point_id) not in position:
            raise ValueError(f"unknown landmark id {int(point_id)}: landmark set {landmark_set.name!r} "
                             f"({landmark_set.num_landmarks} points) has no such id")
        rows.append(position[int(point_id)])
    if len(set(rows)) != len(rows):
        seen: set[int] = set()
        repeated = next(landmark_set.ids[row] for row in rows if row in seen or seen.add(row))
        raise ValueError(f"landmark id {repeated} appears twice")
    return rows


def entry_record(landmark_set: LandmarkSet, imgpath: str, landmarks: np.ndarray, annotated: np.ndarray,
                 visible: np.ndarray, bbox: np.ndarray | None = None, headpose: np.ndarray | None = None) -> dict:
    """The JSON object of one face (only annotated points listed; NaN pose values as null)."""
    ids = np.asarray(landmark_set.ids)
    mask = np.asarray(annotated, bool)
    return {
        "imgpath": imgpath,
        "bbox": None if bbox is None else [float(v) for v in bbox],
        "headpose": None if headpose is None else [float(v) if np.isfinite(v) else None for v in headpose],
        "ids": [int(v) for v in ids[mask]],
        "landmarks": np.asarray(landmarks, np.float64)[mask].tolist(),
        "visible": [float(v) for v in np.asarray(visible)[mask]],
    }
