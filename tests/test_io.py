"""Reading images: formats, EXIF, bombs, truncation, inputs from phones; atomic writes."""

from __future__ import annotations

import io
import os
import stat

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

import spiga.io.images as spiga_io
from spiga.errors import ImageError, PixelLimitError
from spiga.io import read_image, read_image_bytes, write_atomic


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    out = read_image(path)
    assert out.shape == (40, 20, 3)  # upright as a viewer shows it
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # white half now on top


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (12000, 12000)).save(path)  # a small file with 144 million pixels
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="bomb.png: image of 12000x12000 pixels exceeds the limit"):
        read_image(path)


def test_truncated_files(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for ext in (".jpg", ".png"):
        ok, data = cv2.imencode(ext, image)
        path = tmp_path / f"cut{ext}"
        path.write_bytes(data.tobytes()[: len(data) // 2])
        with pytest.raises(ImageError, match=f"cut{ext}"):
            read_image(path)


def test_png_chunk_longer_than_the_file_is_refused_without_allocating_it(tmp_path):
    """A valid 2x2 PNG whose IDAT length field says 2.9 GB: OpenCV would allocate that
    before reading (a fuzzing finding); the file is refused as corrupt, in little memory."""
    import subprocess
    import sys
    import textwrap

    ok, encoded = cv2.imencode(".png", np.full((2, 2, 3), 9, np.uint8))
    data = bytearray(encoded.tobytes())
    idat = data.index(b"IDAT") - 4
    data[idat] = 0xB0  # the length's top byte
    path = tmp_path / "long-chunk.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="long-chunk.png: .*'IDAT' chunk declares .* more than the file holds"):
        read_image(path)
    probe = textwrap.dedent(f"""
        import resource
        from spiga.errors import ImageError
        from spiga.io import read_image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            read_image({str(path)!r})
        except ImageError:
            pass
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    grown_mib = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                   check=True).stdout.strip())
    assert grown_mib < 200
    # the same check passes sound files, with bytes after IEND, and files whose chunks fit
    data[idat] = 0
    assert read_image_bytes(bytes(data) + b"trailer").shape == (2, 2, 3)


def test_wrong_extension_still_reads(tmp_path):
    ok, data = cv2.imencode(".png", np.full((8, 8, 3), 7, np.uint8))
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(data.tobytes())
    assert read_image(path).shape == (8, 8, 3)


def test_empty_and_directory(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="directory"):
        read_image(tmp_path)


def test_sixteen_bit_and_float_scaling():
    assert read_image(np.full((2, 2), 65535, np.uint16))[0, 0].tolist() == [255, 255, 255]
    assert read_image(np.full((2, 2), 257 * 100, np.uint16))[0, 0].tolist() == [100, 100, 100]
    with pytest.raises(ImageError, match="NaN"):
        read_image(np.full((2, 2), np.nan, np.float32))


def test_write_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "out.json"
    write_atomic(path, "first")
    write_atomic(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# --------------------------------------------------------------------------- inputs from real devices


def _photo(size=(96, 128)) -> np.ndarray:
    """A smooth BGR test picture (JPEG-friendly)."""
    y, x = np.mgrid[0:size[0], 0:size[1]]
    return np.stack([x * 2 % 256, y * 2 % 256, (x + y) % 256], axis=2).astype(np.uint8)


def _jpeg(image: np.ndarray, progressive: bool = False) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95,
                                        cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])[1].tobytes()


#: What a phone's Motion Photo appends after the JPEG's end marker: an MP4 (ftyp box first).
MP4_TAIL = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 64


def test_motion_photo_with_a_video_after_the_jpeg_is_read(tmp_path):
    plain = _jpeg(_photo())
    path = tmp_path / "PXL_20240101_MP.jpg"
    path.write_bytes(plain + MP4_TAIL)
    expected = cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(read_image(path), expected)
    np.testing.assert_array_equal(read_image_bytes(plain + MP4_TAIL, "upload.jpg"), expected)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", [0.3, 0.7, 0.99])
def test_truly_truncated_jpegs_are_refused(tmp_path, progressive, keep):
    data = _jpeg(_photo(), progressive)
    cut = data[: int(len(data) * keep)]
    assert cut.rstrip(b"\0")[-2:] != b"\xff\xd9"
    with pytest.raises(ImageError, match=r"cut.jpg: .*truncated"):
        read_image_bytes(cut, "cut.jpg")
    path = tmp_path / "cut.jpg"
    path.write_bytes(cut)
    with pytest.raises(ImageError, match=r"cut.jpg: .*truncated"):
        read_image(path)


def test_jpeg_end_marker_lost_is_truncated():
    data = _jpeg(_photo())
    with pytest.raises(ImageError, match="truncated"):
        read_image_bytes(data[:-2], "no-eoi.jpg")


def test_libjpeg_judges_truncation_where_opencv_pads(monkeypatch):
    """OpenCV decodes a JPEG cut short by a marker (and older builds any cut JPEG) into a
    padded image without an error; libjpeg-turbo's warnings (through simplejpeg) judge the
    data first, and Pillow where libjpeg-turbo cannot decode the file at all."""
    data = _jpeg(_photo(), progressive=True)
    with spiga_io._open_header(data + MP4_TAIL, "motion.jpg") as image:
        spiga_io._check_jpeg_complete(image, "motion.jpg")  # complete: no error
    with spiga_io._open_header(data[: len(data) // 2], "cut.jpg") as image, \
            pytest.raises(ImageError, match="cut.jpg: image file is truncated"):
        spiga_io._check_jpeg_complete(image, "cut.jpg")
    # an OpenCV that pads is simulated
    padded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    monkeypatch.setattr(spiga_io.cv2, "imdecode", lambda *args: padded.copy())
    with pytest.raises(ImageError, match="cut.jpg: damaged or truncated JPEG data"):
        read_image_bytes(data[: len(data) // 2], "cut.jpg")
    assert read_image_bytes(data + MP4_TAIL, "motion.jpg").shape == padded.shape
    monkeypatch.setattr(spiga_io, "_jpeg_damage", lambda data: spiga_io._UNJUDGED)
    with pytest.raises(ImageError, match="cut.jpg: image file is truncated"):
        read_image_bytes(data[: len(data) // 2], "cut.jpg")


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_cut_short_with_an_end_marker_is_damaged_unless_allowed(tmp_path, progressive):
    """A JPEG cut within its entropy-coded data, with an end marker appended, decodes with
    gray rows; libjpeg warns, and the file is refused naming it, unless allow_damaged."""
    data = _jpeg(_photo(), progressive)
    cut = data[: len(data) // 2] + b"\xff\xd9"
    path = tmp_path / "cut.jpg"
    path.write_bytes(cut)
    with pytest.raises(ImageError, match=r"cut.jpg: damaged or truncated JPEG data \(.*(Premature|Corrupt)"):
        read_image(path)
    with pytest.raises(ImageError, match="upload.jpg: damaged"):
        read_image_bytes(cut, "upload.jpg")
    assert read_image(path, allow_damaged=True).shape == _photo().shape
    # cut short without an end marker: accepted too when damaged images are allowed
    assert read_image_bytes(data[: len(data) // 2], "cut.jpg", allow_damaged=True).shape == _photo().shape


def _pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF"])
def test_pixel_limit_is_checked_before_any_decoder_runs(monkeypatch, fmt):
    data = _pil_bytes(Image.new("RGB" if fmt != "GIF" else "P", (300, 200)), fmt)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a decoder ran before the pixel limit was checked")

    monkeypatch.setattr(spiga_io.cv2, "imdecode", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(PixelLimitError, match=r"big: image of 300x200 pixels exceeds the limit of 50000"):
        read_image_bytes(data, "big", max_pixels=50_000)


def test_paths_whose_size_cannot_be_read_first_are_refused(tmp_path):
    """A path gets the same check as an upload: OpenCV decodes PFM, but its size cannot be
    read before decoding, so it is not decoded at all."""
    path = tmp_path / "huge.pfm"
    path.write_bytes(b"PF\n4 4\n-1.0\n" + np.zeros((4, 4, 3), np.float32).tobytes())
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None
    with pytest.raises(ImageError, match="huge.pfm: not a readable image"):
        read_image(path)


def test_formats_pillow_knows_but_spiga_does_not_accept(tmp_path):
    path = tmp_path / "icon.ico"
    Image.new("RGB", (16, 16)).save(path)
    with pytest.raises(ImageError, match=r"icon.ico: ICO images are not accepted \(accepted: .*JPEG"):
        read_image(path)


def test_gif_is_decoded_by_pillow(tmp_path):
    path = tmp_path / "anim.gif"
    Image.new("RGB", (10, 6), (255, 0, 0)).save(path)
    out = read_image(path)
    assert out.shape == (6, 10, 3) and out[0, 0].tolist() == [0, 0, 255]


def test_sixteen_bit_png_path_keeps_full_range(tmp_path):
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), np.full((4, 5, 3), 257 * 100, np.uint16))
    assert read_image(path)[0, 0].tolist() == [100, 100, 100]


def test_heif_photo_is_read(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif", reason="HEIC/HEIF needs the `heif` extra (pillow-heif)")
    assert spiga_io.HEIF_SUPPORT
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (200, 30, 30)  # left half red
    path = tmp_path / "IMG_0001.HEIC"
    pillow_heif.from_pillow(Image.fromarray(rgb)).save(path, quality=95)
    assert path.read_bytes()[4:12] == b"ftypheic"
    out = read_image(path)
    assert out.shape == (48, 64, 3)
    np.testing.assert_allclose(out[24, 8], (30, 30, 200), atol=20)  # BGR
    np.testing.assert_allclose(out[24, 56], (0, 0, 0), atol=20)
    assert read_image_bytes(path.read_bytes(), "upload.heic").shape == (48, 64, 3)
    with pytest.raises(ImageError, match="cut.heic: not a readable image"):
        read_image_bytes(path.read_bytes()[: path.stat().st_size // 2], "cut.heic")
    # orientation: applied once (libheif's transform, the EXIF tag then says upright)
    halves = np.zeros((20, 40, 3), np.uint8)
    halves[:, :20] = 255  # left half white
    image = Image.fromarray(halves)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = _pil_bytes(image, "HEIF", exif=exif.tobytes(), quality=95)
    out = read_image_bytes(rotated, "rotated.heic")
    assert out.shape == (40, 20, 3) and out[:20].mean() > 200 and out[20:].mean() < 50


# --------------------------------------------------------------------------- atomic writes


def test_write_atomic_gives_the_mode_of_a_plain_open_without_touching_the_umask(tmp_path, monkeypatch):
    previous = os.umask(0o027)
    try:
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")

        def no_umask(mask):
            raise AssertionError("os.umask changes the mask of every thread")

        monkeypatch.setattr(os, "umask", no_umask)
        write_atomic(tmp_path / "atomic.txt", "x")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == 0o640
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


def test_write_atomic_long_names_and_no_leftovers(tmp_path):
    name = "n" * 250 + ".json"
    write_atomic(tmp_path / name, b"{}")
    assert [p.name for p in tmp_path.iterdir()] == [name]
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "bad.json", 123)  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_without_the_heif_extra_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(spiga_io, "HEIF_SUPPORT", False)
    with pytest.raises(ImageError, match=r"photo.heic: not a readable image .*HEIC/HEIF needs the heif extra: "
                                         r"pip install '\.\[heif\]'.*pip install 'spiga-landmarks\[heif\]'"):
        read_image_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64), "photo.heic")
