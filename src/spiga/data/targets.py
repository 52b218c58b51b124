"""Training targets: point heatmaps, boundary heatmaps and head-pose labels.

Heatmaps live on the 64 x 64 feature map; a point at crop units (u, v) in [0, 1] sits
at map coordinates (64 u, 64 v), and map pixel (i, j) covers [j, j + 1) x [i, i + 1),
so its value is taken at its centre (j + 0.5, i + 0.5). (The original implementation
rounded points to whole map pixels and put pixel centres at integers; we keep sub-pixel
positions and one pixel convention everywhere.)

- point heatmaps: exp(-d^2 / (2 sigma^2)), sigma `heatmap_sigma` (1.5) map pixels, peak 1;
  all zero for points that are not annotated.
- boundary heatmaps, one per edge group: a smooth curve (cubic interpolating spline,
  scipy) through the group's annotated points in order, and exp(-d^2 / (2 sigma^2)) of
  the distance d to it, sigma 1, cut to zero beyond 3 sigma (as the original).

Head-pose labels: the 3D mean face is fitted to the ground-truth points with OpenCV's
PnP solver (SQPnP, then Levenberg-Marquardt refinement) in the crop camera of the model's
`Preprocessing`: focal length `focal_ratio` * size, principal point at the crop centre. OpenCV's rotation maps world to
camera exactly as SPIGA's `euler_to_rotation` does (x_cam = R x_world + t), so the
labels are `rotation_to_euler(R)` and t, in the model's units (t does not depend on
the crop size, since the camera scales with it). Each label is checked by projecting
the mean face back through the model's own projection (`project_points` with
`euler_to_rotation`) and measuring the RMS distance to the points, in crop units.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import interpolate
from scipy.spatial import cKDTree

from ..geometry import euler_to_rotation, intrinsics, project_points, rotation_to_euler
from ..landmarks import LandmarkSet
from ..preprocess import Preprocessing

#: Mean-face ids of the points the original SPIGA fits the pose to (brows, eyes, nose,
#: mouth corners, chin): they move little with expression. WFLW has 22 of them, 300W 18.
ROBUST_POSE_IDS = frozenset(range(1, 25))


def _grid(size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float64) + 0.5


def point_heatmaps(points: np.ndarray, annotated: np.ndarray, size: int = 64,
                   heatmap_sigma: float = 1.5) -> np.ndarray:
    """Gaussian heatmaps.

    Args:
        points: (L, 2) map coordinates (crop units times `size`).
        annotated: (L,) bool; other maps stay zero.
    Returns:
        (L, size, size) float32, peak 1 at each point.
    """
    grid = _grid(size)
    points = np.nan_to_num(np.asarray(points, dtype=np.float64))
    gx = np.exp(-(grid[None, :] - points[:, 0:1]) ** 2 / (2 * heatmap_sigma ** 2))  # (L, size)
    gy = np.exp(-(grid[None, :] - points[:, 1:2]) ** 2 / (2 * heatmap_sigma ** 2))
    maps = gy[:, :, None] * gx[:, None, :]
    maps[~np.asarray(annotated, dtype=bool)] = 0.0
    return maps.astype(np.float32)


def _dedupe(points: np.ndarray) -> np.ndarray:
    keep = np.ones(len(points), bool)
    keep[1:] = np.any(np.abs(np.diff(points, axis=0)) > 1e-9, axis=1)
    return points[keep]


def _densify(polyline: np.ndarray, step: float) -> np.ndarray:
    """(n, 2) polyline -> its vertices plus points every <= `step` along each segment."""
    deltas = np.diff(polyline, axis=0)
    counts = np.maximum(np.ceil(np.linalg.norm(deltas, axis=1) / step).astype(int), 1)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    t = (np.arange(counts.sum()) - first + 1) / np.repeat(counts, counts)
    inner = np.repeat(polyline[:-1], counts, axis=0) + t[:, None] * np.repeat(deltas, counts, axis=0)
    return np.concatenate([polyline[:1], inner])


def contour_curve(points: np.ndarray, step: float = 0.25) -> np.ndarray:
    """Ordered (n, 2) points -> (m, 2) dense samples of a smooth curve through them
    (interpolating spline of degree min(3, n - 1); a single point for n == 1), spaced at
    most about `step`."""
    points = _dedupe(np.asarray(points, dtype=np.float64))
    if len(points) == 1:
        return points
    if len(points) >= 3:
        try:
            tck, knots = interpolate.splprep(points.T, k=min(3, len(points) - 1), s=0)
            coarse = np.stack(interpolate.splev(np.linspace(0, 1, 8 * len(points)), tck), axis=1)
            length = np.linalg.norm(np.diff(coarse, axis=0), axis=1).sum()
            count = max(int(np.ceil(1.1 * length / step)) + 1, 2)
            where = np.union1d(np.linspace(0, 1, count), knots)  # through the points exactly
            return _densify(np.stack(interpolate.splev(where, tck), axis=1), step)
        except (ValueError, TypeError):  # degenerate input: fall back to the polyline
            pass
    return _densify(points, step)


def _segment_distance(pixels: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """(P, 2) points to (P, 2)->(P, 2) segments: (P,) distances."""
    direction = end - start
    length2 = np.maximum((direction ** 2).sum(axis=1), 1e-18)
    t = np.clip(((pixels - start) * direction).sum(axis=1) / length2, 0.0, 1.0)
    return np.linalg.norm(pixels - (start + t[:, None] * direction), axis=1)


def distance_map(curve: np.ndarray, size: int, reach: float) -> np.ndarray:
    """Distance from each map pixel centre to the polyline through (m, 2) `curve` samples;
    `inf` beyond `reach`. The nearest sample (k-d tree) picks the two segments around it,
    whose exact distance is taken. Returns (size, size) float64."""
    result = np.full((size, size), np.inf)
    x0, y0 = np.clip(np.floor(curve.min(axis=0) - reach).astype(int), 0, size)
    x1, y1 = np.clip(np.ceil(curve.max(axis=0) + reach).astype(int), 0, size)
    if x0 >= x1 or y0 >= y1:
        return result
    xs, ys = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)
    pixels = np.stack([xs.ravel(), ys.ravel()], axis=1)
    # samples are at most `step` apart, so anything within reach has a sample within reach + step
    distance, nearest = cKDTree(curve).query(pixels, distance_upper_bound=reach + 0.5)
    near = np.isfinite(distance)
    if len(curve) > 1 and near.any():
        k = nearest[near]
        before, after = np.maximum(k - 1, 0), np.minimum(k + 1, len(curve) - 1)
        distance[near] = np.minimum(_segment_distance(pixels[near], curve[before], curve[k]),
                                    _segment_distance(pixels[near], curve[k], curve[after]))
    distance[distance > reach] = np.inf
    result[y0:y1, x0:x1] = distance.reshape(xs.shape)
    return result


def boundary_heatmaps(points: np.ndarray, annotated: np.ndarray,
                      edge_groups: tuple[tuple[int, ...], ...], size: int = 64,
                      sigma: float = 1.0) -> np.ndarray:
    """One map per edge group.

    Args:
        points: (L, 2) map coordinates.
        annotated: (L,) bool; unannotated points are left out of their contour.
        edge_groups: ordered point indices per group.
    Returns:
        (E, size, size) float32 in [0, 1]; a group without annotated points stays zero.
    """
    maps = np.zeros((len(edge_groups), size, size), np.float32)
    annotated = np.asarray(annotated, dtype=bool)
    for e, group in enumerate(edge_groups):
        members = [i for i in group if annotated[i]]
        if not members:
            continue
        distance = distance_map(contour_curve(points[members]), size, 3 * sigma)
        maps[e] = np.where(distance < 3 * sigma, np.exp(-distance ** 2 / (2 * sigma ** 2)), 0.0)
    return maps


def pose_points(landmark_set: LandmarkSet) -> np.ndarray:
    """(L,) bool: the points the pose is fitted to. The original's robust ids 1..24 when
    the set has at least 6 of them (WFLW has 22, 300W 18), else every point."""
    mask = np.array([i in ROBUST_POSE_IDS for i in landmark_set.ids])
    return mask if mask.sum() >= 6 else np.ones(landmark_set.num_landmarks, bool)


@dataclass(frozen=True)
class PoseLabel:
    """A head-pose label.

    Attributes:
        pose: (6,) yaw, pitch, roll (degrees, SPIGA's convention), tx, ty, tz.
        error: RMS re-projection error of the fitted points, crop units.
        valid: fitted with enough points, in front of the camera, error below the limit.
        points: how many points the fit used.
    """

    pose: np.ndarray
    error: float
    valid: bool
    points: int


def project_mean_face(mean_face: np.ndarray, pose: np.ndarray, preprocessing: Preprocessing,
                      size: float | None = None) -> np.ndarray:
    """The model's projection: (L, 3) world points and (6,) pose -> (L, 2) pixels of the
    crop camera (`size`: another image side with the same camera, e.g. the feature map)."""
    rotation = euler_to_rotation(np.asarray(pose[:3], dtype=np.float64))
    side = preprocessing.crop_size if size is None else size
    return project_points(mean_face, rotation, np.asarray(pose[3:], dtype=np.float64),
                          intrinsics(side, preprocessing.focal_ratio))


def fit_pose(points: np.ndarray, mask: np.ndarray, mean_face: np.ndarray, preprocessing: Preprocessing,
             max_error: float = 0.08) -> PoseLabel:
    """Fit the mean face to 2D points in the crop camera of `preprocessing`.

    Args:
        points: (L, 2) crop pixels.
        mask: (L,) bool, the points to fit (annotated and chosen by `pose_points`).
        mean_face: (L, 3) world points (`spiga.landmarks.read_mean_face`).
        max_error: largest RMS re-projection error, in crop units, of a valid label. Real
            faces fit the official mean face to about 0.02 (median) and 0.05 (worst) on
            COFW68, so the default 0.08 flags only fits that went wrong.
    """
    mask = np.asarray(mask, dtype=bool)
    count = int(mask.sum())
    if count < 4:
        return PoseLabel(np.zeros(6), float("inf"), False, count)
    size = preprocessing.crop_size
    camera = intrinsics(size, preprocessing.focal_ratio)
    world = np.ascontiguousarray(mean_face[mask], dtype=np.float64)
    image = np.ascontiguousarray(points[mask], dtype=np.float64)
    try:
        ok, rvec, tvec = cv2.solvePnP(world, image, camera, None, flags=cv2.SOLVEPNP_SQPNP)
        if ok:
            rvec, tvec = cv2.solvePnPRefineLM(world, image, camera, None, rvec, tvec)
    except cv2.error:
        ok = False
    if not ok:
        return PoseLabel(np.zeros(6), float("inf"), False, count)
    rotation, _ = cv2.Rodrigues(rvec)
    pose = np.concatenate([rotation_to_euler(rotation), tvec.reshape(3)])
    # Round trip through the model's own projection: checks the label, not just the solver.
    projected = project_mean_face(mean_face[mask], pose, preprocessing)
    error = float(np.sqrt(np.mean(np.sum((projected - image) ** 2, axis=1)))) / size
    valid = bool(pose[5] > 0 and np.isfinite(error) and error <= max_error)
    return PoseLabel(pose, error, valid, count)
