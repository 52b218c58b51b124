"""Face crops: box -> square crop, and the affine that maps back.

SPIGA looks at a square of side `enlarge * max(w, h)` centred on the face box,
resampled to `size` x `size` with nearest-neighbour sampling; pixels outside the
image are black. Size, enlargement and sampling come from the model's
`spiga.preprocess.Preprocessing` (the official values are stated there only). The sampling reproduces Pillow's `Image.transform(..., AFFINE)`
for scale-and-shift matrices exactly, as the original implementation used it: the
source column of output column j is floor(c + s/2 + j*s) accumulated in float64 (and
-1, i.e. outside, for negative positions), with s = 1/scale and c the offset of the
inverse matrix. OpenCV's nearest-neighbour warp rounds differently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import BoxError

if TYPE_CHECKING:  # geometry stays free of io: the object is only read here
    from ..preprocess import Preprocessing


def crop_boxes(boxes: np.ndarray, enlarge: float) -> np.ndarray:
    """(B, 4) face boxes (x, y, w, h) -> (B, 4) square crop regions (x, y, side, side)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x, y, w, h = boxes.T
    side = np.maximum(w, h) * enlarge
    return np.stack([x - (side - w) / 2, y - (side - h) / 2, side, side], axis=1)


def crop_matrices(boxes: np.ndarray, preprocessing: "Preprocessing") -> np.ndarray:
    """(B, 4) face boxes -> (B, 2, 3) affines from image pixels to crop pixels.

    Raises:
        BoxError: a finite box whose crop float64 cannot represent (its enlarged side
            overflows to infinity, or is so small that the scale does): the affine would
            be singular or not finite.
    """
    size, enlarge = preprocessing.crop_size, preprocessing.enlarge
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # judged below, box by box
        regions = crop_boxes(boxes, enlarge)
        scale = size / regions[:, 2]
        centre_x = regions[:, 0] + regions[:, 2] / 2
        centre_y = regions[:, 1] + regions[:, 3] / 2
        matrices = np.zeros((len(regions), 2, 3))
        matrices[:, 0, 0] = scale
        matrices[:, 1, 1] = scale
        matrices[:, 0, 2] = size / 2 - scale * centre_x
        matrices[:, 1, 2] = size / 2 - scale * centre_y
        invertible = np.isfinite(matrices).all(axis=(1, 2)) & (scale > 0) & np.isfinite(1.0 / scale)
    if not invertible.all():
        i = int(np.flatnonzero(~invertible)[0])
        x, y, w, h = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[i]
        raise BoxError(f"box {i} ({x:g}, {y:g}, {w:g}, {h:g}) cannot be cropped: its {enlarge:g}x crop square "
                       "overflows (or vanishes) in floating point")
    return matrices


def invert_affine(matrices: np.ndarray) -> np.ndarray:
    """(..., 2, 3) affines -> their inverses (..., 2, 3)."""
    linear = np.linalg.inv(matrices[..., :2, :2])
    offset = -(linear @ matrices[..., :, 2:3])
    return np.concatenate([linear, offset], axis=-1)


def transform_points(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Apply (B, 2, 3) affines to (B, L, 2) points."""
    return points @ np.swapaxes(matrices[..., :2, :2], -1, -2) + matrices[..., None, :, 2]


def _source_indices(start: np.ndarray, step: np.ndarray, count: int, limit: int) -> np.ndarray:
    """Pillow's pre-tabulated nearest-neighbour source positions along one axis, for B crops.

    start, step: (B,) -> (B, count) int64 indices. Positions are accumulated by repeated
    addition in float64 (a running sum along each row, in order), exactly as Pillow does,
    then truncated; negative positions and positions >= limit give -1.
    """
    steps = np.repeat(np.asarray(step, np.float64)[:, None], count, axis=1)
    steps[:, 0] = start
    positions = np.cumsum(steps, axis=1)
    # positions beyond the image (a huge box's crop) are clipped before the integer cast, which
    # would otherwise overflow; they are outside either way
    index = np.where(positions < 0, -1, np.trunc(np.minimum(positions, limit))).astype(np.int64)
    index[index >= limit] = -1
    return index


def crop_images(image: np.ndarray, boxes: np.ndarray,
                preprocessing: "Preprocessing") -> tuple[np.ndarray, np.ndarray]:
    """Crop all faces of one image in one vectorised gather.

    Args:
        image: (H, W, C) array of any dtype.
        boxes: (B, 4) face boxes (x, y, w, h) in image pixels.
        preprocessing: the model's crop (size, enlargement, nearest-neighbour sampling).
    Returns:
        crops (B, size, size, C) of the image's dtype, and the (B, 2, 3) affines from
        image pixels to crop pixels.
    """
    height, width = image.shape[:2]
    size = preprocessing.crop_size
    matrices = crop_matrices(boxes, preprocessing)
    inverse = invert_affine(matrices)
    cols = _source_indices(inverse[:, 0, 2] + inverse[:, 0, 0] * 0.5, inverse[:, 0, 0], size, width)  # (B, S)
    rows = _source_indices(inverse[:, 1, 2] + inverse[:, 1, 1] * 0.5, inverse[:, 1, 1], size, height)
    # one gather for every face (out-of-image positions read pixel 0, then are blacked out)
    crops = image[np.maximum(rows, 0)[:, :, None], np.maximum(cols, 0)[:, None, :]]
    outside = (rows < 0)[:, :, None] | (cols < 0)[:, None, :]
    if outside.any():
        crops[outside] = 0
    return crops, matrices
