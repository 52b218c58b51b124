"""Augmentation: one affine warp per sample into the 256 x 256 crop, then photometry.

The geometric part composes, in image pixels,

    crop(box shifted)  @  similarity(angle, scale, about the box centre)  @  flip(about the box centre)

into one 2 x 3 matrix and warps the image once with OpenCV (`AugmentConfig.interpolation`,
black outside), so the image is resampled a single time. `crop` is the inference crop
(`spiga.geometry.crop.crop_matrices` with the model's `Preprocessing`), and an
un-augmented sample is made by the inference crop itself (`crop_images`), so it is
exactly what inference sees. A flip also reorders the points
with the landmark set's `flip_order`, so point i stays "the subject's right eye corner".

Then, in the crop: a random occlusion rectangle over the face (points under it become
invisible; they stay annotated), colour jitter (brightness, contrast, saturation, hue)
and Gaussian blur.

Coordinates: image pixels with the origin at the top-left corner of the top-left pixel
(pixel (i, j) has its centre at (j + 0.5, i + 0.5)); OpenCV puts pixel centres at integers,
so matrices are shifted by half a pixel when handed to `cv2.warpAffine`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import SpigaError
from ..geometry import crop_images, crop_matrices, transform_points
from ..preprocess import Preprocessing


#: OpenCV's flag for each interpolation of the augmentation warp.
WARP_FLAGS = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation (defaults: the original SPIGA recipe).

    Attributes:
        flip_probability: chance of a horizontal flip.
        rotation: in-plane rotation, uniform in +-`rotation` degrees.
        scale: zoom factor 1 + uniform(-scale, scale).
        shift: box shift, uniform in +-`shift` times the box width / height.
        occlusion_probability: chance of an occlusion rectangle.
        occlusion_size: its sides, uniform in this range times the face's sides in the crop.
        brightness, contrast, saturation: factors 1 + uniform(-x, x).
        hue: hue shift, uniform in +-`hue` turns.
        blur_probability: chance of a Gaussian blur with a 3 x 3 or 5 x 5 kernel.
        interpolation: how the augmentation warp samples the image, "bilinear" or
            "nearest" (the plain crop is always the inference crop's, `Preprocessing`;
            docs/training.md gives the measured difference).
    """

    flip_probability: float = 0.5
    rotation: float = 45.0
    scale: float = 0.15
    shift: float = 0.05
    occlusion_probability: float = 1.0
    occlusion_size: tuple[float, float] = (0.1, 0.4)
    brightness: float = 0.5
    contrast: float = 0.3
    saturation: float = 0.5
    hue: float = 0.05
    blur_probability: float = 0.5
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        probabilities = (self.flip_probability, self.occlusion_probability, self.blur_probability)
        if not all(0.0 <= p <= 1.0 for p in probabilities):
            raise SpigaError("augmentation probabilities must lie in [0, 1]")
        if not 0.0 <= self.scale < 1.0 or self.rotation < 0 or self.shift < 0:
            raise SpigaError("augmentation ranges must be >= 0 (and scale < 1)")
        low, high = self.occlusion_size
        if not 0.0 < low <= high <= 1.0:
            raise SpigaError("occlusion_size must be 0 < low <= high <= 1")
        if not all(0.0 <= x < 1.0 for x in (self.brightness, self.contrast, self.saturation)):
            raise SpigaError("brightness, contrast and saturation must lie in [0, 1)")
        if self.interpolation not in WARP_FLAGS:
            raise SpigaError(f"augmentation interpolation {self.interpolation!r}: use one of {', '.join(WARP_FLAGS)}")


#: No augmentation at all (the geometric draw is the identity).
NO_AUGMENTATION = AugmentConfig(0.0, 0.0, 0.0, 0.0, 0.0, (0.1, 0.4), 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class GeometricDraw:
    """One draw of the geometric augmentation."""

    flip: bool = False
    angle: float = 0.0  # degrees
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # fractions of the box width, height


def draw_geometry(config: AugmentConfig, rng: np.random.Generator) -> GeometricDraw:
    return GeometricDraw(
        flip=bool(rng.random() < config.flip_probability),
        angle=float(rng.uniform(-config.rotation, config.rotation)),
        scale=float(1.0 + rng.uniform(-config.scale, config.scale)),
        shift=(float(rng.uniform(-config.shift, config.shift)),
               float(rng.uniform(-config.shift, config.shift))),
    )


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def augmentation_matrix(box: np.ndarray, draw: GeometricDraw, preprocessing: Preprocessing) -> np.ndarray:
    """(4,) face box (x, y, w, h) and a draw -> (2, 3) affine from image pixels to crop pixels."""
    x, y, w, h = np.asarray(box, dtype=np.float64)
    cx, cy = x + w / 2, y + h / 2
    flip = np.array([[-1.0, 0.0, 2 * cx], [0.0, 1.0, 0.0]]) if draw.flip else np.eye(2, 3)
    rad = math.radians(draw.angle)
    linear = draw.scale * np.array([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]])
    similarity = np.hstack([linear, (np.array([cx, cy]) - linear @ [cx, cy])[:, None]])
    shifted = np.array([x + draw.shift[0] * w, y + draw.shift[1] * h, w, h])
    crop = crop_matrices(shifted[None], preprocessing)[0]
    return (_homogeneous(crop) @ _homogeneous(similarity) @ _homogeneous(flip))[:2]


def to_opencv(matrix: np.ndarray) -> np.ndarray:
    """A (2, 3) affine in corner-origin pixel coordinates -> the same map for OpenCV,
    whose pixel centres sit at integer coordinates."""
    result = matrix.copy()
    result[:, 2] += matrix[:, :2] @ [0.5, 0.5] - 0.5
    return result


def warp_image(image: np.ndarray, matrix: np.ndarray, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Warp (H, W, C) `image` by the image->crop affine into (size, size, C), black outside."""
    return cv2.warpAffine(image, to_opencv(matrix), (size, size), flags=WARP_FLAGS[interpolation],
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@dataclass
class CropSample:
    """A sample in crop pixels.

    Attributes:
        image: (size, size, 3) float32 BGR in [0, 1].
        landmarks: (L, 2) float64 crop pixels (0 where not annotated).
        visible, annotated: (L,) bool, in the (possibly flipped) landmark order.
        matrix: (2, 3) affine from image pixels to crop pixels (flip included).
        flipped: whether the points were mirrored and reordered.
    """

    image: np.ndarray
    landmarks: np.ndarray
    visible: np.ndarray
    annotated: np.ndarray
    matrix: np.ndarray
    flipped: bool = False


def geometric_crop(image: np.ndarray, landmarks: np.ndarray, visible: np.ndarray,
                   annotated: np.ndarray, box: np.ndarray, draw: GeometricDraw | None,
                   flip_order: tuple[int, ...] | np.ndarray, preprocessing: Preprocessing,
                   interpolation: str = "bilinear") -> CropSample:
    """Warp image and points by one draw (None: the exact inference crop, `crop_images`).

    Args:
        image: (H, W, 3) float32.
        landmarks: (L, 2) image pixels (NaN where not annotated).
        flip_order: per point, the index of its mirror.
        interpolation: the warp's sampling when `draw` is given.
    """
    if draw is None:
        crops, matrices = crop_images(image, np.asarray(box)[None], preprocessing)
        crop, matrix = crops[0], matrices[0]
        flipped = False
    else:
        matrix = augmentation_matrix(box, draw, preprocessing)
        crop = warp_image(image, matrix, preprocessing.crop_size, interpolation)
        flipped = draw.flip
    points = transform_points(np.nan_to_num(landmarks)[None], matrix[None])[0]
    if flipped:
        order = np.asarray(flip_order)
        points, visible, annotated = points[order], visible[order], annotated[order]
    points = np.where(annotated[:, None], points, 0.0)
    return CropSample(crop, points, visible.copy(), annotated.copy(), matrix, flipped)


def face_region(box: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """(4,) the face box's bounding rectangle in the crop, clipped: x0, y0, x1, y1."""
    x, y, w, h = box
    corners = np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]])
    mapped = transform_points(corners[None], matrix[None])[0]
    low = np.clip(mapped.min(axis=0), 0, size)
    high = np.clip(mapped.max(axis=0), 0, size)
    return np.array([low[0], low[1], high[0], high[1]])


def occlude(crop: CropSample, region: np.ndarray, config: AugmentConfig,
            rng: np.random.Generator) -> None:
    """Paint a random rectangle of random colour inside `region` (x0, y0, x1, y1); points
    under it become invisible. In place."""
    if rng.random() >= config.occlusion_probability:
        return
    x0, y0, x1, y1 = region
    width = (x1 - x0) * rng.uniform(*config.occlusion_size)
    height = (y1 - y0) * rng.uniform(*config.occlusion_size)
    if width < 1 or height < 1:
        return
    left = x0 + rng.uniform(0, x1 - x0 - width)
    top = y0 + rng.uniform(0, y1 - y0 - height)
    cols = slice(int(round(left)), int(round(left + width)))
    rows = slice(int(round(top)), int(round(top + height)))
    crop.image[rows, cols] = rng.random(3).astype(np.float32)
    px, py = crop.landmarks[:, 0], crop.landmarks[:, 1]
    covered = (px >= cols.start) & (px < cols.stop) & (py >= rows.start) & (py < rows.stop)
    crop.visible &= ~covered


def jitter_colour(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 BGR in [0, 1] -> jittered copy, clipped to [0, 1]."""
    if config.saturation or config.hue:
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)  # float32: H in [0, 360), S, V in [0, 1]
        hsv[..., 0] = (hsv[..., 0] + 360.0 * rng.uniform(-config.hue, config.hue)) % 360.0
        hsv[..., 1] *= 1.0 + rng.uniform(-config.saturation, config.saturation)
        image = cv2.cvtColor(np.clip(hsv, 0, [360, 1, 1]).astype(np.float32), cv2.COLOR_HSV2BGR)
    brightness = 1.0 + rng.uniform(-config.brightness, config.brightness)
    contrast = 1.0 + rng.uniform(-config.contrast, config.contrast)
    mean = float(image.mean())
    image = (image - mean) * contrast + mean
    return np.clip(image * brightness, 0.0, 1.0).astype(np.float32)


def blur(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    if rng.random() >= config.blur_probability:
        return image
    kernel = int(rng.choice([3, 5]))
    return cv2.GaussianBlur(image, (kernel, kernel), 0)


def augment(image: np.ndarray, landmarks: np.ndarray, visible: np.ndarray, annotated: np.ndarray,
            box: np.ndarray, flip_order, config: AugmentConfig | None, rng: np.random.Generator,
            preprocessing: Preprocessing) -> CropSample:
    """The whole augmentation of one sample; `config` None gives the plain inference crop.

    Args:
        image: (H, W, 3) float32 BGR in [0, 1].
        landmarks: (L, 2) image pixels (NaN where not annotated).
        visible, annotated: (L,) bool.
        box: (4,) face box x, y, w, h.
    """
    if config is None:
        return geometric_crop(image, landmarks, visible, annotated, box, None, flip_order, preprocessing)
    draw = draw_geometry(config, rng)
    crop = geometric_crop(image, landmarks, visible, annotated, box, draw, flip_order, preprocessing,
                          config.interpolation)
    occlude(crop, face_region(box, crop.matrix, preprocessing.crop_size), config, rng)
    crop.image = blur(jitter_colour(crop.image, config, rng), config, rng)
    return crop
