"""Dev test: the PyTorch BlazeFace port against MediaPipe's .tflite files.

Needs the .tflite files and a TFLite interpreter; skips without them:

    pip download --no-deps mediapipe==0.10.21 --platform manylinux_2_28_x86_64 \\
        --python-version 3.11 --only-binary=:all: -d /tmp/mp
    unzip -j -o /tmp/mp/mediapipe-0.10.21-*.whl 'mediapipe/modules/face_detection/*.tflite' -d /tmp/mp/fd
    pip install ai-edge-litert tflite         # or: pip install -e ".[blazeface-dev]"
    SPIGA_BLAZEFACE_TFLITE_DIR=/tmp/mp/fd PYTHONPATH=src python -m pytest tests/test_blazeface_tflite.py

The mediapipe 0.10.x wheels hold these files; the 1.x wheels no longer do.

The reference runs the .tflite with the interpreter on the same windows the detector cuts
(level 0: the image letterboxed into the model's input); both runtimes of the port
(PyTorch and onnxruntime) must give the same raw outputs, and the same boxes within 1 px
and the same scores within 1e-3, on the sportsfan photo and on a synthetic image. The
converter must reproduce the shipped weights bit for bit, and its ONNX graphs must give
the PyTorch network's outputs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from spiga.detection import runtime as runtimes
from spiga.detection.blazeface import BlazeFaceDetector, cut_windows, to_input_array
from spiga.detection.blazeface_net import SPECS

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "spiga" / "detection" / "weights"


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            pytest.skip("needs a TFLite interpreter: pip install ai-edge-litert (or tflite-runtime)")
    return Interpreter


def _tflite_file(variant: str) -> Path:
    folder = os.environ.get("SPIGA_BLAZEFACE_TFLITE_DIR")
    if not folder:
        pytest.skip("set SPIGA_BLAZEFACE_TFLITE_DIR to a folder with MediaPipe's face_detection_*.tflite files")
    path = Path(folder) / SPECS[variant].tflite_name
    if not path.is_file():
        pytest.skip(f"{path} not found (see this file's docstring to get it)")
    return path


class TfliteRuntime:
    """The .tflite model behind the detector's runtime interface:
    (B, 3, S, S) float32 -> regressors (B, N, 16), logits (B, N)."""

    name = "tflite"

    def __init__(self, path: Path) -> None:
        self.interpreter = _interpreter_class()(model_path=str(path))
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        outputs = self.interpreter.get_output_details()
        self.regressor_index = next(o["index"] for o in outputs if o["shape"][-1] == 16)
        self.score_index = next(o["index"] for o in outputs if o["shape"][-1] == 1)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regressors, logits = [], []
        for image in np.ascontiguousarray(images.transpose(0, 2, 3, 1), dtype=np.float32):
            self.interpreter.set_tensor(self.input_index, image[None])
            self.interpreter.invoke()
            regressors.append(self.interpreter.get_tensor(self.regressor_index)[0].copy())
            logits.append(self.interpreter.get_tensor(self.score_index)[0, :, 0].copy())
        return np.stack(regressors), np.stack(logits)


def _runtimes(variant: str) -> list:
    found = [runtimes.TorchRuntime(variant)]
    if runtimes.onnxruntime_available():
        found.append(runtimes.OnnxRuntime(variant))
    return found


def _images() -> dict[str, np.ndarray]:
    path = SHARED / "fixtures" / "images" / "image_sportsfan.jpg"
    if not path.is_file():
        pytest.skip(f"needs {path}")
    photo = cv2.imread(str(path))
    # synthetic: the face shrunk and pasted twice onto blurred noise, one copy mirrored
    rng = np.random.default_rng(3)
    synthetic = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 2)
    face = cv2.resize(photo[200:560, 320:680], (180, 180), interpolation=cv2.INTER_AREA)
    synthetic[40:220, 60:240] = face
    synthetic[250:430, 400:580] = face[:, ::-1]
    return {"sportsfan": photo, "synthetic": synthetic}


@pytest.mark.parametrize("variant", ["full", "short"])
def test_raw_outputs_match_tflite(variant):
    reference = TfliteRuntime(_tflite_file(variant))
    torch.set_num_threads(1)
    detector = BlazeFaceDetector(model=variant)
    for name, image in _images().items():
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        level = detector.levels(*image.shape[:2])[0]
        inputs = to_input_array(cut_windows(rgb, level))
        theirs = reference(inputs)
        for runtime in _runtimes(variant):
            for got, want in zip(runtime(inputs), theirs):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3, err_msg=f"{variant} {name} {runtime.name}")


@pytest.mark.parametrize("variant", ["full", "short"])
def test_detections_match_tflite(variant):
    reference = TfliteRuntime(_tflite_file(variant))
    torch.set_num_threads(1)
    for name, image in _images().items():
        with_tflite = BlazeFaceDetector(model=variant, multiscale=False)
        with_tflite.runtime = reference
        theirs = with_tflite.detect(image)
        for runtime in _runtimes(variant):
            ours = BlazeFaceDetector(model=variant, multiscale=False, backend=runtime.name).detect(image)
            label = f"{variant} {name} {runtime.name}"
            assert len(ours) == len(theirs) >= 1, f"{label}: {len(ours)} vs {len(theirs)} faces"
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a.box, b.box, atol=1.0, err_msg=label)
                np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1.0, err_msg=label)
                assert abs(a.score - b.score) <= 1e-3, label


@pytest.mark.parametrize("variant", ["full", "short"])
def test_converter_reproduces_shipped_weights(variant, tmp_path):
    pytest.importorskip("tflite", reason="the converter needs the tflite package: pip install tflite")
    import sys

    from safetensors import safe_open

    source = _tflite_file(variant)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        import convert_blazeface
    finally:
        sys.path.pop(0)
    pytest.importorskip("onnx", reason="the converter's ONNX export needs the onnx package: pip install onnx")
    assert convert_blazeface.main([str(source.parent), "--out", str(tmp_path), "--variants", variant]) == 0
    name = f"blazeface_{variant}.safetensors"
    with safe_open(tmp_path / name, "np") as new, safe_open(WEIGHTS / name, "np") as shipped:
        assert new.metadata() == shipped.metadata()
        assert new.metadata()["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert sorted(new.keys()) == sorted(shipped.keys())
        for key in new.keys():
            np.testing.assert_array_equal(new.get_tensor(key), shipped.get_tensor(key))
    if not runtimes.onnxruntime_available():
        pytest.skip("checking the exported graph needs onnxruntime")
    import onnxruntime

    graph = onnxruntime.InferenceSession(str(tmp_path / f"blazeface_{variant}.onnx"),
                                         providers=["CPUExecutionProvider"])
    images = to_input_array(np.random.default_rng(0).integers(0, 256, (1, 64, 96, 3), dtype=np.uint8))
    exported = graph.run(["regressors", "logits"], {"images": np.ascontiguousarray(images)})
    for got, want in zip(exported, runtimes.TorchRuntime(variant)(images)):
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-4)
