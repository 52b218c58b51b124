"""Pure geometry: rotations and Euler angles, the crop camera, projection, crops.

Conventions (used everywhere in spiga):
- image pixels, x right, y down, origin at the top-left corner of the top-left pixel,
  so the centre of pixel (i, j) is at (j + 0.5, i + 0.5);
- boxes are (x, y, w, h) floats;
- head pose is (yaw, pitch, roll) in degrees in SPIGA's convention (see `rotations`).
"""

from .boxes import box_iou, corner_iou, to_corners
from .camera import intrinsics, project_points, project_points_torch
from .crop import crop_boxes, crop_images, crop_matrices, invert_affine, transform_points
from .rotations import (
    euler_to_rotation,
    euler_to_rotation_torch,
    rotation_to_euler,
)

__all__ = [
    "box_iou", "corner_iou", "to_corners",
    "intrinsics", "project_points", "project_points_torch",
    "crop_boxes", "crop_images", "crop_matrices", "invert_affine", "transform_points",
    "euler_to_rotation", "euler_to_rotation_torch", "rotation_to_euler",
]
