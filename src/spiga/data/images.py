"""Training images: any depth, gray or colour -> float32 BGR in [0, 1].

8-bit images are divided by 255, so training sees the scale the original SPIGA saw
(BGR in [0, 1]). Deeper images (16-bit radiometric thermal PNG/TIFF, 32-bit float TIFF)
have no fixed white, so a `DepthScaling` rule (`spiga.io.images`, shared with inference)
maps them to [0, 1]:

- `percentile` (default, low 1, high 99): per image, the `low`-th percentile maps to 0
  and the `high`-th to 1, clipped. Robust to hot or dead pixels; each image uses its full
  range, as an 8-bit thermal export would.
- `range`: fixed raw values `low` -> 0 and `high` -> 1, clipped (keeps absolute
  temperature: e.g. a camera writing centi-kelvin, `range:29315:31315` for 20..40 C).
- `full`: divide by the type's maximum (65535 for 16-bit; floats are used as they are).

Gray images are repeated into three channels; an alpha channel is dropped. Files are
decoded by `spiga.io.read_image_array`, the inference path's reader: format from the
header, the pixel limit (`spiga.io.MAX_PIXELS`) checked before decoding, EXIF
orientation applied, truncated files refused.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import ImageError
from ..io.images import MAX_PIXELS, DepthScaling, read_image_array

DEFAULT_SCALING = DepthScaling()


def read_image_float(path: str | os.PathLike, scaling: DepthScaling = DEFAULT_SCALING,
                     max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file for training.

    Returns:
        (H, W, 3) float32 BGR in [0, 1].
    Raises:
        ImageError: naming the file, when it is missing or cannot be decoded.
    """
    return to_float_bgr(read_image_array(path, max_pixels), scaling)


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
