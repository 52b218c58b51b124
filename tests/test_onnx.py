"""ONNX export and the onnxruntime backend: same landmarks as PyTorch float32."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

import spiga
from spiga.about import install_hint
from spiga.checkpoint import load_checkpoint
from spiga.cli import main as cli
from spiga.errors import SpigaError
from spiga.inference.backends import TorchBackend

onnx = pytest.importorskip("onnx", reason=f"needs the onnx extra ({install_hint('onnx')})")
ort = pytest.importorskip("onnxruntime", reason=f"onnxruntime is not installed ({install_hint()})")

from spiga.inference.onnx_backend import OnnxBackend  # noqa: E402
from spiga.inference.onnx_export import export_onnx, read_onnx_header  # noqa: E402

from conftest import SHARED  # noqa: E402


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx", dynamic_batch=True)


@pytest.fixture(scope="module")
def crops():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)


def test_graph_uses_plain_operators_and_carries_metadata(tiny_onnx, tiny_checkpoint):
    graph = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(graph)
    operators = {node.op_type for node in graph.graph.node}
    assert not operators & {"GridSample", "AffineGrid"}, "window sampling must not need GridSample"
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["landmarks", "pose"]
    header = read_onnx_header(tiny_onnx)
    checkpoint = load_checkpoint(tiny_checkpoint)
    assert header["landmarks"] == checkpoint.landmarks.to_dict()
    assert header["model_config"] == json.loads(json.dumps(checkpoint.config.to_dict()))
    assert header["onnx"]["dynamic_batch"] is True


def test_preprocessing_round_trips_through_the_onnx_header(tmp_path):
    """Export -> the onnxruntime backend reads the same preprocessing object."""
    from spiga.checkpoint import build_model, save_checkpoint
    from spiga.io import DepthScaling
    from spiga.landmarks import WFLW_98
    from spiga.model import ModelConfig
    from spiga.preprocess import Preprocessing

    config = ModelConfig.sized("tiny", 98, 15)
    preprocessing = Preprocessing(config.image_size, enlarge=1.3, focal_ratio=1.8,
                                  depth_scaling=DepthScaling.parse("full"))
    path = save_checkpoint(tmp_path / "p.safetensors", build_model(config.with_preprocessing(preprocessing), WFLW_98),
                           WFLW_98)
    onnx_path = export_onnx(path, tmp_path / "p.onnx")
    assert Preprocessing.from_dict(read_onnx_header(onnx_path)["preprocessing"]) == preprocessing
    backend = OnnxBackend(onnx_path)
    assert backend.config.preprocessing == preprocessing
    aligner = spiga.load(onnx_path, backend="onnxruntime", device="cpu", detector=None)
    assert aligner.preprocessing == preprocessing


def test_onnxruntime_matches_torch(tiny_onnx, tiny_checkpoint, crops):
    torch_backend = TorchBackend(load_checkpoint(tiny_checkpoint).model, torch.device("cpu"))
    onnx_backend = OnnxBackend(tiny_onnx)
    for batch in (crops[:1], crops):  # the batch axis is free
        expected_points, expected_pose = torch_backend.predict_crops(batch)
        points, pose = onnx_backend.predict_crops(batch)
        assert points.shape == expected_points.shape == (len(batch), 98, 2)
        assert np.abs(points - expected_points).max() < 0.05
        assert np.abs(pose - expected_pose).max() < 0.01


def test_fixed_batch_graph_pads_and_splits(tiny_checkpoint, tmp_path, crops):
    path = export_onnx(tiny_checkpoint, tmp_path / "fixed.onnx", batch_size=2)
    backend = OnnxBackend(path, max_batch=32)
    assert backend.fixed_batch == 2 and backend.max_batch == 2
    points, pose = backend.predict_crops(crops)  # 3 crops: one full call, one padded
    expected, _ = TorchBackend(load_checkpoint(tiny_checkpoint).model, torch.device("cpu")).predict_crops(crops)
    assert points.shape == (3, 98, 2) and pose.shape == (3, 6)
    assert np.abs(points - expected).max() < 0.05


def test_old_opset_is_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(SpigaError, match="opset 11"):
        export_onnx(tiny_checkpoint, tmp_path / "old.onnx", opset=11)
    assert not (tmp_path / "old.onnx").exists()


def test_onnx_without_metadata_is_refused(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(SpigaError, match="without spiga metadata"):
        OnnxBackend(path)


def test_onnx_backend_rejects_other_precisions(tiny_onnx):
    with pytest.raises(SpigaError, match="float32 only"):
        spiga.load(tiny_onnx, backend="onnxruntime", precision="bfloat16")


def test_load_exports_a_checkpoint_on_the_fly(tiny_checkpoint, tiny_onnx, face_image):
    box = [(70, 35, 100, 130)]
    from_checkpoint = spiga.load(tiny_checkpoint, backend="onnxruntime").align(face_image, box)[0]
    from_file = spiga.load(tiny_onnx, backend="onnxruntime").align(face_image, box)[0]
    with_torch = spiga.load(tiny_checkpoint, device="cpu").align(face_image, box)[0]
    assert np.abs(from_checkpoint.landmarks - from_file.landmarks).max() < 1e-4
    assert np.abs(from_file.landmarks - with_torch.landmarks).max() < 0.05


# --- command line ----------------------------------------------------------------------


def test_cli_export_then_align_with_onnxruntime(tiny_checkpoint, image_file, tmp_path, capsys):
    model = tmp_path / "tiny.onnx"
    assert cli(["export", "--model", str(tiny_checkpoint), "--out", str(model), "--opset", "17",
                "--dynamic-batch"]) == 0
    assert f"wrote {model}" in capsys.readouterr().out
    outputs = {}
    for backend, model_arg in (("onnxruntime", model), ("torch", tiny_checkpoint)):
        out = tmp_path / f"{backend}.json"
        assert cli(["align", str(image_file), "--model", str(model_arg), "--backend", backend, "--device", "cpu",
                    "--box", "70", "35", "100", "130", "--box", "10", "10", "30", "30", "--json", str(out)]) == 0
        outputs[backend] = json.loads(out.read_text())["images"][0]["faces"]
    for ours, theirs in zip(outputs["onnxruntime"], outputs["torch"]):
        assert np.abs(np.array(ours["landmarks"]) - np.array(theirs["landmarks"])).max() < 0.05


def test_cli_onnxruntime_draws_meshes(tiny_checkpoint, tiny_onnx, image_file, tmp_path):
    """The mean face travels in the ONNX metadata: meshes need no checkpoint."""
    header = read_onnx_header(tiny_onnx)
    expected = load_checkpoint(tiny_checkpoint).model.mean_face_3d.double().numpy()
    assert np.abs(np.array(header["mean_face_3d"]) - expected).max() < 1e-7
    drawings = {}
    for backend, model in (("onnxruntime", tiny_onnx), ("torch", tiny_checkpoint)):
        out = tmp_path / f"{backend}.png"
        assert cli(["align", str(image_file), "--model", str(model), "--backend", backend, "--box", "70", "35",
                    "100", "130", "--draw", str(out), "--mesh", "--json", str(tmp_path / f"{backend}.json")]) == 0
        drawings[backend] = cv2.imread(str(out)).astype(int)
    plain = tmp_path / "plain.png"
    assert cli(["align", str(image_file), "--model", str(tiny_onnx), "--backend", "onnxruntime", "--box", "70",
                "35", "100", "130", "--draw", str(plain)]) == 0
    assert (drawings["onnxruntime"] != cv2.imread(str(plain))).any()  # the mesh was drawn
    # the same mesh as with the checkpoint (landmarks agree within float rounding)
    assert np.mean(np.abs(drawings["onnxruntime"] - drawings["torch"]) > 0) < 0.01


def test_onnx_without_mean_face_refuses_meshes_with_a_message(tiny_onnx, tmp_path, image_file, capsys):
    graph = onnx.load(str(tiny_onnx))
    for entry in graph.metadata_props:
        if entry.key == "spiga":
            header = json.loads(entry.value)
            del header["mean_face_3d"]
            entry.value = json.dumps(header)
    old = tmp_path / "old.onnx"
    onnx.save(graph, str(old))
    assert cli(["align", str(image_file), "--model", str(old), "--backend", "onnxruntime", "--box", "70", "35",
                "100", "130", "--draw", str(tmp_path / "x.png"), "--mesh"]) == 2
    err = capsys.readouterr().err
    assert "no 3D mean face" in err and "spiga export" in err and len(err.strip().splitlines()) == 1


def test_cli_export_error_is_one_line(tiny_checkpoint, tmp_path, capsys):
    assert cli(["export", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"), "--opset", "9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spiga: error:") and "opset" in err and len(err.strip().splitlines()) == 1


# --- the equivalence fixtures (full-size model, exported once each) ---------------------


def test_onnxruntime_matches_the_original(equivalence_model):
    """onnxruntime on the exported full-size model reproduces the original's landmarks."""
    reference, model, folder = equivalence_model
    path = export_onnx(model, folder / "model.onnx", dynamic_batch=True)
    aligner = spiga.load(path, backend="onnxruntime")
    faces = aligner.align(SHARED / "fixtures" / reference["image"], reference["bboxes_xywh"])
    expected = reference["float64"]  # the original's float64 answer (its float32 fields carry its own rounding)
    assert len(faces) == len(expected["landmarks"])
    for face, landmarks, pose in zip(faces, expected["landmarks"], expected["headpose"]):
        assert np.abs(face.landmarks - np.array(landmarks)).max() < 0.05
        assert np.abs(face.headpose.as_array() - np.array(pose)).max() < 0.01
