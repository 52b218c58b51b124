"""Mean-face estimation: recover a known 3D shape from its 2D projections under random poses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spiga.cli import main
from spiga.data import read_dataset
from spiga.data.mean_face import estimate_from_dataset, estimate_mean_face
from spiga.landmarks.mean_face import write_mean_face
from spiga.data.targets import fit_pose, project_mean_face
from spiga.errors import SpigaError
from spiga.geometry import crop_matrices, transform_points
from spiga.landmarks import read_landmark_set, read_mean_face
from spiga.preprocess import Preprocessing

# A symmetric face in the face frame (x to the subject's left, y up, z out of the face).
PAIRS = {  # subject's right point (x < 0); its mirror has +x
    "eye_outer": (-0.45, 0.35, -0.35), "eye_inner": (-0.15, 0.33, -0.25), "brow": (-0.40, 0.55, -0.30),
    "mouth": (-0.25, -0.45, -0.25), "jaw_top": (-0.70, 0.00, -0.90), "jaw_mid": (-0.60, -0.50, -0.80),
    "jaw_low": (-0.35, -0.85, -0.55),
}
MIDLINE = {"nose_tip": (0.0, 0.0, 0.0), "nose_bridge": (0.0, 0.30, -0.20), "lip": (0.0, -0.38, -0.12),
           "chin": (0.0, -1.00, -0.45)}

CROP = Preprocessing()  # the official crop

def face_layout() -> tuple[np.ndarray, dict]:
    names, points, mirror = [], [], []
    for name, (x, y, z) in PAIRS.items():
        mirror.append([len(points), len(points) + 1])
        names += [f"right_{name}", f"left_{name}"]
        points += [(x, y, z), (-x, y, z)]
    for name, point in MIDLINE.items():
        names.append(name)
        points.append(point)
    index = {n: i for i, n in enumerate(names)}
    jaw = [index[n] for n in ("right_jaw_top", "right_jaw_mid", "right_jaw_low", "chin",
                              "left_jaw_low", "left_jaw_mid", "left_jaw_top")]
    description = {"name": "synthetic", "points": names, "mirror_pairs": mirror,
                   "edges": {"jaw": jaw, "mouth": [index["right_mouth"], index["lip"], index["left_mouth"]]}}
    return np.array(points), description


def to_world(face: np.ndarray) -> np.ndarray:
    return np.stack([face[:, 2], -face[:, 0], -face[:, 1]], axis=1)


def random_poses(count: int, seed: int = 0, depth: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angles = rng.uniform([-35, -20, -20], [35, 20, 20], (count, 3))
    shifts = np.column_stack([rng.uniform(-0.1, 0.1, (count, 2)), np.full(count, depth)])
    return np.hstack([angles, shifts])


def similarity_error(truth: np.ndarray, estimate: np.ndarray, rotate: bool = True) -> float:
    """RMS distance after the best scale, translation (and proper rotation), over truth's RMS radius."""
    a, b = truth - truth.mean(0), estimate - estimate.mean(0)
    rotation = np.eye(3)
    if rotate:
        u, _, vt = np.linalg.svd(b.T @ a)
        rotation = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt  # no reflection allowed
    b = b @ rotation
    b *= (a * b).sum() / (b * b).sum()
    return float(np.sqrt(((a - b) ** 2).sum(1).mean() / (a ** 2).sum(1).mean()))


def test_recovers_a_known_shape_from_projections():
    face, description = face_layout()
    layout = read_landmark_set_from(description)
    poses = random_poses(150, depth=30.0)  # far away: nearly the scaled orthographic camera
    shapes = np.stack([project_mean_face(to_world(face), pose, CROP) for pose in poses])
    shapes += np.random.default_rng(1).normal(0, 0.05, shapes.shape)
    fit = estimate_mean_face(shapes, layout.flip_order, frontal_fraction=1.0)
    assert similarity_error(face, fit.points) < 0.02
    # the frame is the face frame, frontal at the average (zero) pose: no rotation needed
    assert similarity_error(face, fit.points, rotate=False) < 0.05
    right_eye, nose, jaw = fit.points[0], fit.points[len(PAIRS) * 2], fit.points[8]
    assert right_eye[0] < 0 < right_eye[1]           # the subject's right is -x, eyes are up
    assert nose[2] == pytest.approx(0.0) and jaw[2] < -0.3  # nose in front, jaw behind
    np.testing.assert_allclose(fit.points[layout.flip_order, 0], -fit.points[:, 0], atol=1e-9)  # symmetric


def read_landmark_set_from(description: dict):
    from spiga.landmarks.set_files import landmark_set_from_description
    return landmark_set_from_description(description)


def test_frontal_selection_drops_profiles():
    face, description = face_layout()
    layout = read_landmark_set_from(description)
    poses = random_poses(120, depth=30.0)
    profiles = random_poses(20, seed=5, depth=30.0)
    profiles[:, 0] = np.where(profiles[:, 0] > 0, 85.0, -85.0)
    shapes = np.stack([project_mean_face(to_world(face), p, CROP) for p in np.vstack([poses, profiles])])
    # profiles annotated with a sliding jaw contour: not the rigid shape
    shapes[120:, 8:14] += np.random.default_rng(2).normal(0, 8.0, shapes[120:, 8:14].shape)
    fit = estimate_mean_face(shapes, layout.flip_order, frontal_fraction=120 / 140)
    assert fit.samples == 120
    assert similarity_error(face, fit.points) < 0.03


def test_dataset_estimate_gives_pose_labels_at_the_right_scale(tmp_path):
    face, description = face_layout()
    (tmp_path / "layout.json").write_text(json.dumps(description))
    poses = random_poses(120)
    lines, boxes = [], []
    for pose in poses:
        # a face box around the projected points, then the points back in image pixels
        in_crop = project_mean_face(to_world(face), pose, CROP)
        low, high = in_crop.min(0), in_crop.max(0)
        box = np.array([low[0], low[1], *(high - low)])
        matrix = crop_matrices(box[None], CROP)[0]
        inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
        image_points = transform_points(in_crop[None], inverse[None])[0] * 2.0 + 40.0  # any image frame
        boxes.append(box * 2.0 + [40.0, 40.0, 0.0, 0.0])
        lines.append(json.dumps({"image": "none.png", "landmarks": image_points.tolist(), "box": boxes[-1].tolist()}))
    (tmp_path / "faces.jsonl").write_text("\n".join(lines))
    data = read_dataset(f"custom:{tmp_path / 'faces.jsonl'}", tmp_path / "layout.json", require_images=False)
    fit = estimate_from_dataset(data, frontal_fraction=1.0, distance=3.0)
    world = to_world(fit.points)
    labels = []
    for sample in data:
        points = transform_points(sample.landmarks[None], crop_matrices(sample.box[None], CROP))[0]
        labels.append(fit_pose(points, np.ones(len(face), bool), world, CROP).pose)
    labels = np.array(labels)
    assert np.median(labels[:, 5]) == pytest.approx(3.0, rel=1e-6)
    # the estimated face gives the generating angles back (perspective at tz 3 costs a little)
    assert np.median(np.abs(labels[:, :3] - poses[:, :3])) < 2.0


def test_written_file_reads_back(tmp_path):
    face, description = face_layout()
    (tmp_path / "layout.json").write_text(json.dumps(description))
    layout = read_landmark_set(tmp_path / "layout.json")
    write_mean_face(tmp_path / "out" / "face.txt", face, layout, comment="synthetic\nsecond line")
    assert not list((tmp_path / "out").glob(".*tmp"))  # written atomically: no leftovers
    world = read_mean_face(tmp_path / "out" / "face.txt", layout)
    np.testing.assert_allclose(world, to_world(face), atol=1e-8)


def test_errors():
    face, description = face_layout()
    layout = read_landmark_set_from(description)
    with pytest.raises(SpigaError, match="at least 3"):
        estimate_mean_face(np.zeros((2, len(face), 2)), layout.flip_order)
    frontal = np.stack([project_mean_face(to_world(face), np.array([0, 0, 0, 0, 0, 30.0]), CROP)] * 10)
    with pytest.raises(SpigaError, match="too little pose variation"):
        estimate_mean_face(frontal, layout.flip_order, frontal_fraction=1.0)


def test_cli_estimate_mean_face(tmp_path, capsys):
    face, description = face_layout()
    (tmp_path / "layout.json").write_text(json.dumps(description))
    lines = [json.dumps({"image": "x.png", "landmarks": project_mean_face(to_world(face), pose, CROP).tolist()})
             for pose in random_poses(40)]
    (tmp_path / "faces.jsonl").write_text("\n".join(lines))
    out = tmp_path / "mean_face.txt"
    code = main(["estimate-mean-face", "--dataset", f"custom:{tmp_path / 'faces.jsonl'}",
                 "--landmark-set", str(tmp_path / "layout.json"), "--out", str(out)])
    assert code == 0 and "from 38 shapes" in capsys.readouterr().out
    world = read_mean_face(out, read_landmark_set(tmp_path / "layout.json"))
    assert world.shape == (len(face), 3)
    code = main(["estimate-mean-face", "--dataset", f"custom:{tmp_path / 'faces.jsonl'}", "--out", str(out)])
    assert code == 2 and "needs a landmark set" in capsys.readouterr().err
