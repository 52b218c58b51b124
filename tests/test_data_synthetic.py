"""The synthetic face generator's two layouts: its own 32 points and the 68 iBUG points."""

from __future__ import annotations

import json

import numpy as np

from spiga.data import read_dataset
from spiga.data.synthetic import POINT_NAMES, render_face, write_synthetic_dataset
from spiga.landmarks import IBUG_68


def test_ibug68_points_sit_on_the_synthetic_features():
    face = render_face(np.random.default_rng(4))
    index = {name: i for i, name in enumerate(POINT_NAMES)}
    same = {0: "jaw_0", 8: "jaw_4", 16: "jaw_8", 17: "right_brow_0", 26: "left_brow_2", 27: "nose_bridge",
            30: "nose_tip", 33: "nose_base", 36: "right_eye_outer", 39: "right_eye_inner", 42: "left_eye_inner",
            45: "left_eye_outer", 48: "mouth_right", 51: "mouth_top", 54: "mouth_left", 57: "mouth_bottom"}
    for ibug, name in same.items():
        np.testing.assert_allclose(face.ibug68[ibug], face.landmarks[index[name]], atol=1e-6)
    mouth = face.landmarks[[index[n] for n in ("mouth_right", "mouth_top", "mouth_left", "mouth_bottom")]]
    inner = face.ibug68[60:68]
    assert np.all((inner >= mouth.min(0)) & (inner <= mouth.max(0)))  # the inner lip inside the painted lips


def test_ibug68_layout_mirrors_as_the_builtin_set():
    """A frontal face flipped left-right is the same face with the iBUG mirror order."""
    face = render_face(np.random.default_rng(1), max_angles=(0.0, 0.0, 0.0))
    centre = face.ibug68[[27, 30, 33]].mean(0)[0]
    mirrored = face.ibug68[list(IBUG_68.flip_order)] * [-1, 1] + [2 * centre, 0]
    assert np.abs(mirrored - face.ibug68).max() < 6.0  # pixels: the expression jitter is not symmetric


def test_ibug68_dataset_reads_with_the_builtin_set(tmp_path):
    paths = write_synthetic_dataset(tmp_path, 2, seed=2, domain="thermal", layout="ibug68")
    assert "landmark_set" not in paths
    data = read_dataset(f"custom:{paths['annotations']}", "ibug68")
    assert len(data.samples) == 2 and data.landmark_set.num_landmarks == 68
    ids = [int(line.split("|")[0]) for line in paths["mean_face"].read_text().splitlines() if "|" in line]
    assert ids == list(IBUG_68.ids)
    first = json.loads(paths["annotations"].read_text().splitlines()[0])
    assert len(first["landmarks"]) == 68
