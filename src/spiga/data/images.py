"""Training images: any depth, gray or colour -> float32 BGR in [0, 1].

8-bit images are divided by 255, so training sees the scale the original SPIGA saw
(BGR in [0, 1]). Deeper images (16-bit radiometric thermal PNG/TIFF, 32-bit float TIFF)
have no fixed white, so a `DepthScaling` rule maps them to [0, 1]:

- `percentile` (default, low 1, high 99): per image, the `low`-th percentile maps to 0
  and the `high`-th to 1, clipped. Robust to hot or dead pixels; each image uses its full
  range, as an 8-bit thermal export would.
- `range`: fixed raw values `low` -> 0 and `high` -> 1, clipped (keeps absolute
  temperature: e.g. a camera writing centi-kelvin, `range:29315:31315` for 20..40 C).
- `full`: divide by the type's maximum (65535 for 16-bit; floats are used as they are).

Gray images are repeated into three channels; an alpha channel is dropped. EXIF
orientation is applied (as OpenCV's default reader and the inference path do).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError, SpigaError

_MODES = ("percentile", "range", "full")


@dataclass(frozen=True)
class DepthScaling:
    """How images deeper than 8 bits map to [0, 1]; see the module docstring."""

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.0

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise SpigaError(f"depth scaling mode {self.mode!r}: use one of {', '.join(_MODES)}")
        if self.mode != "full" and not self.low < self.high:
            raise SpigaError(f"depth scaling {self.mode}: low ({self.low}) must be below high ({self.high})")
        if self.mode == "percentile" and not (0 <= self.low and self.high <= 100):
            raise SpigaError("depth scaling percentiles must lie in 0..100")

    @classmethod
    def parse(cls, text: str) -> "DepthScaling":
        """`percentile[:LOW:HIGH]`, `range:LOW:HIGH` or `full`."""
        mode, *values = text.split(":")
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            raise SpigaError(f"depth scaling {text!r}: LOW and HIGH must be numbers") from None
        if mode == "full" and not numbers:
            return cls("full")
        if mode == "percentile" and not numbers:
            return cls("percentile")
        if len(numbers) != 2:
            raise SpigaError(f"depth scaling {text!r}: expected percentile[:LOW:HIGH], "
                             "range:LOW:HIGH or full")
        return cls(mode, numbers[0], numbers[1])

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W[, C]) image of a deep type -> float32 in [0, 1]."""
        values = image.astype(np.float32)
        if self.mode == "full":
            top = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
            return np.clip(values / top, 0.0, 1.0)
        if self.mode == "percentile":
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                return np.zeros_like(values)
            low, high = np.percentile(finite, [self.low, self.high])
        else:
            low, high = self.low, self.high
        low, span = float(low), max(float(high - low), 1e-12)  # Python floats: the result stays float32
        return np.clip((np.nan_to_num(values, nan=low) - low) / span, 0.0, 1.0).astype(np.float32, copy=False)


DEFAULT_SCALING = DepthScaling()


def read_image_float(path: str | os.PathLike, scaling: DepthScaling = DEFAULT_SCALING) -> np.ndarray:
    """Read an image file for training.

    Returns:
        (H, W, 3) float32 BGR in [0, 1].
    Raises:
        ImageError: naming the file, when it is missing or cannot be decoded.
    """
    path = Path(path)
    try:
        encoded = np.fromfile(path, dtype=np.uint8)  # unlike cv2.imread, handles any path
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    image = cv2.imdecode(encoded, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if encoded.size else None
    if image is None or image.size == 0:
        raise ImageError(f"{path}: not a readable image (corrupt, truncated or unknown format)")
    return to_float_bgr(image, scaling)


def to_float_bgr(image: np.ndarray, scaling: DepthScaling = DEFAULT_SCALING) -> np.ndarray:
    """(H, W), (H, W, 1|3|4) array of any depth -> (H, W, 3) float32 BGR in [0, 1]."""
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.dtype == np.uint8:
        result = image.astype(np.float32) * np.float32(1 / 255)
    else:
        result = scaling.apply(image)
    if result.ndim == 2:
        result = result[..., None]
    if result.shape[2] == 1:
        result = np.repeat(result, 3, axis=2)
    if result.ndim != 3 or result.shape[2] != 3:
        raise ImageError(f"unsupported image shape {image.shape}")
    return np.ascontiguousarray(result)
