"""Augmentation: flips, one warp that moves image and points together, occlusion, photometry."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from spiga.data import read_dataset
from spiga.data.augment import (
    NO_AUGMENTATION, AugmentConfig, CropSample, GeometricDraw, augment, augmentation_matrix, blur,
    geometric_crop, jitter_colour, occlude,
)
from spiga.data.dataset import FaceDataset
from spiga.errors import SpigaError
from spiga.geometry import crop_images, crop_matrices, transform_points
from spiga.landmarks import IBUG_68, WFLW_98, LandmarkSet
from spiga.preprocess import Preprocessing

# six well separated points: eyes (0, 1), mouth corners (2, 3), nose (4), chin (5)
SIX = LandmarkSet(name="six", ids=tuple(range(6)), flip_order=(1, 0, 3, 2, 4, 5),
                  edge_groups=((0, 4, 1), (2, 5, 3)), group_names=("upper", "lower"))
POINTS = np.array([[140.3, 150.7], [201.6, 148.2], [150.9, 221.4], [195.2, 219.9],
                   [171.4, 185.5], [173.8, 251.1]])
BOX = np.array([125.0, 130.0, 95.0, 130.0])
CROP = Preprocessing()  # the official crop


def blob_image(points: np.ndarray, shape=(360, 400), sigma=1.5) -> np.ndarray:
    """Gaussian dots centred on sub-pixel points (pixel (i, j) has its centre at (j + .5, i + .5))."""
    ys, xs = np.mgrid[:shape[0], :shape[1]] + 0.5
    image = np.zeros(shape, np.float32)
    for x, y in points:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2)).astype(np.float32)
    return np.repeat(image[..., None], 3, axis=2)


def centroid(image: np.ndarray, near: np.ndarray, radius: int = 9) -> np.ndarray:
    """Intensity centroid of channel 0 in a window around `near` (pixel-centre convention)."""
    x0, y0 = int(near[0]) - radius, int(near[1]) - radius
    window = image[max(y0, 0):y0 + 2 * radius + 1, max(x0, 0):x0 + 2 * radius + 1, 0].astype(np.float64)
    ys, xs = np.mgrid[max(y0, 0):max(y0, 0) + window.shape[0], max(x0, 0):max(x0, 0) + window.shape[1]] + 0.5
    return np.array([(xs * window).sum(), (ys * window).sum()]) / window.sum()


@pytest.mark.parametrize("draw", [
    GeometricDraw(),
    GeometricDraw(flip=False, angle=30.0, scale=1.12, shift=(0.04, -0.03)),
    GeometricDraw(flip=True, angle=-41.0, scale=0.87, shift=(-0.05, 0.02)),
    GeometricDraw(flip=True, angle=12.5, scale=1.0, shift=(0.0, 0.05)),
])
def test_warp_moves_image_and_points_together(draw):
    image = blob_image(POINTS)
    visible = annotated = np.ones(6, bool)
    crop = geometric_crop(image, POINTS, visible, annotated, BOX, draw, SIX.flip_order, CROP)
    assert crop.image.shape == (256, 256, 3)
    for point in crop.landmarks:
        np.testing.assert_allclose(centroid(crop.image, point), point, atol=0.15)
    # the flip keeps meanings: the subject's right eye (0) stays on the image's left of the left eye (1)
    assert crop.landmarks[0, 0] < crop.landmarks[1, 0]
    assert crop.landmarks[2, 0] < crop.landmarks[3, 0]


def mirror_crop(crop: CropSample, flip_order, size=256) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a crop about its vertical centre line and reorder its points."""
    points = crop.landmarks[list(flip_order)] * [-1, 1] + [size, 0]
    return crop.image[:, ::-1], points


def test_flip_twice_is_the_identity():
    image = blob_image(POINTS) + np.linspace(0, 1, 400, dtype=np.float32)[None, :, None]
    visible = annotated = np.ones(6, bool)
    plain = geometric_crop(image, POINTS, visible, annotated, BOX, GeometricDraw(angle=10), SIX.flip_order, CROP)
    flipped = geometric_crop(image, POINTS, visible, annotated, BOX, GeometricDraw(flip=True, angle=-10),
                             SIX.flip_order, CROP)
    back_image, back_points = mirror_crop(flipped, SIX.flip_order)
    np.testing.assert_allclose(back_points, plain.landmarks, atol=1e-9)
    # OpenCV rounds sample positions to 1/32 px, so steep blob flanks differ slightly
    difference = np.abs(back_image - plain.image)
    assert difference.max() < 0.02 and difference.mean() < 1e-4


@pytest.mark.parametrize("layout", [WFLW_98, IBUG_68])
def test_flip_order_swaps_sides(layout):
    order = np.array(layout.flip_order)
    assert (order[order] == np.arange(layout.num_landmarks)).all()
    right, left = layout.eye_corners
    assert order[right] == left


def test_identity_draw_is_the_inference_crop():
    matrix = augmentation_matrix(BOX, GeometricDraw(), CROP)
    np.testing.assert_allclose(matrix, crop_matrices(BOX[None], CROP)[0])
    image = blob_image(POINTS)
    visible = annotated = np.ones(6, bool)
    crop = geometric_crop(image, POINTS, visible, annotated, BOX, None, SIX.flip_order, CROP)
    expected, matrices = crop_images(image, BOX[None], CROP)
    np.testing.assert_array_equal(crop.image, expected[0])
    np.testing.assert_allclose(crop.landmarks, transform_points(POINTS[None], matrices)[0])


def test_warp_at_unit_scale_copies_pixels():
    """A box whose crop is 256 px wide at an integer offset: the bilinear warp is a pure
    copy, which pins the half-pixel shift between our convention and OpenCV's."""
    image = np.random.default_rng(0).random((300, 300, 3)).astype(np.float32)
    box = np.array([50.0, 40.0, 160.0, 160.0])  # crop region starts at (2, -8)
    crop = geometric_crop(image, np.zeros((6, 2)), np.ones(6, bool), np.ones(6, bool), box,
                          GeometricDraw(), SIX.flip_order, CROP)
    np.testing.assert_allclose(crop.image[8:, :], image[:248, 2:258], atol=1e-6)
    assert (crop.image[:8] == 0).all()


def test_occlusion_hides_points_under_the_rectangle():
    config = AugmentConfig(occlusion_probability=1.0, occlusion_size=(0.3, 0.4))
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(np.arange(20, 240, 10.0), np.arange(20, 240, 10.0)), -1).reshape(-1, 2)
    hidden_any = False
    for _ in range(20):
        crop = CropSample(np.full((256, 256, 3), 0.5, np.float32), grid.copy(), np.ones(len(grid), bool),
                          np.ones(len(grid), bool), np.eye(2, 3))
        occlude(crop, np.array([10.0, 10.0, 246.0, 246.0]), config, rng)
        painted = np.any(crop.image != 0.5, axis=2)
        ys, xs = np.nonzero(painted)
        assert len(ys) > 0
        under = ((grid[:, 0] >= xs.min()) & (grid[:, 0] <= xs.max()) &
                 (grid[:, 1] >= ys.min()) & (grid[:, 1] <= ys.max()))
        np.testing.assert_array_equal(crop.visible, ~under)
        assert crop.annotated.all()
        hidden_any |= under.any()
    assert hidden_any


def test_photometry_keeps_range_and_shape():
    rng = np.random.default_rng(0)
    image = rng.random((64, 64, 3)).astype(np.float32)
    config = AugmentConfig(blur_probability=1.0)
    for _ in range(10):
        out = blur(jitter_colour(image, config, rng), config, rng)
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
    gray = np.repeat(image[..., :1], 3, axis=2)  # thermal: stays gray
    out = jitter_colour(gray, config, rng)
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-5)


def test_no_augmentation_config_is_the_identity():
    image = blob_image(POINTS)
    visible = annotated = np.ones(6, bool)
    crop = augment(image, POINTS, visible, annotated, BOX, SIX.flip_order, NO_AUGMENTATION,
                   np.random.default_rng(0), CROP)
    expected = crop_matrices(BOX[None], CROP)[0]
    np.testing.assert_allclose(crop.matrix, expected)
    np.testing.assert_allclose(crop.image, cv2.warpAffine(image, crop_to_cv(expected), (256, 256)), atol=1e-6)


def crop_to_cv(matrix):
    result = matrix.copy()
    result[:, 2] += matrix[:, :2] @ [0.5, 0.5] - 0.5
    return result


def test_config_validation():
    with pytest.raises(SpigaError):
        AugmentConfig(flip_probability=1.5)
    with pytest.raises(SpigaError):
        AugmentConfig(occlusion_size=(0.5, 0.2))


def test_dataset_draws_are_reproducible(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), (blob_image(POINTS) * 255).clip(0, 255).astype(np.uint8))
    (tmp_path / "six.json").write_text(json.dumps({
        "name": "six", "num_points": 6, "mirror_pairs": [[0, 1], [2, 3]],
        "edges": {"upper": [0, 4, 1], "lower": [2, 5, 3]}}))
    (tmp_path / "a.jsonl").write_text(json.dumps({"image": "a.png", "landmarks": POINTS.tolist(),
                                                  "box": BOX.tolist()}))
    data = read_dataset(f"custom:{tmp_path / 'a.jsonl'}", landmark_set=tmp_path / "six.json")
    first = FaceDataset(data, augment=AugmentConfig(), seed=7)
    again = FaceDataset(data, augment=AugmentConfig(), seed=7)
    a, b = first[0], again[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["landmarks"], b["landmarks"])
    first.set_epoch(1)
    assert not torch.equal(first[0]["landmarks"], a["landmarks"])


def test_warp_interpolation_is_a_choice_and_the_plain_crop_is_the_inference_crop():
    """Nearest-neighbour augmentation warps copy source pixels; the plain crop is always
    `crop_images` with the model's preprocessing, whatever the augmentation samples with."""
    image = np.random.default_rng(3).random((360, 400, 3)).astype(np.float32)
    visible = annotated = np.ones(6, bool)
    draw = GeometricDraw(angle=17.0, scale=1.1)
    nearest = geometric_crop(image, POINTS, visible, annotated, BOX, draw, SIX.flip_order, CROP, "nearest")
    bilinear = geometric_crop(image, POINTS, visible, annotated, BOX, draw, SIX.flip_order, CROP, "bilinear")
    np.testing.assert_array_equal(nearest.matrix, bilinear.matrix)
    inside = nearest.image[nearest.image.any(axis=2)]
    assert np.isin(inside[:, 0], image[..., 0]).all()  # every value is a source pixel's
    assert not np.isin(bilinear.image[bilinear.image.any(axis=2)][:, 0], image[..., 0]).all()
    tiny = Preprocessing(crop_size=128)
    plain = augment(image, POINTS, visible, annotated, BOX, SIX.flip_order, None, np.random.default_rng(0), tiny)
    np.testing.assert_array_equal(plain.image, crop_images(image, BOX[None], tiny)[0][0])
    with pytest.raises(SpigaError, match="augmentation interpolation 'cubic'"):
        AugmentConfig(interpolation="cubic")
