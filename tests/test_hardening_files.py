"""Hardening of the other files that come in: uploaded image bytes and checkpoints."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from spiga.checkpoint import load_checkpoint
from spiga.errors import CheckpointError, ImageError, PixelLimitError
from spiga.io import read_image_bytes

from serve_util import png_header_only


def test_upload_exif_orientation_is_applied():
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=95)
    out = read_image_bytes(buffer.getvalue(), "rotated.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200 and out[20:].mean() < 50


@pytest.mark.parametrize("size", [(20_000, 20_000), (100_000, 100_000)])
def test_upload_bomb_is_refused_from_the_header(size):
    with pytest.raises(PixelLimitError, match="bomb.png"):
        read_image_bytes(png_header_only(*size), "bomb.png", max_pixels=50_000_000)


def test_upload_formats_without_a_known_header_are_refused():
    # PFM: OpenCV decodes it, but its dimensions cannot be checked before decoding
    pfm = b"PF\n4 4\n-1.0\n" + np.zeros((4, 4, 3), np.float32).tobytes()
    assert cv2.imdecode(np.frombuffer(pfm, np.uint8), cv2.IMREAD_UNCHANGED) is not None
    with pytest.raises(ImageError, match="x.pfm: not a readable image"):
        read_image_bytes(pfm, "x.pfm")


def test_upload_truncated_png_names_the_upload():
    data = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))[1].tobytes()
    with pytest.raises(ImageError, match="cut.png"):
        read_image_bytes(data[:-20], "cut.png")


@pytest.fixture(scope="module")
def checkpoint_bytes(tiny_checkpoint) -> bytes:
    return tiny_checkpoint.read_bytes()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0.0, 0.999))
def test_truncated_checkpoints_are_named(tmp_path, checkpoint_bytes, fraction):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(checkpoint_bytes[: int(len(checkpoint_bytes) * fraction)])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_checkpoint(path)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), min_size=1, max_size=4),
       in_header=st.booleans())
def test_corrupted_checkpoints_load_or_are_refused(tmp_path, checkpoint_bytes, flips, in_header):
    """Flipped bytes (in the JSON header, or anywhere) give a working model or a CheckpointError."""
    data = bytearray(checkpoint_bytes)
    header_end = 8 + int.from_bytes(data[:8], "little")
    for where, mask in flips:
        position = int(where * ((header_end if in_header else len(data)) - 1))
        data[position] ^= mask
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(data))
    try:
        load_checkpoint(path)
    except CheckpointError as exc:
        assert "flipped.safetensors" in str(exc)
