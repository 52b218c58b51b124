"""Equivalence with the original implementation on its recorded outputs.

For every fixture in ../shared/fixtures/equivalence: regenerate the seeded random
weights with the shared tool, convert them with `spiga convert`, run `spiga align`
with the fixture's boxes, and compare with what the original code returned.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spiga.checkpoint import load_checkpoint
from spiga.cli import main as cli
from spiga.geometry import crop_images
from spiga.io import read_image

from conftest import SHARED


@pytest.fixture(scope="module")
def converted(equivalence_model):
    """(reference, converted checkpoint, a scratch folder) per equivalence fixture."""
    return equivalence_model


def test_cli_align_matches_original(converted):
    reference, model, folder = converted
    image = SHARED / "fixtures" / reference["image"]
    args = ["align", str(image), "--model", str(model), "--json", str(folder / "out.json"), "--device", "cpu"]
    for box in reference["bboxes_xywh"]:
        args += ["--box", *map(str, box)]
    assert cli(args) == 0
    faces = json.loads((folder / "out.json").read_text())["images"][0]["faces"]
    assert len(faces) == len(reference["landmarks"])
    for face, landmarks, pose, box in zip(faces, reference["landmarks"], reference["headpose"],
                                          reference["bboxes_xywh"]):
        assert face["box"] == pytest.approx(box)
        assert np.abs(np.array(face["landmarks"]) - np.array(landmarks)).max() < 0.05
        got_pose = [face["headpose"][k] for k in ("yaw", "pitch", "roll", "tx", "ty", "tz")]
        assert np.abs(np.array(got_pose) - np.array(pose)).max() < 0.01


def test_every_cascade_step_matches_original(converted):
    reference, model_path, _ = converted
    checkpoint = load_checkpoint(model_path)
    image = read_image(SHARED / "fixtures" / reference["image"])
    crops, _ = crop_images(image, np.array(reference["bboxes_xywh"]))
    with torch.inference_mode():
        out = checkpoint.model(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255)
    assert np.abs(out["pose"].numpy() - np.array(reference["pose_raw"])).max() < 0.01
    for step, expected in enumerate(reference["stage_landmarks_crop_normalized"]):
        error_px = np.abs(out["landmarks"][step].numpy() - np.array(expected)).max() * 256
        assert error_px < 0.05, f"cascade step {step}: {error_px:.4f} px"
