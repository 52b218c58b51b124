"""Backends that run a graph written by `spiga export` (see `onnx_export`): what they share
(`GraphBackend`: the graph's metadata, batching, `predict_crops`) and onnxruntime's
(`OnnxBackend`); OpenVINO's is in `openvino_backend`."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..checkpoint import read_preprocessing
from ..errors import SpigaError
from ..landmarks import LandmarkSet
from ..model import ModelConfig
from .onnx_export import METADATA_KEY

log = logging.getLogger(__name__)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise SpigaError("the onnxruntime backend needs the `onnxruntime` package, a dependency of this package: "
                         "the installation is incomplete (pip install onnxruntime)") from None
    return onnxruntime


class GraphBackend:
    """What every backend running a graph written by `spiga export` shares: the spiga metadata
    the graph carries (model sizes, landmark set, mean face), the batch size it may fix, and
    `predict_crops` around one network call. Subclasses load the graph, call `_read_graph`
    and implement `_run`."""

    name = "graph"
    precision = "float32"

    def _read_graph(self, path: Path, metadata: Mapping[str, str], batch_size: int | None, max_batch: int) -> None:
        """Set `header`, `config`, `landmark_set`, `mean_face_3d`, `fixed_batch`, `max_batch` and
        `image_size` from the graph's metadata and its input's batch size (None when free)."""
        if METADATA_KEY not in metadata:
            raise SpigaError(f"{path}: ONNX file without spiga metadata (not written by `spiga export`?)")
        try:
            self.header = json.loads(metadata[METADATA_KEY])
            self.config = read_preprocessing(self.header, ModelConfig.from_dict(self.header["model_config"]),
                                             str(path), SpigaError)
            self.landmark_set = LandmarkSet.from_dict(self.header["landmarks"])
            self.mean_face_3d = _mean_face(self.header, self.config.num_landmarks)
        except (ValueError, KeyError, TypeError, SpigaError) as exc:
            raise SpigaError(f"{path}: bad spiga metadata ({exc})") from None
        self.fixed_batch = batch_size
        self.max_batch = self.fixed_batch or int(max_batch)
        self.image_size = self.config.image_size

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) float32 crops in [0, 1] -> landmarks (B, L, 2) crop units, pose (B, 6)."""
        raise NotImplementedError

    def predict_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, S, 3) BGR uint8 -> landmarks (B, L, 2) crop pixels, pose (B, 6); float64."""
        landmarks, poses = [], []
        for start in range(0, len(crops), self.max_batch):
            chunk = crops[start:start + self.max_batch]
            count = len(chunk)
            if self.fixed_batch and count < self.fixed_batch:
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - count, *chunk.shape[1:]), chunk.dtype)])
            images = np.ascontiguousarray(chunk.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
            points, pose = self._run(images)
            landmarks.append(points[:count].astype(np.float64) * self.image_size)
            poses.append(pose[:count].astype(np.float64))
        if not landmarks:
            return np.zeros((0, self.config.num_landmarks, 2)), np.zeros((0, 6))
        return np.concatenate(landmarks), np.concatenate(poses)


class OnnxBackend(GraphBackend):
    """`predict_crops` with onnxruntime.

    Args:
        path: an .onnx file written by `spiga export`.
        device: "cpu" or "cuda[:N]" (needs onnxruntime-gpu's CUDA execution provider).
        max_batch: faces per call (graphs with a fixed batch size use that size instead).
        threads: intra-op threads; default: PyTorch's thread count, so that one setting
            (`torch.set_num_threads`) governs both backends.
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", max_batch: int = 32,
                 threads: int | None = None):
        ort = _import_onnxruntime()
        import torch

        self.path = Path(path)
        if not self.path.is_file():
            raise SpigaError(f"{self.path}: no such file")
        self.device = str(device or "cpu")
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise SpigaError("device 'cuda' asked for, but this onnxruntime has no CUDA execution provider "
                                 "(install onnxruntime-gpu)")
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise SpigaError(f"{self.path}: onnxruntime cannot load it ({type(exc).__name__}: {exc})") from None
        batch = self.session.get_inputs()[0].shape[0]
        self._read_graph(self.path, self.session.get_modelmeta().custom_metadata_map,
                         batch if isinstance(batch, int) else None, max_batch)

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points, pose = self.session.run(["landmarks", "pose"], {"images": images})
        return points, pose


def _mean_face(header: dict, num_landmarks: int) -> np.ndarray | None:
    """The (L, 3) mean face of the metadata; None in files exported before it travelled there."""
    if "mean_face_3d" not in header:
        return None
    mean_face = np.asarray(header["mean_face_3d"], dtype=np.float64)
    if mean_face.shape != (num_landmarks, 3) or not np.isfinite(mean_face).all():
        raise ValueError(f"mean_face_3d must be {num_landmarks} finite (x, y, z) points")
    return mean_face
