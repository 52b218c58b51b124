"""Estimate a 3D mean face from a dataset's 2D annotations (for new landmark sets).

SPIGA's pose head projects a rigid 3D mean face; a new layout (a thermal set with 54
points, say) needs one. Without 3D data we recover it by rigid factorisation
(Tomasi-Kanade with a scaled-orthographic camera):

1. keep samples with every point annotated; centre each 2D shape and scale it to unit
   RMS radius;
2. keep the "frontal-ish" ones: the `frontal_fraction` most left-right symmetric shapes
   (distance between a shape and its mirror image, after similarity alignment); this
   drops profiles, whose contours slide over the face and are not rigid, while keeping
   the moderate yaw and pitch that reveal depth. Every kept shape is also added
   mirrored (x -> -x, points reordered by the mirror pairs), so the result is symmetric;
3. stack the shapes into a 2F x L matrix, take its best rank-3 factorisation by SVD,
   and upgrade it to metric (find the 3 x 3 Q that makes each frame's two rows
   orthogonal and of equal length);
4. turn the shape to the average view (the chordal mean of the per-frame rotations),
   make its mirror plane vertical, and settle the depth sign (orthographic views cannot
   tell a face from its hollow mask): the outline of the face (the points on the convex
   hull of the frontal view) lies behind its interior;
5. symmetrise, centre (x, y at the centroid, the front-most point at depth 0, as the
   official files put the nose tip there) and scale so that the median depth tz of the
   data's pose labels (PnP in each sample's crop camera) is `distance`: 3 world units by
   default, about where the official models' labels put faces, so that pose
   translations keep the official models' range.

"Frontal" (yaw = pitch = roll = 0) of the estimated face is the average view of the
kept samples. A face given by the user (`id|x|y|z` file) is read with
`spiga.landmarks.read_mean_face` instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from ..errors import DatasetError, SpigaError
from ..geometry import crop_matrices, transform_points
from ..preprocess import Preprocessing
from .sample import Dataset
from .targets import fit_pose

log = logging.getLogger(__name__)

#: Depth of a median-sized face in the crop camera, world units (official labels: ~2.9-3.1).
DEFAULT_DISTANCE = 3.0


@dataclass(frozen=True)
class MeanFaceFit:
    """An estimated mean face.

    Attributes:
        points: (L, 3) face frame (x to the subject's left, y up, z out of the face), the
            order of the landmark set; the frame of `id|x|y|z` files.
        samples: shapes used (before mirroring).
        residual: RMS 2D residual of the rigid model over the used shapes, as a fraction
            of the shapes' RMS radius.
    """

    points: np.ndarray
    samples: int
    residual: float


def normalise_shapes(shapes: np.ndarray) -> np.ndarray:
    """(F, L, 2) -> centred, unit-RMS-radius shapes (F, L, 2)."""
    centred = shapes - shapes.mean(axis=1, keepdims=True)
    radius = np.sqrt((centred ** 2).sum(axis=2).mean(axis=1))
    return centred / radius[:, None, None]


def mirror_shapes(shapes: np.ndarray, flip_order: tuple[int, ...]) -> np.ndarray:
    """(F, L, 2) -> their mirror images: x negated, points reordered."""
    return shapes[:, list(flip_order)] * np.array([-1.0, 1.0])


def procrustes_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(F, L, 2) normalised shapes -> (F,) residual after the best rotation + scale of b onto a."""
    za = a[..., 0] + 1j * a[..., 1]
    zb = b[..., 0] + 1j * b[..., 1]
    inner = (np.conj(zb) * za).sum(axis=1)
    scale = inner / (np.abs(zb) ** 2).sum(axis=1)
    return np.sqrt((np.abs(za - scale[:, None] * zb) ** 2).mean(axis=1))


def _metric_upgrade(motion: np.ndarray) -> np.ndarray:
    """(2F, 3) affine motion -> Q (3, 3) with motion @ Q scaled-orthographic per frame."""
    m1, m2 = motion[0::2], motion[1::2]

    def quadratic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # coefficients of a G b^T in the 6 entries of the symmetric G
        return np.stack([a[:, 0] * b[:, 0], a[:, 0] * b[:, 1] + a[:, 1] * b[:, 0],
                         a[:, 0] * b[:, 2] + a[:, 2] * b[:, 0], a[:, 1] * b[:, 1],
                         a[:, 1] * b[:, 2] + a[:, 2] * b[:, 1], a[:, 2] * b[:, 2]], axis=1)

    constraints = np.concatenate([quadratic(m1, m1) - quadratic(m2, m2), quadratic(m1, m2)])
    _, _, vt = np.linalg.svd(constraints)
    g = vt[-1]
    gram = np.array([[g[0], g[1], g[2]], [g[1], g[3], g[4]], [g[2], g[4], g[5]]])
    if np.trace(gram) < 0:
        gram = -gram
    values, vectors = np.linalg.eigh(gram)
    if values.min() <= 1e-9 * values.max():
        raise SpigaError("mean-face estimation: the shapes show too little pose variation "
                         "to recover depth (use more varied samples, or a larger frontal_fraction)")
    return vectors * np.sqrt(values)


def _rotations(motion: np.ndarray) -> np.ndarray:
    """(2F, 3) metric motion -> (F, 3, 3) nearest rotations (rows x, y, x cross y)."""
    r1, r2 = motion[0::2], motion[1::2]
    r1 = r1 / np.linalg.norm(r1, axis=1, keepdims=True)
    r2 = r2 / np.linalg.norm(r2, axis=1, keepdims=True)
    stacked = np.stack([r1, r2, np.cross(r1, r2)], axis=1)
    u, _, vt = np.linalg.svd(stacked)
    fix = np.ones((len(stacked), 3))
    fix[:, 2] = np.sign(np.linalg.det(u @ vt))
    return (u * fix[:, None, :]) @ vt


def _mean_rotation(rotations: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(rotations.sum(axis=0))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return u @ d @ vt


def _align_mirror_plane(shape: np.ndarray, flip_order: tuple[int, ...]) -> np.ndarray:
    """Rotate (L, 3) so that mirror pairs differ along x only (their plane is x = 0),
    by the smallest rotation taking the pairs' main direction to the x axis."""
    pairs = [(i, j) for i, j in enumerate(flip_order) if i < j]
    if not pairs:
        return shape
    diffs = np.array([shape[j] - shape[i] for i, j in pairs])
    _, _, vt = np.linalg.svd(diffs)
    axis = vt[0] * np.sign(vt[0][0] or 1.0)
    target = np.array([1.0, 0.0, 0.0])
    v, c = np.cross(axis, target), float(axis @ target)
    skew = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    rotation = np.eye(3) + skew + skew @ skew / (1.0 + c)
    return shape @ rotation.T


def _depth_sign(shape: np.ndarray) -> float:
    """+1 if the outline (hull of the x, y view) is farther from the camera (larger z,
    camera axes: x right, y down, z forward) than the interior, else -1."""
    try:
        hull = np.zeros(len(shape), bool)
        hull[ConvexHull(shape[:, :2]).vertices] = True
    except QhullError:
        return 1.0
    if hull.all():
        return 1.0
    return 1.0 if shape[hull, 2].mean() >= shape[~hull, 2].mean() else -1.0


def estimate_mean_face(shapes: np.ndarray, flip_order: tuple[int, ...],
                       frontal_fraction: float = 0.95, crop_radius: float | None = None,
                       distance: float = DEFAULT_DISTANCE, focal: float = 384.0) -> MeanFaceFit:
    """Rigid factorisation of 2D shapes into a 3D mean face (module docstring).

    Args:
        shapes: (F, L, 2) complete 2D shapes, image axes (x right, y down).
        flip_order: the landmark set's mirror order (identity: no symmetry used).
        frontal_fraction: share of the most symmetric shapes kept.
        crop_radius: median RMS radius of the shapes in crop pixels (sets the scale with
            `distance` and `focal`); None leaves the shape at unit RMS radius.
    Returns:
        the fit, points in the face frame.
    """
    shapes = np.asarray(shapes, dtype=np.float64)
    if shapes.ndim != 3 or shapes.shape[2] != 2:
        raise SpigaError(f"mean-face estimation: shapes must be (F, L, 2), got {shapes.shape}")
    if len(shapes) < 3:
        raise SpigaError(f"mean-face estimation needs at least 3 complete shapes, got {len(shapes)}")
    if not 0.0 < frontal_fraction <= 1.0:
        raise SpigaError("frontal_fraction must lie in (0, 1]")
    normal = normalise_shapes(shapes)
    symmetric = any(i != j for i, j in enumerate(flip_order))
    if symmetric:
        mirrored = mirror_shapes(normal, flip_order)
        asymmetry = procrustes_distance(normal, mirrored)
        keep = asymmetry <= np.quantile(asymmetry, frontal_fraction)
        normal = np.concatenate([normal[keep], mirrored[keep]])
        used = int(keep.sum())
    else:
        used = len(normal)
    frames = len(normal)
    measurements = normal.transpose(0, 2, 1).reshape(2 * frames, -1)  # (2F, L)
    u, sigma, vt = np.linalg.svd(measurements, full_matrices=False)
    root = np.sqrt(sigma[:3])
    motion, structure = u[:, :3] * root, root[:, None] * vt[:3]
    residual = float(np.sqrt(((measurements - motion @ structure) ** 2).sum() / (frames * measurements.shape[1])))
    q = _metric_upgrade(motion)
    motion, shape = motion @ q, (np.linalg.inv(q) @ structure).T  # (L, 3)
    shape = shape @ _mean_rotation(_rotations(motion)).T  # the average view, camera axes
    if symmetric:
        shape = _align_mirror_plane(shape, flip_order)
    shape[:, 2] *= _depth_sign(shape)
    if symmetric:
        shape = (shape + shape[list(flip_order)] * np.array([-1.0, 1.0, 1.0])) / 2
    face = shape * np.array([1.0, -1.0, -1.0])  # camera axes -> face frame (x, -y, -z)
    face[:, :2] -= face[:, :2].mean(axis=0)
    face[:, 2] -= face[:, 2].max()
    radius = np.sqrt((face[:, :2] ** 2).sum(axis=1).mean())
    face /= radius
    if crop_radius is not None:
        face *= crop_radius * distance / focal
    return MeanFaceFit(face, used, residual)


def complete_shapes(dataset: Dataset, max_samples: int | None = None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's fully annotated shapes: (F, L, 2) image pixels, and (F, 4) boxes."""
    chosen = [s for s in dataset.samples if s.annotated.all()]
    if max_samples is not None and len(chosen) > max_samples:
        picks = np.random.default_rng(seed).choice(len(chosen), max_samples, replace=False)
        chosen = [chosen[i] for i in sorted(picks)]
    if len(chosen) < 3:
        raise DatasetError(f"{dataset.name}: {len(chosen)} fully annotated samples; "
                           "a mean face needs at least 3")
    return np.stack([s.landmarks for s in chosen]), np.stack([s.box for s in chosen])


def estimate_from_dataset(dataset: Dataset, frontal_fraction: float = 0.95,
                          distance: float = DEFAULT_DISTANCE, max_samples: int | None = 20000,
                          preprocessing: Preprocessing = Preprocessing()) -> MeanFaceFit:
    """Estimate the mean face of `dataset`'s landmark set.

    The scale is set so that the median depth tz of the pose labels of the used samples
    (PnP in the crop camera of each sample's box, `preprocessing`: the model's crop) is
    `distance`.
    """
    shapes, boxes = complete_shapes(dataset, max_samples)
    in_crop = transform_points(shapes, crop_matrices(boxes, preprocessing))
    centred = in_crop - in_crop.mean(axis=1, keepdims=True)
    crop_radius = float(np.median(np.sqrt((centred ** 2).sum(axis=2).mean(axis=1))))
    focal = preprocessing.focal_ratio * preprocessing.crop_size
    fit = estimate_mean_face(shapes, dataset.landmark_set.flip_order, frontal_fraction,
                             crop_radius, distance, focal)
    world = np.stack([fit.points[:, 2], -fit.points[:, 0], -fit.points[:, 1]], axis=1)
    every = np.ones(len(world), bool)
    depths = [label.pose[5] for points in in_crop[:2000]
              if (label := fit_pose(points, every, world, preprocessing, max_error=np.inf)).valid]
    if depths:
        fit = MeanFaceFit(fit.points * (distance / float(np.median(depths))), fit.samples, fit.residual)
    log.info("mean face from %d shapes of %s (x2 mirrored), rigid residual %.3f",
             fit.samples, dataset.name, fit.residual)
    return fit
