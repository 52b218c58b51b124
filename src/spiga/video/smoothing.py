"""Temporal smoothing: the One Euro filter (Casiez, Roussel and Vogel, CHI 2012).

A first-order low-pass filter whose cutoff frequency rises with the signal's speed:
slow movements (jitter around a still face) are smoothed hard, fast ones pass with
little lag. For each new sample x at time t (seconds), with dt since the last one:

    alpha(fc) = 1 / (1 + 1 / (2 pi fc dt))
    dx        = (x - x_prev_filtered) / dt, low-passed with cutoff d_cutoff -> dx_hat
    fc        = min_cutoff + beta * |dx_hat| / scale
    x_hat     = x_prev_filtered + alpha(fc) (x - x_prev_filtered)

Parameters (`OneEuroParams`):
- `min_cutoff` (Hz): the cutoff when still. Lower: less jitter, more lag at low speed.
- `beta` (1 / units of `scale`): how fast the cutoff rises with speed. Higher: less lag
  when moving, more jitter passes while moving.
- `d_cutoff` (Hz): cutoff of the speed estimate itself (1 Hz as in the paper).
`scale` makes `beta` independent of image size: landmarks are filtered with the face's
size as scale, so their speed is in face sizes per second.

`FaceSmoother` filters one tracked face: landmarks (pixels, speed in face heights per
second), head angles (degrees, speed in degrees per second), and the head's image
position and scale, from which the pose translation is rebuilt for the face's current
crop (the crop moves with the box, so raw tx, ty, tz of two frames are not comparable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..face import Face, HeadPose


@dataclass(frozen=True)
class OneEuroParams:
    """min_cutoff (Hz), beta (per unit of speed / scale), d_cutoff (Hz)."""

    min_cutoff: float = 1.0
    beta: float = 0.0
    d_cutoff: float = 1.0

    def __post_init__(self) -> None:
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0:
            raise ValueError(f"One Euro parameters need min_cutoff > 0, d_cutoff > 0, beta >= 0; got {self}")


def smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """The exponential smoothing weight of a new sample for a cutoff (Hz) and a step dt (s)."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One Euro filter over arrays of any fixed shape (each element filtered on its own).

    Args:
        params: `OneEuroParams`.
    Call it with (x, t[, scale]) for each sample in time order; the first sample passes
    unchanged. Samples with a time not after the previous one are returned unfiltered
    (and reset nothing).
    """

    def __init__(self, params: OneEuroParams = OneEuroParams()) -> None:
        self.params = params
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    def __call__(self, x: np.ndarray, t: float, scale: float | np.ndarray = 1.0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t)
            return x.copy()
        if x.shape != self._x.shape:
            raise ValueError(f"One Euro filter: sample shape {x.shape} differs from the first's {self._x.shape}")
        dt = float(t) - self._t
        if dt <= 0:
            return x.copy()
        p = self.params
        speed = (x - self._x) / dt
        self._dx = self._dx + smoothing_factor(p.d_cutoff, dt) * (speed - self._dx)
        cutoff = p.min_cutoff + p.beta * np.abs(self._dx) / scale
        self._x = self._x + smoothing_factor(cutoff, dt) * (x - self._x)
        self._t = float(t)
        return self._x.copy()


@dataclass(frozen=True)
class SmoothingConfig:
    """One Euro parameters for landmarks (speed in face heights / s) and head pose
    (angles: degrees / s; head position: face heights / s).

    The defaults were chosen with `speed/video_jitter.py --sweep` (docs/images-and-video.md):
    min_cutoff 0.5 Hz keeps a still face steady, beta 5 raises the cutoff to 1.75 Hz for a
    face moving a quarter of its height per second (angles: beta 0.1, 2.9 Hz at 24 deg/s);
    against min_cutoff 1, beta 1 it gave less jitter and less lag.
    """

    landmarks: OneEuroParams = field(default_factory=lambda: OneEuroParams(0.5, 5.0, 1.0))
    angles: OneEuroParams = field(default_factory=lambda: OneEuroParams(0.5, 0.1, 1.0))
    position: OneEuroParams = field(default_factory=lambda: OneEuroParams(0.5, 5.0, 1.0))

    @classmethod
    def uniform(cls, min_cutoff: float = 0.5, beta: float = 5.0, d_cutoff: float = 1.0) -> "SmoothingConfig":
        """One set of parameters for all signals; angles get beta / 50 (degrees vs face heights)."""
        return cls(landmarks=OneEuroParams(min_cutoff, beta, d_cutoff),
                   angles=OneEuroParams(min_cutoff, beta / 50, d_cutoff),
                   position=OneEuroParams(min_cutoff, beta, d_cutoff))


def _translation_for_crop(face: Face, x: float, y: float, pixels_per_unit: float) -> tuple[float, float, float]:
    """Inverse of `Face.head_position`: the (tx, ty, tz) that put the head's origin at
    image (x, y) with `pixels_per_unit` image pixels per mean-face unit, in the face's crop."""
    matrix = face.crop_matrix
    scale = matrix[0, 0]
    focal = face.focal_ratio * face.crop_size
    centre = face.crop_size / 2
    tz = focal / (pixels_per_unit * scale)
    crop_x = scale * x + matrix[0, 2]
    crop_y = matrix[1, 1] * y + matrix[1, 2]
    return (crop_x - centre) * tz / focal, (crop_y - centre) * tz / focal, tz


class FaceSmoother:
    """Smooths one tracked face over time (see the module docstring)."""

    def __init__(self, config: SmoothingConfig = SmoothingConfig()) -> None:
        self.landmarks = OneEuroFilter(config.landmarks)
        self.angles = OneEuroFilter(config.angles)
        self.position = OneEuroFilter(config.position)

    def __call__(self, face: Face, t: float) -> Face:
        """A copy of `face` with smoothed landmarks and head pose (box and score unchanged)."""
        size = max(float(face.box[3]), 1e-6)
        landmarks = self.landmarks(face.landmarks, t, scale=size)
        pose = face.headpose
        angles = self.angles(np.array([pose.yaw, pose.pitch, pose.roll]), t)
        if face.crop_matrix is None or pose.tz <= 0:
            return replace(face, landmarks=landmarks, headpose=HeadPose(*angles, pose.tx, pose.ty, pose.tz))
        x, y, pixels_per_unit = face.head_position()
        x, y, pixels_per_unit = self.position(np.array([x, y, pixels_per_unit]), t, scale=size)
        tx, ty, tz = _translation_for_crop(face, x, y, pixels_per_unit)
        return replace(face, landmarks=landmarks, headpose=HeadPose(*map(float, angles), tx, ty, tz))
