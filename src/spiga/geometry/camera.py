"""The crop camera and perspective projection.

SPIGA projects its 3D mean face with a pinhole camera whose focal length is
`focal_ratio` times the image side and whose principal point is the image centre.
The ratio is the model's (`Preprocessing.focal_ratio`); on the 64 x 64 feature map
with the official ratio 1.5 that is
K = [[96, 0, 32], [0, 96, 32], [0, 0, 1]].
"""

from __future__ import annotations

import numpy as np
import torch


def intrinsics(size: float, focal_ratio: float) -> np.ndarray:
    """(3, 3) camera matrix for a square image of side `size`."""
    focal = size * focal_ratio
    return np.array([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])


def project_points(points: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
                   camera: np.ndarray) -> np.ndarray:
    """Project world points into the image.

    Args:
        points: (N, 3) or (B, N, 3) world points.
        rotation: (3, 3) or (B, 3, 3).
        translation: (3,) or (B, 3).
        camera: (3, 3) intrinsics.
    Returns:
        (N, 2) or (B, N, 2) pixel coordinates.
    """
    cam = points @ np.swapaxes(rotation, -1, -2) + np.expand_dims(translation, -2)
    pix = cam @ camera.T
    return pix[..., :2] / pix[..., 2:3]


def project_points_torch(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
                         camera: torch.Tensor, min_depth: float | None = None) -> torch.Tensor:
    """Torch twin of `project_points`: points (B, N, 3) or (N, 3), rotation (B, 3, 3),
    translation (B, 3), camera (3, 3) -> (B, N, 2). `min_depth` clamps the depth of
    points at or behind the camera (an untrained pose can put them there)."""
    cam = points @ rotation.transpose(-1, -2) + translation.unsqueeze(-2)
    pix = cam @ camera.transpose(-1, -2)
    depth = pix[..., 2:3] if min_depth is None else pix[..., 2:3].clamp(min=min_depth)
    return pix[..., :2] / depth
