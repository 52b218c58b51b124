"""Reading images into one array convention, parsing JSON with clear errors, and writing
files atomically.

`read_image` returns BGR uint8 (H, W, 3), whatever came in:
- a path (any format OpenCV or Pillow decodes; EXIF orientation is applied, so the
  array is upright as viewers show it);
- a NumPy array: (H, W) gray, (H, W, 3) colour in `color` order ("bgr" by default,
  like OpenCV; pass color="rgb" for RGB arrays), (H, W, 4) with alpha (dropped);
  uint8, uint16 (scaled by 1/257, i.e. full range to full range), or float in [0, 1];
- a PIL image of any mode;
- encoded bytes, through `read_image_bytes` (uploads: the HTTP server).
Images larger than `max_pixels` are refused before they are decoded (a small file
can declare huge dimensions: a decompression bomb), with `PixelLimitError`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps

from .errors import DatasetError, ImageError, PixelLimitError, SpigaError

#: Default pixel limit (about a 12000 x 8000 photo).
MAX_PIXELS = 100_000_000


def _check_pixels(width: int, height: int, max_pixels: int, source: str) -> None:
    if width * height > max_pixels:
        raise PixelLimitError(f"{source}: image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    if width < 1 or height < 1:
        raise ImageError(f"{source}: image has no pixels ({width}x{height})")


def parse_json(text: str, source: str, error: type[SpigaError] = DatasetError) -> Any:
    """`json.loads(text)`; anything that is not readable JSON raises `error` naming `source`
    (and the line), including nesting too deep for the parser and numbers too long to read."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source}, line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except (ValueError, RecursionError):
        raise error(f"{source}: JSON that cannot be read (too deeply nested, or a number too long)") from None


def is_file(path: Path) -> bool:
    """`path.is_file()`, False (not an exception) for a name the system cannot even look up
    (too long, invalid characters): paths written in annotation files can be anything."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _read_path(path: Path, max_pixels: int) -> np.ndarray:
    source = str(path)
    try:
        if path.is_dir():
            raise ImageError(f"{source}: is a directory, not an image")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{source}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"{source}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return _decode(data, source, max_pixels, require_header=False)


def _probe_size(data: bytes, source: str) -> tuple[int, int] | None:
    """(width, height) from the header alone (Pillow reads no pixel data here), or None
    when Pillow does not know the format."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return probe.width, probe.height
    except Image.DecompressionBombError:
        # Pillow's own guard (twice its MAX_IMAGE_PIXELS) fires before ours can read the size
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise PixelLimitError(f"{source}: image of more than {limit} pixels exceeds the limit (a decompression "
                              "bomb?); refused before decoding") from None
    except Exception:  # noqa: BLE001 - unknown or broken headers are judged by the decoder below
        return None


def _decode(data: bytes, source: str, max_pixels: int, require_header: bool) -> np.ndarray:
    """Encoded bytes -> BGR uint8, the pixel limit checked on the header before decoding.

    require_header: refuse formats whose dimensions Pillow cannot read from the header
        (for untrusted bytes: nothing is decoded before its size is known).
    """
    if not data:
        raise ImageError(f"{source}: empty file")
    size = _probe_size(data, source)
    if size is not None:
        _check_pixels(size[0], size[1], max_pixels, source)
    elif require_header:
        raise ImageError(f"{source}: not an image (no image header that Pillow recognises: JPEG, PNG, WebP, "
                         "BMP, TIFF, GIF, ...)")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if array is None:
        raise ImageError(f"{source}: not a readable image (unknown format, or a truncated/corrupt file)")
    _check_pixels(array.shape[1], array.shape[0], max_pixels, source)
    if _is_truncated(data):
        raise ImageError(f"{source}: image file is truncated")
    return to_bgr8(array, "bgr", source)


def read_image_bytes(data: bytes, source: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes (an upload) -> BGR uint8 (H, W, 3), EXIF orientation applied.

    The header must be one Pillow recognises (JPEG, PNG, WebP, BMP, TIFF, GIF, ...), so
    that the pixel limit is checked before any decoding; the file name or extension
    plays no part. Raises `ImageError` (`PixelLimitError` over the limit) naming `source`.
    """
    return _decode(bytes(data), source, max_pixels, require_header=True)


def _is_truncated(data: bytes) -> bool:
    """OpenCV decodes a truncated JPEG or PNG into a padded image without an error:
    check that the file ends with its format's end marker."""
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-64:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    return False


def to_bgr8(array: np.ndarray, color: str = "bgr", source: str = "<array>") -> np.ndarray:
    """Any supported array -> contiguous BGR uint8 (H, W, 3)."""
    if color not in ("bgr", "rgb"):
        raise ImageError(f"{source}: color must be 'bgr' or 'rgb', got {color!r}")
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{source}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{source}: image has no pixels (shape {array.shape})")
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.uint16:
        array = ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageError(f"{source}: float image has NaN or infinite values")
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    else:
        raise ImageError(f"{source}: unsupported pixel type {array.dtype} (use uint8, uint16 or float in [0, 1])")
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    if array.shape[2] == 4:
        array = array[:, :, :3]
    if color == "rgb":
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def read_image(image: Any, color: str = "bgr", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Path, array or PIL image -> BGR uint8 (H, W, 3). Raises `ImageError`."""
    if isinstance(image, (str, os.PathLike)):
        return _read_path(Path(image), max_pixels)
    if isinstance(image, Image.Image):
        _check_pixels(image.width, image.height, max_pixels, "<PIL image>")
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image).astype(np.uint16) if image.mode != "I" else np.asarray(image)
            if array.dtype != np.uint16:
                array = np.clip(array, 0, 65535).astype(np.uint16)
            return to_bgr8(array, "bgr", "<PIL image>")
        return to_bgr8(np.asarray(image.convert("RGB")), "rgb", "<PIL image>")
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            _check_pixels(image.shape[1], image.shape[0], max_pixels, "<array>")
        return to_bgr8(image, color)
    raise ImageError(f"unsupported image type {type(image).__name__}: pass a path, a NumPy array or a PIL image")


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename,
    so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w" if isinstance(data, str) else "wb"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_image(path: str | os.PathLike, image_bgr: np.ndarray) -> None:
    """Encode by extension (.png, .jpg, ...) and write atomically."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", image_bgr)
    if not ok:
        raise ImageError(f"{path}: cannot encode an image with extension {path.suffix!r}")
    write_atomic(path, encoded.tobytes())
