"""What alignment returns: `Face` and `HeadPose`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry.crop import invert_affine, transform_points
from .geometry.rotations import euler_to_rotation
from .preprocess import OFFICIAL_CROP_SIZE, OFFICIAL_FOCAL_RATIO

#: The head-pose fields, in order: their one definition (records, CSV columns, the server's
#: schema and the prediction readers take the names from here).
POSE_FIELDS = ("yaw", "pitch", "roll", "tx", "ty", "tz")


@dataclass(frozen=True)
class HeadPose:
    """Head pose in SPIGA's convention.

    yaw, pitch, roll: degrees (see `spiga.geometry.rotations` for the signs).
    tx, ty, tz: translation of the mean face in the crop camera, in mean-face units
    (the camera has focal length `focal_ratio` x crop side and looks at the crop
    centre); `Face.head_position()` turns it into image pixels.
    """

    yaw: float
    pitch: float
    roll: float
    tx: float
    ty: float
    tz: float

    def as_array(self) -> np.ndarray:
        return np.array([self.yaw, self.pitch, self.roll, self.tx, self.ty, self.tz])

    def rotation_matrix(self) -> np.ndarray:
        """(3, 3) rotation from SPIGA's world frame to the camera frame."""
        return euler_to_rotation(np.array([self.yaw, self.pitch, self.roll]))

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in POSE_FIELDS}


@dataclass
class Face:
    """One aligned face.

    box: (x, y, w, h) face box in image pixels, as given or detected.
    landmarks: (L, 2) float64 image pixels (x right, y down, origin at the image's
        top-left corner).
    headpose: `HeadPose`.
    score: detector confidence, or None when the box was given.
    crop_matrix: (2, 3) affine from image pixels to the model's crop pixels.
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    headpose: HeadPose
    score: float | None = None
    crop_matrix: np.ndarray | None = field(default=None, repr=False)
    crop_size: int = OFFICIAL_CROP_SIZE  # the model's `Preprocessing` (the aligner fills both in)
    focal_ratio: float = OFFICIAL_FOCAL_RATIO
    id: int | None = None

    def head_position(self) -> tuple[float, float, float]:
        """Image position (x, y) of the mean face's origin and the image scale there
        (pixels per mean-face unit), from the pose's translation."""
        if self.crop_matrix is None:
            raise ValueError("face has no crop matrix")
        focal = self.focal_ratio * self.crop_size
        centre = self.crop_size / 2
        crop_xy = np.array([[[focal * self.headpose.tx / self.headpose.tz + centre,
                              focal * self.headpose.ty / self.headpose.tz + centre]]])
        image_xy = transform_points(crop_xy, invert_affine(self.crop_matrix[None]))[0, 0]
        pixels_per_crop_pixel = 1.0 / self.crop_matrix[0, 0]
        return float(image_xy[0]), float(image_xy[1]), float(focal / self.headpose.tz * pixels_per_crop_pixel)

    def to_dict(self) -> dict:
        out = {
            "box": [float(v) for v in self.box],
            "landmarks": [[float(x), float(y)] for x, y in self.landmarks],
            "headpose": self.headpose.to_dict(),
        }
        if self.score is not None:
            out["score"] = float(self.score)
        if self.id is not None:
            out["id"] = int(self.id)
        return out
