"""Reading images into one array convention, and writing them.

`read_image` returns BGR uint8 (H, W, 3), whatever came in:
- a path (JPEG, PNG, WebP, TIFF, BMP, PNM, JPEG 2000, GIF, AVIF, and HEIC/HEIF with
  the `heif` extra; EXIF orientation is applied, so the array is upright as viewers
  show it);
- a NumPy array: (H, W) gray, (H, W, 3) colour in `color` order ("bgr" by default,
  like OpenCV; pass color="rgb" for RGB arrays), (H, W, 4) with alpha (dropped);
  uint8, uint16 (scaled by 1/257, i.e. full range to full range), or float in [0, 1];
- a PIL image of any mode;
- encoded bytes, through `read_image_bytes` (uploads: the HTTP server).

Every encoded image goes the same way, whether it comes from a path or an upload:
Pillow reads the header (the format is found from the bytes, never from the name),
the pixel limit is checked on the declared size (a small file can declare huge
dimensions: a decompression bomb, refused with `PixelLimitError`), and only then is
the image decoded: by OpenCV for the formats it decodes (16-bit data kept), by Pillow
for the others. Formats whose header Pillow cannot read are refused, so nothing is
decoded before its size is known. A truncated file is refused; whether it is truncated
is the decoder's judgement, so bytes after the end of the image (a phone's Motion
Photo: a JPEG with a video appended) are accepted. A JPEG whose entropy-coded data is
damaged (libjpeg warns of a premature end or corrupt data, and pads the rest with gray)
is refused too, unless the caller passes `allow_damaged=True`.
"""

from __future__ import annotations

import importlib.util
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from ..about import install_hint
from ..errors import ImageError, OutputError, PixelLimitError, SpigaError
from .files import write_output

#: The `heif` extra (HEIC/HEIF photos from iPhones and many Android phones, through libheif)
#: is installed. Its opener is registered with Pillow at the first file that may need it:
#: importing it costs a tenth of a second of every start.
HEIF_SUPPORT = importlib.util.find_spec("pillow_heif") is not None
_heif_registered = False


def _register_heif_opener() -> None:
    global _heif_registered
    if HEIF_SUPPORT and not _heif_registered:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        _heif_registered = True

#: Default pixel limit (about a 12000 x 8000 photo).
MAX_PIXELS = 100_000_000

#: Formats (Pillow's names) decoded by OpenCV: its signature checks are the same magic
#: bytes Pillow recognised, so both read the same header.
OPENCV_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "PPM", "JPEG2000"})
#: Formats decoded by Pillow (OpenCV decodes them not at all, or not in every build).
PILLOW_FORMATS = frozenset({"GIF", "AVIF", "HEIF"})


_MODES = ("percentile", "range", "full")


@dataclass(frozen=True)
class DepthScaling:
    """How images deeper than 8 bits (16-bit radiometric thermal, float TIFF) map to [0, 1].

    - `percentile[:LOW:HIGH]` (default 1, 99): per image, the LOW-th percentile maps to 0
      and the HIGH-th to 1, clipped (robust to hot or dead pixels; each image uses its full
      range, as an 8-bit thermal export would);
    - `range:LOW:HIGH`: fixed raw values LOW -> 0 and HIGH -> 1, clipped (keeps absolute
      temperature: e.g. centi-kelvin `range:29315:31315` for 20..40 C);
    - `full`: divide by the type's maximum (65535 for 16-bit; floats used as they are).

    Training uses one rule (`spiga train --depth-scaling`, default percentile) and records
    it in the checkpoint; inference applies the checkpoint's rule to deep images, so the
    network sees what it was trained on.
    """

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
        """`percentile[:LOW:HIGH]`, `range:LOW:HIGH` or `full` (what `text()` writes)."""
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

    def text(self) -> str:
        """The rule as `parse` reads it."""
        return "full" if self.mode == "full" else f"{self.mode}:{self.low:g}:{self.high:g}"

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


def _check_pixels(width: int, height: int, max_pixels: int, source: str) -> None:
    if width * height > max_pixels:
        raise PixelLimitError(f"{source}: image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    if width < 1 or height < 1:
        raise ImageError(f"{source}: image has no pixels ({width}x{height})")


def _read_path(path: Path, max_pixels: int, depth_scaling: "DepthScaling | None" = None,
               allow_damaged: bool = False, raw: bool = False) -> np.ndarray:
    source = str(path)
    try:
        if path.is_dir():
            raise ImageError(f"{source}: is a directory, not an image")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{source}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"{source}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return _decode(data, source, max_pixels, depth_scaling, allow_damaged=allow_damaged, raw=raw)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _open_header(data: bytes, source: str) -> Image.Image:
    """A lazily loaded PIL image: the header is read (format and size), no pixel data."""
    if data[4:8] == b"ftyp":  # an ISO media file: HEIF, AVIF, or a video container
        _register_heif_opener()
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        # Pillow's own guard (twice its MAX_IMAGE_PIXELS) fires before ours can read the size
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise PixelLimitError(f"{source}: image of more than {limit} pixels exceeds the limit (a decompression "
                              "bomb?); refused before decoding") from None
    except Exception:  # noqa: BLE001 - Pillow raises many types on broken headers; all mean the same here
        heif = "" if HEIF_SUPPORT else f"; HEIC/HEIF needs the heif extra: {install_hint('heif')}"
        raise ImageError(f"{source}: not a readable image (no image header that Pillow recognises: JPEG, PNG, "
                         f"WebP, TIFF, BMP, GIF, AVIF, ...{heif}; or a file truncated within its header)") from None


def _check_jpeg_complete(image: Image.Image, source: str) -> None:
    """Let libjpeg (through Pillow) judge whether the entropy-coded data is all there; in
    draft mode (1/8 scale) every byte is still decoded but the inverse DCT is cheap. Only
    for the JPEGs simplejpeg cannot decode at all (Pillow pads data cut short by a marker)."""
    image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - "image file is truncated", broken markers, ...
        raise ImageError(f"{source}: image file is truncated or corrupt ({_first_line(exc)})") from None


#: `_jpeg_damage`'s answer for a JPEG that libjpeg-turbo (simplejpeg) cannot decode at all.
_UNJUDGED = "unjudged"


def _jpeg_damage(data: bytes) -> str | None:
    """libjpeg's warning about a JPEG's data ("Premature end of JPEG file", "Corrupt JPEG
    data: ..."), None for a sound file, `_UNJUDGED` where libjpeg-turbo cannot decode it.
    Decoded at 1/8 scale (simplejpeg, libjpeg-turbo stopping on warnings): every byte of
    the entropy-coded data is still read, but the inverse DCT is cheap (about a fifth of a
    full decode). Bytes after the end-of-image marker are not read."""
    try:
        simplejpeg.decode_jpeg(data, strict=True, min_height=1, min_width=1)
        return None
    except ValueError as exc:
        warning = _first_line(exc)
    try:
        simplejpeg.decode_jpeg(data, strict=False, min_height=1, min_width=1)
    except ValueError:
        return _UNJUDGED
    return warning


def _decode_jpeg(data: bytes, image: Image.Image, source: str, allow_damaged: bool) -> np.ndarray | None:
    """A JPEG through OpenCV, its data judged by libjpeg first: damaged data is refused
    unless `allow_damaged`, which also takes a file cut short (the missing part gray)."""
    damage = _jpeg_damage(data)
    if damage == _UNJUDGED and not allow_damaged:
        _check_jpeg_complete(image, source)
    elif damage and damage != _UNJUDGED and not allow_damaged:
        raise ImageError(f"{source}: damaged or truncated JPEG data ({damage.rstrip('.')}); to use what decodes, pass "
                         "--allow-damaged (library: allow_damaged=True)")
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if array is None and allow_damaged and damage:  # cut short without an end marker: give it one
        array = cv2.imdecode(np.frombuffer(data + b"\xff\xd9", np.uint8), flags)
    return array


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png_chunks(data: bytes, source: str) -> None:
    """Refuse a PNG whose chunk lengths do not fit in the file, before OpenCV sees it.

    OpenCV 4.14 allocates a chunk's declared length before reading it: a 79-byte file
    declaring a 2.9 GB IDAT chunk took 3 GB of memory (found by fuzzing). Only the
    12-byte chunk frames are read, up to IEND (bytes after it are not the image's); a
    file without IEND is left to the decoder's judgement."""
    position, end = len(_PNG_SIGNATURE), len(data)
    while position + 8 <= end:
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        if length > 0x7FFF_FFFF or position + 12 + length > end:  # the spec caps lengths at 2^31 - 1
            raise ImageError(f"{source}: not a readable image (a PNG file that is truncated or corrupt: its "
                             f"{kind.decode('latin-1')!r} chunk declares {length} bytes, more than the file holds)")
        position += 12 + length
        if kind == b"IEND":
            return


def open_image_header(data: bytes, source: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The decoder's probe: a lazily loaded PIL image of encoded bytes, its header read
    (format and size) and the pixel limit checked on it, no pixel data decoded.

    Every decode starts here (`read_image_bytes`, `read_image` on a path); the server
    calls it on its worker threads to learn an upload's size before decoding it, and may
    hand the result to `read_image_bytes(..., header=...)` so that the header is read
    once. Close it (a `with` block) when done. Raises `ImageError` / `PixelLimitError`.
    """
    if not data:
        raise ImageError(f"{source}: empty file")
    image = _open_header(data, source)
    try:
        _check_pixels(image.width, image.height, max_pixels, source)
    except SpigaError:
        image.close()
        raise
    return image


def _decode(data: bytes, source: str, max_pixels: int, depth_scaling: "DepthScaling | None" = None,
            header: Image.Image | None = None, allow_damaged: bool = False, raw: bool = False) -> np.ndarray:
    """Encoded bytes -> BGR uint8 (H, W, 3), the pixel limit checked on the header first
    (`header`: what `open_image_header` returned for these bytes, if it was called);
    `raw`: the decoded array as stored instead (see `read_image_array`)."""
    with header if header is not None else open_image_header(data, source, max_pixels) as image:
        fmt = image.format
        if fmt in OPENCV_FORMATS:
            if fmt in ("JPEG", "MPO"):
                array = _decode_jpeg(data, image, source, allow_damaged)
            else:
                if fmt == "PNG":  # Pillow recognised the signature
                    _check_png_chunks(data, source)
                array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
            if array is None:
                raise ImageError(f"{source}: not a readable image (a {fmt} file that is truncated or corrupt)")
            _check_pixels(array.shape[1], array.shape[0], max_pixels, source)  # OpenCV read the header again
            return array if raw else to_bgr8(array, "bgr", source, depth_scaling)
        if fmt in PILLOW_FORMATS:
            try:
                image.load()
            except Exception as exc:  # noqa: BLE001 - decoders raise OSError, ValueError, SyntaxError, ...
                raise ImageError(f"{source}: not a readable image (a {fmt} file that is truncated or corrupt: "
                                 f"{_first_line(exc)})") from None
            return _pil_array(image) if raw else _from_pil(image, source)
    accepted = ", ".join(sorted(OPENCV_FORMATS | PILLOW_FORMATS))
    raise ImageError(f"{source}: {fmt} images are not accepted (accepted: {accepted})")


def read_image_bytes(data: bytes, source: str = "<bytes>", max_pixels: int = MAX_PIXELS,
                     depth_scaling: "DepthScaling | None" = None, header: Image.Image | None = None,
                     allow_damaged: bool = False) -> np.ndarray:
    """Encoded image bytes (an upload) -> BGR uint8 (H, W, 3), EXIF orientation applied.

    The format is found from the header (the file name or extension plays no part) and
    the pixel limit is checked on it before any decoding. Raises `ImageError`
    (`PixelLimitError` over the limit) naming `source`; also for a JPEG whose data is
    damaged, unless `allow_damaged` (then the damaged part comes out gray). `header`: the
    result of `open_image_header(data, ...)` when the caller probed the bytes first (it is
    then not read again; it is closed here).
    """
    return _decode(bytes(data), source, max_pixels, depth_scaling, header, allow_damaged)


def to_bgr8(array: np.ndarray, color: str = "bgr", source: str = "<array>",
            depth_scaling: "DepthScaling | None" = None) -> np.ndarray:
    """Any supported array -> contiguous BGR uint8 (H, W, 3).

    uint16 is scaled by 1/257 (full range to full range) and float read as [0, 1], unless
    `depth_scaling` gives the rule for images deeper than 8 bits (a model trained on
    16-bit images carries the rule it was trained with).
    """
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
    elif depth_scaling is not None and (array.dtype == np.uint16 or np.issubdtype(array.dtype, np.floating)):
        if np.issubdtype(array.dtype, np.floating) and not np.any(np.isfinite(array)):
            raise ImageError(f"{source}: float image has no finite values")
        array = np.clip(np.rint(depth_scaling.apply(array) * 255.0), 0, 255).astype(np.uint8)
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


def _pil_array(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> (H, W) uint16 for 16-bit gray, else (H, W, 3) BGR uint8;
    EXIF orientation applied."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image).astype(np.uint16) if image.mode != "I" else np.asarray(image)
        if array.dtype != np.uint16:
            array = np.clip(array, 0, 65535).astype(np.uint16)
        return array
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def _from_pil(image: Image.Image, source: str) -> np.ndarray:
    """A PIL image of any mode -> BGR uint8, EXIF orientation applied (16-bit gray scaled)."""
    return to_bgr8(_pil_array(image), "bgr", source)


def read_image_array(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file decoded as stored: (H, W) gray or (H, W, 3|4) BGR(A), of its own depth
    (uint8, uint16, float32), EXIF orientation applied. The same reader as `read_image`
    (format from the header, pixel limit checked before decoding, truncated files refused),
    without the conversion to 8 bits: training scales deep images itself. Raises `ImageError`."""
    return _read_path(Path(path), max_pixels, raw=True)


def read_image(image: Any, color: str = "bgr", max_pixels: int = MAX_PIXELS,
               depth_scaling: "DepthScaling | None" = None, allow_damaged: bool = False) -> np.ndarray:
    """Path, array or PIL image -> BGR uint8 (H, W, 3). Raises `ImageError`.

    `depth_scaling`: the rule for images deeper than 8 bits (see `DepthScaling`; default:
    uint16 / 257, floats as [0, 1]). `allow_damaged`: accept a JPEG whose data is damaged
    or cut short (libjpeg's warnings; the missing part comes out gray) instead of refusing it."""
    if isinstance(image, (str, os.PathLike)):
        return _read_path(Path(image), max_pixels, depth_scaling, allow_damaged)
    if isinstance(image, Image.Image):
        _check_pixels(image.width, image.height, max_pixels, "<PIL image>")
        return _from_pil(image, "<PIL image>")
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            _check_pixels(image.shape[1], image.shape[0], max_pixels, "<array>")
        return to_bgr8(image, color, "<array>", depth_scaling)
    raise ImageError(f"unsupported image type {type(image).__name__}: pass a path, a NumPy array or a PIL image")


def check_image_name(path: str | os.PathLike, option: str | None = None) -> None:
    """Refuse (`OutputError`, one line naming `option`) an image output whose extension no
    image writer knows (`out.txt`), before a run spends time on it."""
    suffix = Path(path).suffix
    if suffix and not cv2.haveImageWriter(f"x{suffix}"):
        where = f"{option} {os.fspath(path)}" if option else os.fspath(path)
        raise OutputError(f"{where}: no image format has the extension {suffix!r} (use .png or .jpg)")


def write_image(path: str | os.PathLike, image_bgr: np.ndarray, option: str | None = None) -> None:
    """Encode by extension (.png, .jpg, ...; none: PNG) and write it (`write_output`)."""
    path = Path(path)
    check_image_name(path, option)
    ok, encoded = cv2.imencode(path.suffix or ".png", image_bgr)
    if not ok:
        raise ImageError(f"{path}: cannot encode an image with extension {path.suffix!r}")
    write_output(path, encoded.tobytes(), option=option)
