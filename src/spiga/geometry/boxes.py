"""Boxes and their overlap (IoU): one implementation for detection, tracking and evaluation.

Boxes are (x, y, w, h) at every public boundary; the detector's suppression works on
corner boxes (x0, y0, x1, y1), hence the `corner_` forms.
"""

from __future__ import annotations

import numpy as np


def to_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) boxes (x, y, w, h) -> (N, 4) corners (x0, y0, x1, y1)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def corner_areas(corners: np.ndarray) -> np.ndarray:
    """(N,) areas of (N, 4) corner boxes (0 for inverted ones)."""
    return np.prod(np.clip(corners[:, 2:] - corners[:, :2], 0, None), axis=-1)


def corner_iou_one_to_many(box: np.ndarray, boxes: np.ndarray, area: float | None = None,
                           areas: np.ndarray | None = None) -> np.ndarray:
    """(N,) IoU of one corner box (4,) with corner boxes (N, 4); their areas may be given
    (suppression loops reuse them). 0 where the union is empty."""
    area = corner_areas(np.asarray(box, np.float64)[None])[0] if area is None else area
    areas = corner_areas(boxes) if areas is None else areas
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def corner_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every corner box of a (N, 4) with every one of b (M, 4) -> (N, M).

    Memory is N x M: for small sets; the detector's suppression compares one box at a time.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    union = corner_areas(a)[:, None] + corner_areas(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) and (M, 4) boxes (x, y, w, h) -> (N, M)."""
    return corner_iou(to_corners(a), to_corners(b))
