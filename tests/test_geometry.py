"""Geometry on known cases: rotation conventions, projection, crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spiga.geometry import (
    crop_boxes, crop_images, crop_matrices, euler_to_rotation, euler_to_rotation_torch, intrinsics,
    invert_affine, project_points, project_points_torch, rotation_to_euler, transform_points,
)
from spiga.landmarks import IBUG_68, read_mean_face
from spiga.preprocess import Preprocessing

from conftest import shared_path

CROP = Preprocessing()  # the official crop: 256 px, 1.6 x the box, focal ratio 1.5


def test_rotations_are_proper():
    rng = np.random.default_rng(1)
    angles = rng.uniform(-80, 80, size=(50, 3))
    rotations = euler_to_rotation(angles)
    assert np.allclose(rotations @ np.swapaxes(rotations, 1, 2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rotations), 1.0)


def test_euler_round_trip():
    rng = np.random.default_rng(2)
    for angles in rng.uniform(-85, 85, size=(100, 3)):
        assert np.allclose(rotation_to_euler(euler_to_rotation(angles)), angles, atol=1e-9)


def test_euler_wraps_to_half_open_interval():
    angles = rotation_to_euler(euler_to_rotation(np.array([190.0, 0.0, 0.0])))
    assert np.allclose(angles, [-170.0, 0.0, 0.0])


def test_torch_twin_matches_numpy():
    rng = np.random.default_rng(3)
    angles = rng.uniform(-90, 90, size=(20, 3))
    expected = euler_to_rotation(angles)
    got = euler_to_rotation_torch(torch.tensor(angles)).numpy()
    assert np.allclose(got, expected, atol=1e-12)
    points = rng.normal(size=(20, 7, 3))
    translation = np.column_stack([rng.normal(size=(20, 2)) * 0.1, rng.uniform(2, 4, 20)])
    camera = intrinsics(64, CROP.focal_ratio)
    a = project_points(points * 0.3, expected, translation, camera)
    b = project_points_torch(torch.tensor(points * 0.3), torch.tensor(expected), torch.tensor(translation),
                             torch.tensor(camera)).numpy()
    assert np.allclose(a, b, atol=1e-10)


def test_frontal_pose_maps_world_axes_to_camera():
    rotation = euler_to_rotation(np.zeros(3))
    # world x (out of the face) -> towards the camera (-z); world y (subject's right) -> image left; z -> down
    assert np.allclose(rotation @ [1, 0, 0], [0, 0, -1])
    assert np.allclose(rotation @ [0, 1, 0], [-1, 0, 0])
    assert np.allclose(rotation @ [0, 0, 1], [0, 1, 0])


def _mean_face_68():
    return read_mean_face(shared_path("fixtures", "upstream", "models3D", "mean_face_3D_68.txt"), IBUG_68)


def _project(mean_face, yaw=0.0, pitch=0.0, roll=0.0):
    rotation = euler_to_rotation(np.array([yaw, pitch, roll]))
    return project_points(mean_face, rotation, np.array([0.0, 0.0, 3.0]), intrinsics(64, CROP.focal_ratio)) / 64


def test_frontal_mean_face_nose_tip_at_crop_centre():
    points = _project(_mean_face_68())
    assert np.allclose(points[30], [0.5, 0.5], atol=1e-12)  # nose tip
    assert points[36, 0] < 0.5 < points[45, 0]  # subject's right eye on the image's left
    assert points[8, 1] > points[30, 1] > points[27, 1]  # chin below nose below nose bridge


def test_pose_sign_conventions():
    mean_face = _mean_face_68()
    frontal = _project(mean_face)
    eyes = lambda p: (p[36] + p[45]) / 2  # noqa: E731
    # positive yaw: nose tip moves right of the eyes (face turns towards the image's right)
    turned = _project(mean_face, yaw=20)
    assert (turned[30] - eyes(turned))[0] > (frontal[30] - eyes(frontal))[0] + 0.03
    # positive pitch: chin up, the eyes come closer to the nose tip in the image
    raised = _project(mean_face, pitch=20)
    assert (raised[30] - eyes(raised))[1] < (frontal[30] - eyes(frontal))[1] - 0.03
    # positive roll: clockwise on screen, the subject's left eye (image right) goes down
    rolled = _project(mean_face, roll=20)
    assert rolled[45, 1] - rolled[36, 1] > 0.1


def test_crop_box_is_square_and_centred():
    region = crop_boxes(np.array([[10.0, 20.0, 100.0, 50.0]]), CROP.enlarge)[0]
    assert region[2] == region[3] == pytest.approx(160.0)
    assert region[0] + region[2] / 2 == pytest.approx(60.0)
    assert region[1] + region[3] / 2 == pytest.approx(45.0)


def test_crop_and_back_round_trip():
    boxes = np.array([[10.0, 20.0, 100.0, 50.0], [-30.0, 5.0, 40.0, 80.0]])
    matrices = crop_matrices(boxes, CROP)
    points = np.random.default_rng(4).uniform(0, 300, size=(2, 9, 2))
    back = transform_points(transform_points(points, matrices), invert_affine(matrices))
    assert np.allclose(back, points, atol=1e-9)
    # the box centre goes to the crop centre, the crop region's corners to the crop's corners
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    assert np.allclose(transform_points(centres[:, None], matrices)[:, 0], 128.0)
    regions = crop_boxes(boxes, CROP.enlarge)
    assert np.allclose(transform_points(regions[:, None, :2], matrices)[:, 0], 0.0, atol=1e-9)


def _pillow_crop(image: np.ndarray, box) -> np.ndarray:
    """The original implementation's crop: Pillow's affine transform, nearest neighbour."""
    inverse = invert_affine(crop_matrices(np.array([box]), CROP))[0]
    pil = Image.fromarray(image)
    return np.asarray(pil.transform((256, 256), Image.AFFINE, inverse.flatten(), resample=Image.NEAREST))


@pytest.mark.parametrize("seed", range(6))
def test_crop_matches_pillow_exactly(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(rng.integers(50, 400), rng.integers(50, 400), 3), dtype=np.uint8)
    height, width = image.shape[:2]
    boxes = []
    for _ in range(5):
        w, h = rng.uniform(5, 1.5 * max(width, height), 2)
        boxes.append([rng.uniform(-w, width), rng.uniform(-h, height), w, h])
    crops, _ = crop_images(image, np.array(boxes), CROP)
    for crop, box in zip(crops, boxes):
        assert np.array_equal(crop, _pillow_crop(image, box))


def test_crop_of_fixture_photo_matches_pillow():
    import cv2
    import json

    image = cv2.imread(str(shared_path("fixtures", "images", "image_sportsfan.jpg")))
    box = json.loads(shared_path("fixtures", "images", "bbox_sportsfan.json").read_text())["bbox"]
    crops, _ = crop_images(image, np.array([box]), CROP)
    assert np.array_equal(crops[0], _pillow_crop(image, box))
    # and OpenCV's nearest warp indeed samples differently (why we do not use it)
    matrix = crop_matrices(np.array([box]), CROP)[0]
    warped = cv2.warpAffine(image, matrix, (256, 256), flags=cv2.INTER_NEAREST)
    assert (warped != crops[0]).any(axis=2).mean() > 0.1


def test_crop_outside_pixels_are_black():
    image = np.full((20, 20, 3), 200, np.uint8)
    crops, _ = crop_images(image, np.array([[-10.0, -10.0, 20.0, 20.0]]), CROP)
    assert crops[0, 0, 0].tolist() == [0, 0, 0]
    assert crops[0, 200, 200].tolist() == [200, 200, 200]


def test_box_iou_on_known_geometry():
    from spiga.geometry.boxes import box_iou, corner_iou, corner_iou_one_to_many, to_corners

    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    b = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 10.0, 10.0], [20.0, 20.0, 5.0, 5.0], [2.5, 2.5, 5.0, 5.0]])
    # identical, half shifted (50 / 150), disjoint, contained (25 / 100)
    np.testing.assert_allclose(box_iou(a, b)[0], [1.0, 1 / 3, 0.0, 0.25])
    np.testing.assert_allclose(corner_iou(to_corners(a), to_corners(b)), box_iou(a, b))
    np.testing.assert_allclose(corner_iou_one_to_many(to_corners(a)[0], to_corners(b)), box_iou(a, b)[0])
    assert box_iou(np.zeros((1, 4)), np.zeros((1, 4)))[0, 0] == 0.0  # empty union: no overlap, no NaN
