"""Non-maximum suppression on corner boxes, plain or weighted (MediaPipe's default).

Boxes are (N, 4) arrays of (x_min, y_min, x_max, y_max); scores (N,). Keypoints, when
given, are (N, K, 2) and are merged like the boxes.

Memory stays linear in the number of candidates: only the best `MAX_CANDIDATES` by score
are kept before any overlap is computed, and overlaps are computed one box against the
rest (never an N x N matrix).
"""

from __future__ import annotations

import numpy as np

from ..geometry.boxes import corner_areas, corner_iou_one_to_many

# Candidates kept (best scores first) before suppression. A face gives 1 to 3 candidates
# above the default score threshold over the pyramid's levels (measured on group photos of
# 22 to 62 faces), a few dozen at very low thresholds, so 2000 leaves room for hundreds of
# faces in one image and bounds the suppression's time (clusters x K) and memory (K).
MAX_CANDIDATES = 2000
_ROWS_PER_CHUNK = 256  # rows of a pairwise computation at a time (bounds drop_contained's memory)


def best_first(scores: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Indices of the `limit` best scores (all when None), best first; ties keep input order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable")
    return order if limit is None else order[:limit]


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3,
                        keypoints: np.ndarray | None = None, weighted: bool = True,
                        max_candidates: int = MAX_CANDIDATES
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Suppress overlapping boxes, best score first.

    Only the `max_candidates` best-scoring boxes take part (the rest are dropped first).
    The best remaining box takes every remaining box whose IoU with it exceeds
    `iou_threshold` as a cluster. Plain NMS keeps the best box of each cluster; weighted
    NMS (as MediaPipe's `NonMaxSuppressionCalculator` with `algorithm: WEIGHTED`) keeps
    the score-weighted mean of the cluster's boxes and keypoints with the best score.

    Returns:
        boxes (K, 4), scores (K,), keypoints (K, P, 2) or None, best score first.
    """
    scores = np.asarray(scores).reshape(-1)
    order = best_first(scores, max_candidates)
    boxes = np.asarray(boxes).reshape(-1, 4)[order].astype(np.float64)
    scores = scores[order].astype(np.float64)
    points = None if keypoints is None else np.asarray(keypoints)[order].astype(np.float64)
    areas = corner_areas(boxes)
    kept_boxes, kept_scores, kept_points = [], [], []
    remaining = np.arange(len(boxes))
    while len(remaining):
        best = remaining[0]
        in_cluster = corner_iou_one_to_many(boxes[best], boxes[remaining], areas[best], areas[remaining]) > iou_threshold
        in_cluster[0] = True
        cluster = remaining[in_cluster]
        if weighted:
            total = scores[cluster].sum()
            weights = scores[cluster] / total if total > 0 else np.full(len(cluster), 1 / len(cluster))
            kept_boxes.append(weights @ boxes[cluster])
            if points is not None:
                kept_points.append(np.tensordot(weights, points[cluster], axes=1))
        else:
            kept_boxes.append(boxes[best])
            if points is not None:
                kept_points.append(points[best])
        kept_scores.append(scores[best])
        remaining = remaining[~in_cluster]
    out_boxes = np.array(kept_boxes).reshape(-1, 4)
    out_scores = np.array(kept_scores, dtype=np.float64)
    out_points = None
    if points is not None:
        out_points = np.array(kept_points).reshape(-1, *points.shape[1:])
    return out_boxes, out_scores, out_points


def drop_contained(boxes: np.ndarray, threshold: float = 0.7) -> np.ndarray:
    """(N,) mask keeping boxes not covered, for at least `threshold` of their area, by a
    larger box: a face does not sit inside another face's box, but a part of a large face
    (an eye, a cheek) can look like a small face to a detector looking at finer scales.

    Computed `_ROWS_PER_CHUNK` boxes at a time: memory is linear in N."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = corner_areas(boxes)
    keep = np.ones(len(boxes), dtype=bool)
    for start in range(0, len(boxes), _ROWS_PER_CHUNK):
        rows = slice(start, start + _ROWS_PER_CHUNK)
        top_left = np.maximum(boxes[rows, None, :2], boxes[None, :, :2])
        bottom_right = np.minimum(boxes[rows, None, 2:], boxes[None, :, 2:])
        inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
        covered = inter >= threshold * np.maximum(area[rows, None], 1e-12)  # [i, j]: j covers i
        larger = area[None, :] > area[rows, None]
        keep[rows] = ~np.any(covered & larger, axis=1)
    return keep
