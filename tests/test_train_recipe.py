"""The fork's recipe (examples/thermal_cascade_recipe.yaml) runs on fork-style data: SPIGA JSON
with [null, null] for unannotated points and 16-bit PNGs, from a named 300W model placed in the
cache (a tiny random stand-in); the milestone schedule and the Smooth L1 beta options."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from spiga.cli import main
from spiga.errors import SpigaError
from spiga.landmarks import IBUG_68, mean_face_to_world, read_mean_face
from spiga.testing import random_checkpoint, random_mean_face
from spiga.train import TrainConfig
from spiga.train.loop import _schedule

from conftest import UPSTREAM_MEAN_FACES

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "examples" / "thermal_cascade_recipe.yaml"
OFFICIAL_68 = UPSTREAM_MEAN_FACES / "mean_face_3D_68.txt"


def mean_face_68() -> np.ndarray:
    """The official 68-point mean face (world frame: y right, z down) where ../shared is
    present, else a random stand-in: the data only needs points in a face-sized box."""
    if OFFICIAL_68.is_file():
        return read_mean_face(OFFICIAL_68, IBUG_68)
    return mean_face_to_world(random_mean_face(68))


def write_fork_style_set(folder: Path, count: int, seed: int) -> Path:
    """`count` 16-bit gray PNGs and a SPIGA JSON file: the 68 ids of 300W, two points of each
    face left out as [null, null] (as the fork's annotations do)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    mean_face = mean_face_68()
    entries = []
    for i in range(count):
        image = rng.integers(26000, 34000, (160, 160)).astype(np.uint16)
        centre, size = rng.uniform(70, 90, 2), rng.uniform(70, 90)
        points = centre + mean_face[:, 1:] / np.ptp(mean_face[:, 1:], axis=0).max() * size * 0.8
        for x, y in points.astype(int):
            cv2.circle(image, (int(x), int(y)), 2, 40000, -1)
        name = f"images/{i:05d}.png"
        cv2.imwrite(str(folder / name), image)
        landmarks = points.round(2).tolist()
        for left_out in rng.choice(68, 2, replace=False):
            landmarks[left_out] = [None, None]
        entries.append({"imgpath": name, "bbox": [*(centre - size / 2).round(2).tolist(), size, size],
                        "ids": list(IBUG_68.ids), "landmarks": landmarks})
    path = folder / "annotations.json"
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope="module")
def stand_in_300w(tmp_path_factory) -> Path:
    """A tiny random 68-point checkpoint standing in for the official 300W model."""
    return random_checkpoint(tmp_path_factory.mktemp("stand-in") / "spiga_300wprivate.safetensors", "tiny",
                             IBUG_68, seed=0, mean_face_3d=mean_face_68())


def test_the_fork_recipe_runs_on_fork_style_data(tmp_path, monkeypatch, stand_in_300w, one_torch_thread):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "spiga_300wprivate.safetensors").write_bytes(stand_in_300w.read_bytes())
    monkeypatch.setenv("SPIGA_HOME", str(home))
    monkeypatch.setenv("SPIGA_OFFLINE", "1")  # `init: 300wprivate` must come from the cache, no download
    train_json = write_fork_style_set(tmp_path / "train", 4, seed=1)
    val_json = write_fork_style_set(tmp_path / "val", 2, seed=2)
    out = tmp_path / "run"
    # the recipe as written; the run shortened to 3 steps, its one drop moved to step 2 to be seen
    assert main(["train", "--config-file", str(RECIPE), "--train", f"spiga-json:{train_json}",
                 "--val", f"spiga-json:{val_json}", "--max-steps", "3", "--milestones", "2", "--batch-size", "2",
                 "--workers", "0", "--device", "cpu", "--out", str(out), "--no-progress", "--no-augment"]) == 0

    state = torch.load(out / "last.resume.pt", weights_only=False)
    assert state["step"] == 3
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 0.1)  # Adam, after the drop
    assert "betas" in state["optimizer"]["param_groups"][0]
    recorded = state["config"]
    assert recorded["optimizer"] == "adam" and recorded["smooth_l1_beta"] == 1 / 4096 and recorded["stage"] == "3"
    before, after = load_file(str(stand_in_300w)), load_file(str(out / "last.safetensors"))
    frozen = [k for k in before if k.startswith(("visual_cnn.", "pose_fc."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # CNN and pose frozen
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("gcn."))  # the cascade learns


def test_milestones_count_epochs_or_steps():
    by_epochs = _schedule(TrainConfig(epochs=4, milestones=[1, 3], lr_factor=0.5, warmup_steps=0), 40, 10)
    assert [by_epochs(s) for s in (0, 9, 10, 29, 30, 39)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    by_steps = _schedule(TrainConfig(max_steps=40, milestones=[5], warmup_steps=0), 40, 10)
    assert [by_steps(s) for s in (4, 5)] == [1, pytest.approx(0.1)]


@pytest.mark.parametrize("values, problem", [({"milestones": [3, 2]}, "milestones must increase"),
                                             ({"milestones": [0]}, "whole numbers >= 1"),
                                             ({"lr_factor": 0.0}, "lr_factor"),
                                             ({"smooth_l1_beta": -1.0}, "smooth_l1_beta")])
def test_bad_schedule_options_are_named(values, problem):
    with pytest.raises(SpigaError, match=problem):
        TrainConfig(**values)
