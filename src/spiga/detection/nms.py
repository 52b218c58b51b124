"""Non-maximum suppression on corner boxes, plain or weighted (MediaPipe's default).

Boxes are (N, 4) arrays of (x_min, y_min, x_max, y_max); scores (N,). Keypoints, when
given, are (N, K, 2) and are merged like the boxes.
"""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in a (N, 4) with every box in b (M, 4) -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3,
                        keypoints: np.ndarray | None = None, weighted: bool = True
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Suppress overlapping boxes, best score first.

    The best remaining box takes every remaining box whose IoU with it exceeds
    `iou_threshold` as a cluster. Plain NMS keeps the best box of each cluster; weighted
    NMS (as MediaPipe's `NonMaxSuppressionCalculator` with `algorithm: WEIGHTED`) keeps
    the score-weighted mean of the cluster's boxes and keypoints with the best score.

    Returns:
        boxes (K, 4), scores (K,), keypoints (K, P, 2) or None, best score first.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    overlaps = iou_matrix(boxes, boxes)
    kept_boxes, kept_scores, kept_points = [], [], []
    remaining = order
    while len(remaining):
        best = remaining[0]
        in_cluster = overlaps[best, remaining] > iou_threshold
        in_cluster[0] = True
        cluster = remaining[in_cluster]
        if weighted:
            total = scores[cluster].sum()
            weights = scores[cluster] / total if total > 0 else np.full(len(cluster), 1 / len(cluster))
            kept_boxes.append(weights @ boxes[cluster])
            if keypoints is not None:
                kept_points.append(np.tensordot(weights, keypoints[cluster], axes=1))
        else:
            kept_boxes.append(boxes[best])
            if keypoints is not None:
                kept_points.append(keypoints[best])
        kept_scores.append(scores[best])
        remaining = remaining[~in_cluster]
    out_boxes = np.array(kept_boxes).reshape(-1, 4)
    out_scores = np.array(kept_scores)
    out_points = None
    if keypoints is not None:
        out_points = np.array(kept_points).reshape(-1, *np.shape(keypoints)[1:])
    return out_boxes, out_scores, out_points


def drop_contained(boxes: np.ndarray, threshold: float = 0.7) -> np.ndarray:
    """(N,) mask keeping boxes not covered, for at least `threshold` of their area, by a
    larger box: a face does not sit inside another face's box, but a part of a large face
    (an eye, a cheek) can look like a small face to a detector looking at finer scales."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=-1)
    covered = inter >= threshold * np.maximum(area[:, None], 1e-12)  # [i, j]: j covers i
    larger = area[None, :] > area[:, None]
    return ~np.any(covered & larger, axis=1)
