"""The openvino backend: the graph `spiga export` writes, run by OpenVINO; the same landmarks
as PyTorch float32 and as the original's float64 reference (within 0.05 px)."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch

import spiga
from spiga.about import install_hint
from spiga.checkpoint import load_checkpoint
from spiga.cli import main as cli
from spiga.errors import SpigaError
from spiga.inference.backends import BACKENDS, TorchBackend
from spiga.inference.openvino_backend import OpenVinoBackend, openvino_available

from conftest import SHARED

pytest.importorskip("onnx", reason=f"exporting graphs needs the onnx extra ({install_hint('onnx')})")
needs_openvino = pytest.mark.skipif(not openvino_available(),
                                    reason=f"openvino is not installed ({install_hint('openvino')})")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

from spiga.inference.onnx_export import export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("openvino") / "tiny.onnx", dynamic_batch=True)


@pytest.fixture(scope="module")
def crops():
    return np.random.default_rng(1).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def torch_reference(tiny_checkpoint, crops):
    return TorchBackend(load_checkpoint(tiny_checkpoint).model, torch.device("cpu")).predict_crops(crops)


def test_openvino_is_a_backend_choice():
    assert "openvino" in BACKENDS


def test_missing_openvino_is_one_clear_error(tiny_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(SpigaError, match=r"openvino backend needs the `openvino` package: pip install"):
        spiga.load(tiny_onnx, backend="openvino")


@needs_openvino
def test_openvino_matches_torch(tiny_onnx, crops, torch_reference):
    backend = OpenVinoBackend(tiny_onnx)
    assert backend.precision == "float32" and backend.fixed_batch is None
    expected_points, expected_pose = torch_reference
    for count in (1, 3):  # the batch axis is free
        points, pose = backend.predict_crops(crops[:count])
        assert points.shape == (count, 98, 2) and points.dtype == np.float64
        assert np.abs(points - expected_points[:count]).max() < 0.05
        assert np.abs(pose - expected_pose[:count]).max() < 0.01
    empty_points, empty_pose = backend.predict_crops(crops[:0])
    assert empty_points.shape == (0, 98, 2) and empty_pose.shape == (0, 6)


@needs_openvino
def test_fixed_batch_graph_pads_and_splits(tiny_checkpoint, tmp_path, crops, torch_reference):
    backend = OpenVinoBackend(export_onnx(tiny_checkpoint, tmp_path / "fixed.onnx", batch_size=2), max_batch=32)
    assert backend.fixed_batch == 2 and backend.max_batch == 2
    points, pose = backend.predict_crops(crops)  # 3 crops: one full call, one padded
    assert points.shape == (3, 98, 2) and pose.shape == (3, 6)
    assert np.abs(points - torch_reference[0]).max() < 0.05


@needs_openvino
def test_bfloat16_runs_what_the_cpu_has(tiny_onnx, face_image, caplog):
    """bfloat16 where OpenVINO runs it (native bfloat16), else float32 with a warning: the
    backend reports the precision that runs."""
    boxes = [(70, 35, 100, 130), (120, 60, 60, 70)]
    with caplog.at_level(logging.WARNING, logger="spiga.inference.openvino_backend"):
        reduced = spiga.load(tiny_onnx, backend="openvino", precision="bfloat16")
    assert reduced.precision == reduced.backend.compiled_precision() in ("bfloat16", "float32")
    if reduced.precision == "float32":
        assert "no native support" in caplog.text
    reference = spiga.load(tiny_onnx, backend="openvino").align(face_image, boxes)
    for face, ref in zip(reduced.align(face_image, boxes), reference):
        # as the torch backend's bfloat16 test: near the float32 landmarks (a random tiny model)
        assert np.abs(face.landmarks - ref.landmarks).mean() < 0.25 * max(face.box[2:])


@needs_openvino
@pytest.mark.parametrize("options, message", [
    ({"precision": "float16"}, "float32 or bfloat16"),
    ({"device": "cuda"}, "CPU only"),
    ({"compile": True}, "torch backend only"),
])
def test_openvino_refuses_what_it_cannot_do(tiny_onnx, options, message):
    with pytest.raises(SpigaError, match=message):
        spiga.load(tiny_onnx, backend="openvino", **options)


@needs_openvino
def test_onnx_without_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(SpigaError, match="without spiga metadata"):
        OpenVinoBackend(path)


@needs_openvino
def test_cli_aligns_with_openvino_from_a_checkpoint(tiny_checkpoint, image_file, tmp_path):
    """`--backend openvino` with a checkpoint (exported on the fly): the torch backend's landmarks."""
    outputs = {}
    for backend in ("openvino", "torch"):
        out = tmp_path / f"{backend}.json"
        assert cli(["align", str(image_file), "--model", str(tiny_checkpoint), "--backend", backend, "--device",
                    "cpu", "--box", "70", "35", "100", "130", "--json", str(out)]) == 0
        outputs[backend] = json.loads(out.read_text())["images"][0]["faces"]
    (ours,), (theirs,) = outputs["openvino"], outputs["torch"]
    assert np.abs(np.array(ours["landmarks"]) - np.array(theirs["landmarks"])).max() < 0.05


@needs_openvino
def test_openvino_matches_the_original(equivalence_model):
    """OpenVINO on the exported full-size model reproduces the original's float64 landmarks."""
    reference, model, folder = equivalence_model
    path = export_onnx(model, folder / "model-openvino.onnx", dynamic_batch=True)
    faces = spiga.load(path, backend="openvino").align(SHARED / "fixtures" / reference["image"],
                                                       reference["bboxes_xywh"])
    expected = reference["float64"]
    assert len(faces) == len(expected["landmarks"])
    for face, landmarks, pose in zip(faces, expected["landmarks"], expected["headpose"]):
        assert np.abs(face.landmarks - np.array(landmarks)).max() < 0.05
        assert np.abs(face.headpose.as_array() - np.array(pose)).max() < 0.01
