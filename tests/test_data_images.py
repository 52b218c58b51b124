"""Training images: 8-bit and 16-bit, gray and colour -> float32 BGR in [0, 1]."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from spiga.data.images import DepthScaling, read_image_float
from spiga.errors import ImageError, PixelLimitError, SpigaError
from spiga.io import read_image, read_image_array


def test_8bit_colour_is_divided_by_255(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "c.png"), image)
    result = read_image_float(tmp_path / "c.png")
    assert result.dtype == np.float32 and result.shape == (6, 7, 3)
    np.testing.assert_allclose(result, image / 255.0, atol=1e-6)


def test_8bit_gray_becomes_three_equal_channels(tmp_path):
    image = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    cv2.imwrite(str(tmp_path / "g.png"), image)
    result = read_image_float(tmp_path / "g.png")
    assert result.shape == (5, 6, 3)
    np.testing.assert_allclose(result[..., 0], image / 255.0, atol=1e-6)
    assert (result[..., 0] == result[..., 2]).all()


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_percentile_rule(tmp_path, suffix):
    values = np.linspace(20000, 30000, 100 * 100).reshape(100, 100).astype(np.uint16)
    values[0, 0] = 65535  # a hot pixel does not set the white point
    path = tmp_path / f"thermal{suffix}"
    cv2.imwrite(str(path), values)
    result = read_image_float(path)
    assert result.shape == (100, 100, 3) and result.min() == 0.0 and result.max() == 1.0
    low, high = np.percentile(values.astype(np.float32), [1, 99])
    middle = values[50, 50]
    np.testing.assert_allclose(result[50, 50, 0], (middle - low) / (high - low), atol=1e-5)
    assert (result[..., 0] > 0).mean() > 0.97  # only about 1 % clipped at each end
    assert (result[..., 0] < 1).mean() > 0.97


def test_16bit_fixed_range_and_full(tmp_path):
    values = np.array([[29315, 30315, 31315, 40000]], np.uint16)
    path = tmp_path / "t.png"
    cv2.imwrite(str(path), values)
    fixed = read_image_float(path, DepthScaling.parse("range:29315:31315"))
    np.testing.assert_allclose(fixed[0, :, 0], [0.0, 0.5, 1.0, 1.0])
    full = read_image_float(path, DepthScaling.parse("full"))
    np.testing.assert_allclose(full[0, :, 0], values[0] / 65535, atol=1e-6)


def test_16bit_colour(tmp_path):
    values = np.random.default_rng(1).integers(0, 65536, (8, 9, 3)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), values)
    result = read_image_float(tmp_path / "c16.png", DepthScaling("full"))
    np.testing.assert_allclose(result, values / 65535, atol=1e-6)


def test_scaling_rule_errors():
    with pytest.raises(SpigaError, match="use one of"):
        DepthScaling("gamma")
    with pytest.raises(SpigaError, match="must be below"):
        DepthScaling.parse("range:10:5")
    with pytest.raises(SpigaError, match="expected percentile"):
        DepthScaling.parse("range:10")


def test_unreadable_images_name_the_file(tmp_path):
    with pytest.raises(ImageError, match=r"missing\.png: no such file"):
        read_image_float(tmp_path / "missing.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match=r"broken\.jpg: not a readable image"):
        read_image_float(tmp_path / "broken.jpg")


@pytest.mark.parametrize("mode", ["percentile", "range:100:60000", "full"])
def test_deep_images_become_float32_whatever_the_scaling(mode):
    """float32 out of every scaling (a float64 crop broke the colour augmentation's OpenCV calls)."""
    image = np.random.default_rng(0).integers(0, 65535, (20, 30), dtype=np.uint16)
    scaled = DepthScaling.parse(mode).apply(image)
    assert scaled.dtype == np.float32 and 0.0 <= scaled.min() and scaled.max() <= 1.0


def test_training_reads_through_the_inference_decoder(tmp_path):
    """One decoder: the pixel limit, EXIF orientation and 16-bit data as `spiga.io` has them."""
    deep = np.random.default_rng(1).integers(0, 65535, (12, 10), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    np.testing.assert_array_equal(read_image_array(tmp_path / "deep.png"), deep)
    with pytest.raises(PixelLimitError, match=r"deep\.png: .* exceeds the limit of 100 pixels"):
        read_image_float(tmp_path / "deep.png", max_pixels=100)
    from PIL import Image

    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, :4] = 255  # left half white: rotated by the EXIF tag, it ends up on top
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    expected = read_image(tmp_path / "turned.jpg").astype(np.float32) / 255
    result = read_image_float(tmp_path / "turned.jpg")
    assert result.shape == (8, 4, 3)
    np.testing.assert_allclose(result, expected, atol=1e-6)
