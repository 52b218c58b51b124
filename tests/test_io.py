"""Reading images: formats, EXIF, bombs, truncation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from spiga.errors import ImageError
from spiga.io import read_image, write_atomic


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
