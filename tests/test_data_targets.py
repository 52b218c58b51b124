"""Targets: heatmap peaks, boundary maps, and pose labels that round-trip through the model's projection."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from spiga.data import read_dataset
from spiga.data.augment import AugmentConfig
from spiga.data.dataset import FaceDataset
from spiga.data.targets import (
    boundary_heatmaps, contour_curve, fit_pose, point_heatmaps, pose_points, project_mean_face,
)
from spiga.geometry import crop_matrices, transform_points
from spiga.landmarks import IBUG_68, WFLW_98, read_mean_face
from spiga.preprocess import Preprocessing

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

CROP = Preprocessing()  # the official crop


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)} (the project's shared fixtures)")
    return path


def synthetic_face(count: int = 30, seed: int = 0) -> np.ndarray:
    """A face-like rigid shape in SPIGA's world frame ([z, -x, -y] of the face frame):
    points on a half ellipsoid, nose forward."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.7, 0.7, count)
    y = rng.uniform(-0.8, 0.6, count)
    z = -0.9 * (x ** 2 / 0.49 + y ** 2 / 0.64) / 2
    face = np.stack([x, y, z], axis=1)
    return np.stack([face[:, 2], -face[:, 0], -face[:, 1]], axis=1)


# ------------------------------------------------------------------ heatmaps

def test_heatmap_peak_is_at_the_point():
    points = np.array([[10.5, 20.5], [33.2, 7.9], [63.9, 0.1], [5.0, 5.0]])
    maps = point_heatmaps(points, np.array([True, True, True, False]))
    assert maps.shape == (4, 64, 64) and maps.dtype == np.float32
    # a point on a pixel centre: that pixel is 1, its four neighbours equal
    assert maps[0, 20, 10] == pytest.approx(1.0)
    assert maps[0, 19, 10] == pytest.approx(maps[0, 21, 10]) == pytest.approx(maps[0, 20, 9])
    assert maps[0, 19, 10] == pytest.approx(np.exp(-1 / (2 * 1.5 ** 2)))
    for k in range(3):
        row, col = np.unravel_index(maps[k].argmax(), maps[k].shape)
        assert (col, row) == (int(points[k, 0]), int(points[k, 1]))  # the pixel containing the point
    assert not maps[3].any()  # not annotated


def test_boundary_of_a_straight_contour():
    points = np.array([[10.5, 30.5], [25.5, 30.5], [40.5, 30.5]])
    maps = boundary_heatmaps(points, np.ones(3, bool), ((0, 1, 2),))
    assert maps.shape == (1, 64, 64)
    np.testing.assert_allclose(maps[0, 30, 10:41], 1.0, atol=1e-6)
    np.testing.assert_allclose(maps[0, 29, 12:39], np.exp(-0.5), atol=1e-6)
    np.testing.assert_allclose(maps[0, 32, 12:39], np.exp(-2.0), atol=1e-6)
    assert not maps[0, 34:].any() and not maps[0, :27].any()  # cut at 3 sigma
    assert maps[0, 30, 42] == pytest.approx(np.exp(-2.0))     # 2 px beyond the end point
    assert maps[0, 30, 44] == 0.0


def test_boundary_skips_unannotated_points_and_empty_groups():
    points = np.array([[10.5, 10.5], [50.5, 50.5], [20.5, 10.5]])
    maps = boundary_heatmaps(points, np.array([True, False, True]), ((0, 1, 2), (1,)))
    assert maps[0, 10, 15] == pytest.approx(1.0)  # the line from point 0 to point 2
    assert maps[0, 30, 30] == 0.0                 # not bent towards the missing point
    assert not maps[1].any()


def test_contour_curve_passes_through_its_points():
    points = np.array([[5.0, 40.0], [15.0, 25.0], [30.0, 20.0], [45.0, 26.0], [55.0, 41.0]])
    curve = contour_curve(points)
    gaps = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    assert gaps.max() <= 0.26
    for point in points:
        assert np.linalg.norm(curve - point, axis=1).min() < 1e-6


# ------------------------------------------------------------------ pose labels

POSES = [
    (0.0, 0.0, 0.0, 0.0, 0.0, 3.0),
    (35.0, -12.0, 8.0, 0.1, -0.05, 2.8),
    (-50.0, 25.0, -30.0, -0.15, 0.12, 3.5),
    (10.0, 40.0, 60.0, 0.02, 0.3, 4.0),
]


@pytest.mark.parametrize("pose", POSES)
def test_pose_round_trip_synthetic(pose):
    face = synthetic_face()
    points = project_mean_face(face, np.array(pose), CROP)
    label = fit_pose(points, np.ones(len(face), bool), face, CROP)
    assert label.valid and label.error < 1e-6 and label.points == len(face)
    np.testing.assert_allclose(label.pose[:3], pose[:3], atol=0.1)
    np.testing.assert_allclose(label.pose[3:], pose[3:], atol=1e-3)


@pytest.mark.parametrize("pose", POSES)
def test_pose_round_trip_official_mean_face(pose):
    face = read_mean_face(shared("fixtures", "upstream", "models3D", "mean_face_3D_98.txt"), WFLW_98)
    # rendered on the 64 x 64 map as the model does (K = intrinsics(64, focal ratio)), fitted in the 256 crop
    on_map = project_mean_face(face, np.array(pose), CROP, size=64.0)
    mask = pose_points(WFLW_98)
    label = fit_pose(on_map * 4.0, mask, face, CROP)
    assert label.valid and label.points == 22
    np.testing.assert_allclose(label.pose[:3], pose[:3], atol=0.1)
    np.testing.assert_allclose(label.pose[3:], pose[3:], atol=1e-3)


def test_pose_points():
    assert pose_points(WFLW_98).sum() == 22
    assert pose_points(IBUG_68).sum() == 18


def test_pose_label_needs_four_points_and_flags_bad_fits():
    face = synthetic_face()
    points = project_mean_face(face, np.array(POSES[1]), CROP)
    mask = np.zeros(len(face), bool)
    mask[:3] = True
    assert not fit_pose(points, mask, face, CROP).valid
    noisy = points + np.random.default_rng(0).normal(0, 30, points.shape)  # ~12 % of the crop
    label = fit_pose(noisy, np.ones(len(face), bool), face, CROP)
    assert label.error > 0.08 and not label.valid


def test_pose_labels_agree_with_the_original_implementation():
    """The original SPIGA annotation of COFW68 carries pose labels made by its own
    POSIT fit; ours (PnP of the same mean face, same crop camera) agree to a few degrees."""
    annotations = json.loads(shared("fixtures", "upstream", "annotations", "cofw68", "test.json").read_text())
    face = read_mean_face(shared("fixtures", "upstream", "models3D", "mean_face_3D_68.txt"), IBUG_68)
    mask = pose_points(IBUG_68)
    differences = []
    for entry in annotations[:200]:
        matrix = crop_matrices(np.array(entry["bbox"])[None], CROP)
        points = transform_points(np.array(entry["landmarks"])[None], matrix)[0]
        label = fit_pose(points, mask, face, CROP)
        assert label.valid
        differences.append(label.pose - np.array(entry["headpose"]))
    median = np.median(np.abs(differences), axis=0)
    assert (median[:3] < [2.0, 4.0, 1.0]).all()  # degrees: yaw, pitch, roll
    assert (median[3:] < 0.05).all()


# ------------------------------------------------------------------ the torch dataset

def test_face_dataset_item(tmp_path):
    face = read_mean_face(shared("fixtures", "upstream", "models3D", "mean_face_3D_68.txt"), IBUG_68)
    image = np.full((300, 320, 3), 90, np.uint8)
    box = np.array([100.0, 90.0, 120.0, 130.0])
    # a face rendered at a known pose into this box's crop, back in image pixels
    pose = np.array([20.0, -10.0, 5.0, 0.02, -0.03, 3.0])
    in_crop = project_mean_face(face, pose, CROP)
    inverse = np.linalg.inv(np.vstack([crop_matrices(box[None], CROP)[0], [0, 0, 1]]))[:2]
    landmarks = transform_points(in_crop[None], inverse[None])[0]
    cv2.imwrite(str(tmp_path / "a.png"), image)
    (tmp_path / "a.jsonl").write_text(json.dumps({"image": "a.png", "landmarks": landmarks.tolist(),
                                                  "box": box.tolist()}))
    data = read_dataset(f"custom:{tmp_path / 'a.jsonl'}", landmark_set="ibug68")
    item = FaceDataset(data, mean_face=face)[0]
    assert item["image"].shape == (3, 256, 256)
    np.testing.assert_allclose(item["image"][:, 100, 100].numpy(), 90 / 255, atol=1e-6)
    np.testing.assert_allclose(item["landmarks"].numpy(), in_crop / 256, atol=1e-5)
    assert item["heatmaps"].shape == (68, 64, 64) and item["boundaries"].shape == (13, 64, 64)
    peak = np.unravel_index(int(item["heatmaps"][30].argmax()), (64, 64))
    assert (peak[1], peak[0]) == tuple(np.floor(in_crop[30] / 4).astype(int))
    assert bool(item["pose_valid"]) and float(item["pose_error"]) < 1e-5
    np.testing.assert_allclose(item["pose"].numpy(), pose, atol=1e-3)
    assert item["visible"].all() and item["inside"].all()
    augmented = FaceDataset(data, mean_face=face, augment=AugmentConfig(), seed=1)[0]
    assert augmented["pose_valid"]  # rotation and scale keep the face rigid: still a good fit
