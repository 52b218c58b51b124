"""Head-pose angles <-> rotation matrices, in SPIGA's convention.

SPIGA's pose head outputs (yaw, pitch, roll) in degrees. They act on the mean face
(world frame [z, -x, -y] of the face frame) through

    yaw' = -(yaw - 90),  pitch' = -pitch,  roll' = -(roll + 90)
    R = Ry(yaw') @ Rz(pitch') @ Rx(roll')

with Ry, Rz, Rx the right-handed rotations about the world y, z and x axes. The
camera looks along +z, x right, y down. At (0, 0, 0) the face looks straight at the
camera and the mean face's origin (the nose tip) projects to the crop centre when
tx = ty = 0. Seen in the image: positive yaw turns the face towards the image's
right (the subject turns to their left), positive pitch raises the chin (the
subject looks up), positive roll tilts the top of the head towards the image's
right (clockwise on screen). `tests/test_geometry.py` checks these signs.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _offset_radians(angles: np.ndarray) -> np.ndarray:
    yaw, pitch, roll = angles[..., 0], angles[..., 1], angles[..., 2]
    return np.stack([-(yaw - 90.0), -pitch, -(roll + 90.0)], axis=-1) * (math.pi / 180.0)


def euler_to_rotation(angles: np.ndarray) -> np.ndarray:
    """(..., 3) yaw, pitch, roll in degrees -> (..., 3, 3) rotation matrices."""
    rad = _offset_radians(np.asarray(angles, dtype=np.float64))
    c, s = np.cos(rad), np.sin(rad)
    ry = _matrix_y(c[..., 0], s[..., 0])
    rz = _matrix_z(c[..., 1], s[..., 1])
    rx = _matrix_x(c[..., 2], s[..., 2])
    return ry @ rz @ rx


def _matrix_y(c, s):
    o, z = np.ones_like(c), np.zeros_like(c)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _matrix_z(c, s):
    o, z = np.ones_like(c), np.zeros_like(c)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _matrix_x(c, s):
    o, z = np.ones_like(c), np.zeros_like(c)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def euler_to_rotation_torch(angles: torch.Tensor) -> torch.Tensor:
    """Torch twin of `euler_to_rotation`: (B, 3) degrees -> (B, 3, 3); differentiable."""
    offset = torch.tensor([90.0, 0.0, -90.0], dtype=angles.dtype, device=angles.device)
    rad = (offset - angles) * (math.pi / 180.0)
    c, s = torch.cos(rad), torch.sin(rad)
    cy, cp, cr = c.unbind(-1)
    sy, sp, sr = s.unbind(-1)
    o, z = torch.ones_like(cy), torch.zeros_like(cy)
    ry = torch.stack([cy, z, sy, z, o, z, -sy, z, cy], -1).unflatten(-1, (3, 3))
    rz = torch.stack([cp, -sp, z, sp, cp, z, z, z, o], -1).unflatten(-1, (3, 3))
    rx = torch.stack([o, z, z, z, cr, -sr, z, sr, cr], -1).unflatten(-1, (3, 3))
    return ry @ rz @ rx


def rotation_to_euler(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (yaw, pitch, roll) degrees, inverse of `euler_to_rotation`.

    Angles are wrapped to (-180, 180]. At the gimbal singularity (pitch = +-90) roll
    is set to 0 and yaw takes the whole rotation about the vertical.
    """
    r = np.asarray(rotation, dtype=np.float64)
    sin_pitch = np.clip(r[1, 0], -1.0, 1.0)
    if abs(abs(sin_pitch) - 1.0) <= np.finfo(float).eps:
        yaw_p = math.atan2(r[0, 2], r[2, 2])
        pitch_p = math.copysign(math.pi / 2, sin_pitch)
        roll_p = 0.0
    else:
        yaw_p = math.atan2(-r[2, 0], r[0, 0])
        pitch_p = math.asin(sin_pitch)
        roll_p = math.atan2(-r[1, 2], r[1, 1])
    yaw_p, pitch_p, roll_p = (math.degrees(a) for a in (yaw_p, pitch_p, roll_p))
    angles = np.array([90.0 - yaw_p, -pitch_p, -roll_p - 90.0])
    wrapped = (angles + 180.0) % 360.0 - 180.0
    wrapped[wrapped == -180.0] = 180.0
    return wrapped
