"""Equivalence with the original implementation on its recorded outputs.

For every fixture in ../shared/fixtures/equivalence: regenerate the seeded random
weights with the shared tool, convert them with `spiga convert`, and compare what spiga
computes with the original's float64 answer (the fixture's `float64` field; its float32
fields carry the original's own rounding, 0.02-0.045 px, which moves between CPUs):

- float64 (`--precision float64`): the same mathematics, within 1e-4 px and 1e-5 in pose;
- float32, on every operator path of this CPU: within 0.05 px and 0.01 in pose.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spiga.checkpoint import load_checkpoint
from spiga.cli import main as cli
from spiga.geometry import crop_images
from spiga.inference.cpu import _probe, forced_cpu_features
from spiga.inference.optimize import prepare_for_inference
from spiga.io import read_image

from conftest import SHARED

pytestmark = pytest.mark.slow

TOLERANCE = {"float64": (1e-4, 1e-5), "float32": (0.05, 0.01)}  # (pixels, pose)


def _pose_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest pose difference, relative where values are large (angles in degrees, tz ~ 3)."""
    return float((np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max())


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_cli_align_matches_original(equivalence_model, precision):
    reference, model, folder = equivalence_model
    expected = reference["float64"]
    image = SHARED / "fixtures" / reference["image"]
    out = folder / f"out-{precision}.json"
    args = ["align", str(image), "--model", str(model), "--json", str(out), "--device", "cpu",
            "--precision", precision]
    for box in reference["bboxes_xywh"]:
        args += ["--box", *map(str, box)]
    assert cli(args) == 0
    faces = json.loads(out.read_text())["images"][0]["faces"]
    assert len(faces) == len(expected["landmarks"])
    pixels, pose_tolerance = TOLERANCE[precision]
    for face, landmarks, pose, box in zip(faces, expected["landmarks"], expected["headpose"],
                                          reference["bboxes_xywh"]):
        assert face["box"] == pytest.approx(box)
        assert np.abs(np.array(face["landmarks"]) - np.array(landmarks)).max() < pixels
        got_pose = [face["headpose"][k] for k in ("yaw", "pitch", "roll", "tx", "ty", "tz")]
        assert _pose_error(np.array(got_pose), np.array(pose)) < pose_tolerance


PROBED = _probe()
PATHS = [
    pytest.param("model", {}, id="model"),  # the training module itself, no transform
    pytest.param("float32", {}, id="float32-fused",
                 marks=pytest.mark.skipif(not PROBED.onednn, reason="no fused oneDNN operators on this machine")),
    pytest.param("float32", {"onednn": False, "onednn_bfloat16": False}, id="float32-public"),
    pytest.param("float64", {}, id="float64"),
]


@pytest.mark.parametrize("path, features", PATHS)
def test_every_cascade_step_matches_original(equivalence_model, path, features):
    reference, model_path, _ = equivalence_model
    expected = reference["float64"]
    checkpoint = load_checkpoint(model_path)
    model = checkpoint.model
    image = read_image(SHARED / "fixtures" / reference["image"])
    crops, _ = crop_images(image, np.array(reference["bboxes_xywh"]), checkpoint.config.preprocessing)
    # float32 crops in every precision, as the original feeds them
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    with forced_cpu_features(**features), torch.inference_mode():
        network = model if path == "model" else prepare_for_inference(model, path, "cpu")
        out = network(images)
    pixels, pose_tolerance = TOLERANCE["float32" if path == "model" else path]
    assert _pose_error(out["pose"].double().numpy(), np.array(expected["headpose"])) < pose_tolerance
    for step, stage in enumerate(expected["stage_landmarks_crop_normalized"]):
        error_px = np.abs(out["landmarks"][step].double().numpy() - np.array(stage)).max() * 256
        assert error_px < pixels, f"cascade step {step}: {error_px:.2e} px"


def test_the_model_in_float64_is_the_originals_mathematics(equivalence_model):
    """The plain training module, cast to float64, meets the float64 answer too."""
    reference, model_path, _ = equivalence_model
    expected = reference["float64"]
    checkpoint = load_checkpoint(model_path)
    model = checkpoint.model.double()
    image = read_image(SHARED / "fixtures" / reference["image"])
    crops, _ = crop_images(image, np.array(reference["bboxes_xywh"]), checkpoint.config.preprocessing)
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        out = model(images)
    assert _pose_error(out["pose"].numpy(), np.array(expected["headpose"])) < 1e-5
    error_px = np.abs(out["landmarks"][-1].numpy() - np.array(expected["stage_landmarks_crop_normalized"][-1]))
    assert error_px.max() * 256 < 1e-4
