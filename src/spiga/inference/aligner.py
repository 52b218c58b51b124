"""`Aligner`: images and boxes in, `Face`s out.

image -> read_image (BGR uint8) -> one vectorised crop for all faces -> SPIGA (one
batch) -> crop coordinates back to image pixels.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np
import torch

from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import InputError, SpigaError
from ..face import Face, HeadPose
from ..geometry.crop import crop_images, invert_affine, transform_points
from ..hub import resolve_model
from ..io import read_image
from ..landmarks import LandmarkSet
from ..model import ModelConfig
from .backends import BACKENDS, Backend, TorchBackend
from .optimize import PRECISIONS

log = logging.getLogger(__name__)

def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SpigaError(f"bad device {device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpigaError("device 'cuda' asked for, but no CUDA GPU is available to PyTorch")
    return device


def validate_boxes(boxes: Any, width: int, height: int) -> np.ndarray:
    """(N, 4) float64 boxes (x, y, w, h), checked: finite, positive size, overlapping the image."""
    try:
        array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    except (TypeError, ValueError):
        raise InputError(f"boxes must be a list of (x, y, w, h), got {boxes!r}") from None
    for i, (x, y, w, h) in enumerate(array):
        if not np.all(np.isfinite([x, y, w, h])):
            raise InputError(f"box {i} ({x}, {y}, {w}, {h}) has a non-finite value")
        if w <= 0 or h <= 0:
            raise InputError(f"box {i} ({x:g}, {y:g}, {w:g}, {h:g}) must have positive width and height")
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise InputError(f"box {i} ({x:g}, {y:g}, {w:g}, {h:g}) lies entirely outside the "
                             f"{width}x{height} image")
    return array


class Aligner:
    """A loaded model ready to align faces.

    Use `spiga.load(...)` rather than building one directly. The network runs in a
    backend (`predict_crops`: crops in, landmarks in crop pixels and pose out); cropping,
    back-projection and `Face` construction are the same for every backend.
    """

    def __init__(self, checkpoint: Checkpoint, device: str | torch.device | None = None,
                 precision: str = "float32", max_batch: int = 32, detector: Any = None, compile: bool = False,
                 tune_process: bool = True):
        if precision not in PRECISIONS:
            raise SpigaError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        device = _pick_device(device)
        backend = TorchBackend(checkpoint.model.eval(), device, precision, max_batch=max_batch, compile=compile,
                               tune_process=tune_process)
        self._setup(backend, checkpoint.landmarks, checkpoint.config,
                    str(checkpoint.path) if checkpoint.path else "<in memory>", detector)
        self.checkpoint = checkpoint
        self.model = backend.model

    @classmethod
    def from_backend(cls, backend: Backend, landmark_set: LandmarkSet, config: ModelConfig, name: str,
                     detector: Any = None) -> "Aligner":
        """An Aligner around any backend (e.g. `OnnxBackend`), without a PyTorch checkpoint."""
        aligner = cls.__new__(cls)
        aligner._setup(backend, landmark_set, config, name, detector)
        aligner.checkpoint = None
        aligner.model = None
        return aligner

    def _setup(self, backend: Backend, landmark_set: LandmarkSet, config: ModelConfig, name: str,
               detector: Any) -> None:
        self.backend = backend
        self.device = backend.device
        self.precision = backend.precision
        self.max_batch = backend.max_batch
        self.landmark_set = landmark_set
        self.config = config
        self.name = name
        self.detector = detector

    def __repr__(self) -> str:
        return (f"Aligner({self.name}, {self.landmark_set.num_landmarks} landmarks, backend={self.backend.name}, "
                f"device={self.device}, precision={self.precision})")

    def predict_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the network on crops.

        Args:
            crops: (B, S, S, 3) BGR uint8 crops.
        Returns:
            landmarks (B, L, 2) in crop pixels and pose (B, 6), both float64.
        """
        return self.backend.predict_crops(crops)

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """Face boxes from the detector (boxes as SPIGA expects them) and scores."""
        if self.detector is None:
            raise InputError("no face boxes given and no face detector configured: pass boxes")
        detections = self.detector.detect(image_bgr)
        boxes = np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
        return boxes, [float(d.score) for d in detections]

    def align(self, image: Any, boxes: Sequence[Sequence[float]] | np.ndarray | None = None,
              color: str = "bgr") -> list[Face]:
        """Landmarks and head pose for each face of one image.

        Args:
            image: path, NumPy array (BGR by default, `color="rgb"` for RGB; gray, RGBA,
                uint16 and float accepted) or PIL image.
            boxes: face boxes (x, y, w, h) in image pixels; None to detect faces.
        Returns:
            one `Face` per box, in box order (all faces run as one batch).
        """
        bgr = read_image(image, color=color)
        return self.align_array(bgr, boxes)

    def align_array(self, bgr: np.ndarray, boxes: Any = None) -> list[Face]:
        """`align` for an image already in BGR uint8 (H, W, 3)."""
        height, width = bgr.shape[:2]
        scores: list[float | None]
        if boxes is None:
            box_array, detected_scores = self.detect(bgr)
            scores = list(detected_scores)
        else:
            box_array = validate_boxes(boxes, width, height)
            scores = [None] * len(box_array)
        if len(box_array) == 0:
            return []
        crops, matrices = crop_images(bgr, box_array, self.config.image_size, self.config.crop_enlarge)
        landmarks_crop, poses = self.predict_crops(crops)
        landmarks = transform_points(landmarks_crop, invert_affine(matrices))
        return [
            Face(box=tuple(float(v) for v in box), landmarks=landmarks[i], headpose=HeadPose(*map(float, poses[i])),
                 score=scores[i], crop_matrix=matrices[i], crop_size=self.config.image_size,
                 focal_ratio=self.config.focal_ratio)
            for i, box in enumerate(box_array)
        ]


def load(model: str | os.PathLike = "wflw", device: str | torch.device | None = None,
         precision: str = "float32", backend: str = "torch", compile: bool = False, **options: Any) -> Aligner:
    """Load a model for alignment.

    Args:
        model: a named official model (`wflw`, `300wpublic`, `300wprivate`, `merlrav`,
            `cofw68`; downloaded and cached on first use), a spiga checkpoint path, or,
            with `backend="onnxruntime"`, an `.onnx` file written by `spiga export`.
        device: `"cpu"`, `"cuda"`, `"cuda:1"`, ...; None picks CUDA when available, else CPU.
        precision: `"float32"` (default), `"bfloat16"` (CPU with AVX-512 BF16/AMX, or CUDA)
            or `"float16"` (CUDA only). The backbone runs in it; pose and landmark geometry
            stay float32.
        backend: `"torch"` (default) or `"onnxruntime"` (float32; a checkpoint is exported
            to a temporary .onnx file first).
        compile: `torch.compile` the network (frozen weights). Pays off only for long runs:
            every new batch size compiles for about a minute on a small CPU.
        options: `max_batch` (faces per network call, default 32), `detector`,
            `tune_process` (torch backend on CPU: flush denormal floats to zero and keep large
            freed blocks in the heap, process-wide; default True; see `tune_cpu_process`).
    """
    if backend not in BACKENDS:
        raise SpigaError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        from .onnx_backend import load_onnx

        return load_onnx(model, device=device, precision=precision, compile=compile, **options)
    path = resolve_model(model)
    return Aligner(load_checkpoint(path), device=device, precision=precision, compile=compile, **options)
