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
                 precision: str = "float32", max_batch: int = 32, detector: Any = "blazeface", compile: bool = False,
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

    def mean_face_world(self) -> np.ndarray:
        """(L, 3) float64: the model's 3D mean face in SPIGA's world frame (for mesh drawings)."""
        mean_face = getattr(self.backend, "mean_face_3d", None)
        if mean_face is None:
            raise InputError(f"{self.name}: this model file carries no 3D mean face (an ONNX file exported by an "
                             f"older spiga?): export it again with `spiga export` to draw meshes")
        return np.asarray(mean_face, dtype=np.float64)

    def get_detector(self):
        """The face detector, created on first use when given by name."""
        if self.detector is None:
            raise InputError("no face boxes given and no face detector configured: pass boxes")
        if isinstance(self.detector, str):
            from ..detection import make_detector

            self.detector = make_detector(self.detector)
        return self.detector

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """Face boxes for SPIGA (the detector's boxes through the documented mapping,
        `spiga.detection.face_box_from_detection`) and the detector's scores."""
        from ..detection import face_box_from_detection

        detections = self.get_detector().detect(image_bgr)
        boxes = np.array([face_box_from_detection(d) for d in detections], dtype=np.float64).reshape(-1, 4)
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

    def align_many(self, images_bgr: Sequence[np.ndarray], boxes_list: Sequence[Any] | None = None,
                   scores_list: Sequence[Sequence[float | None] | None] | None = None) -> list[list[Face]]:
        """`align_array` for several images, with the faces of all of them in one batch.

        Args:
            images_bgr: BGR uint8 (H, W, 3) images (sizes may differ).
            boxes_list: per image, its face boxes (x, y, w, h), or None to detect its faces;
                None for all: detect in every image.
            scores_list: per image, a score per box (or None) to report with given boxes.
        Returns:
            per image, its `Face`s in box order: the same values as `align_array` one
            image at a time (the network sees the same crops).
        """
        count = len(images_bgr)
        boxes_list = [None] * count if boxes_list is None else list(boxes_list)
        scores_list = [None] * count if scores_list is None else list(scores_list)
        if len(boxes_list) != count or len(scores_list) != count:
            raise InputError(f"align_many: {count} images but {len(boxes_list)} box lists "
                             f"and {len(scores_list)} score lists")
        crops, matrices, per_image = [], [], []
        for bgr, boxes, scores in zip(images_bgr, boxes_list, scores_list):
            if boxes is None:
                box_array, detected = self.detect(bgr)
                scores = list(detected)
            else:
                box_array = validate_boxes(boxes, bgr.shape[1], bgr.shape[0])
                scores = [None] * len(box_array) if scores is None else list(scores)
            if len(box_array):
                image_crops, image_matrices = crop_images(bgr, box_array, self.config.image_size,
                                                          self.config.crop_enlarge)
                crops.append(image_crops)
                matrices.append(image_matrices)
            per_image.append((box_array, scores))
        if not crops:
            return [[] for _ in range(count)]
        all_matrices = np.concatenate(matrices)
        landmarks_crop, poses = self.predict_crops(np.concatenate(crops))
        landmarks = transform_points(landmarks_crop, invert_affine(all_matrices))
        results, start = [], 0
        for box_array, scores in per_image:
            faces = []
            for i, box in enumerate(box_array):
                k = start + i
                faces.append(Face(box=tuple(float(v) for v in box), landmarks=landmarks[k],
                                  headpose=HeadPose(*map(float, poses[k])), score=scores[i],
                                  crop_matrix=all_matrices[k], crop_size=self.config.image_size,
                                  focal_ratio=self.config.focal_ratio))
            results.append(faces)
            start += len(box_array)
        return results


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
        options: `max_batch` (faces per network call, default 32), `detector` (the face
            detector used when `align` gets no boxes: a name for `spiga.detection.make_detector`,
            `blazeface` by default, `haar`, `dlib`, `file:PATH`; a `Detector`; or None),
            `tune_process` (torch backend on CPU: flush denormal floats to zero and keep large
            freed blocks in the heap, process-wide; default True; see `tune_cpu_process`).
    """
    if backend not in BACKENDS:
        raise SpigaError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        from .onnx_backend import open_onnx_backend

        unknown = set(options) - {"max_batch", "detector", "tune_process"}
        if unknown:
            raise TypeError(f"load() got unexpected options: {', '.join(sorted(unknown))}")
        onnx, name = open_onnx_backend(model, device, precision, compile, options.get("max_batch", 32))
        return Aligner.from_backend(onnx, onnx.landmark_set, onnx.config, name,
                                    options.get("detector", "blazeface"))
    path = resolve_model(model)
    return Aligner(load_checkpoint(path), device=device, precision=precision, compile=compile, **options)
