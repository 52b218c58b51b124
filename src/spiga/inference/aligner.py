"""`Aligner`: images and boxes in, `Face`s out.

image -> read_image (BGR uint8) -> one vectorised crop for all faces -> SPIGA (one
batch) -> crop coordinates back to image pixels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from ..about import check_installation_once
from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import BoxError, BoxOutsideImage, InputError, SpigaError
from ..face import Face, HeadPose
from ..geometry.crop import crop_images, invert_affine, transform_points
from ..hub import resolve_model
from ..io import read_image
from ..io.images import DepthScaling
from ..landmarks import LandmarkSet
from ..model import ModelConfig
from ..preprocess import Preprocessing
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
    """(N, 4) float64 boxes (x, y, w, h), checked: finite, positive size (`BoxError`),
    overlapping the image (`BoxOutsideImage`)."""
    try:
        array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    except (TypeError, ValueError, OverflowError):
        raise BoxError(f"boxes must be a list of (x, y, w, h), got {boxes!r}") from None
    for i, (x, y, w, h) in enumerate(array):
        if not np.all(np.isfinite([x, y, w, h])):
            raise BoxError(f"box {i} ({x}, {y}, {w}, {h}) has a non-finite value")
        if w <= 0 or h <= 0:
            raise BoxError(f"box {i} ({x:g}, {y:g}, {w:g}, {h:g}) must have positive width and height")
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise BoxOutsideImage(f"box {i} ({x:g}, {y:g}, {w:g}, {h:g}) lies entirely outside the "
                                  f"{width}x{height} image")
    return array


class Aligner:
    """A loaded model ready to align faces.

    Use `spiga.load(...)` rather than building one directly. The network runs in a
    backend (`predict_crops`: crops in, landmarks in crop pixels and pose out); cropping,
    back-projection and `Face` construction are the same for every backend. `model` is
    the network the backend runs from (`spiga.load` prepares the checkpoint's model in
    place: it is then the inference network itself).
    """

    #: Accept JPEG files whose data is damaged or cut short (see `spiga.io.read_image`)
    #: when reading image paths, instead of refusing them.
    allow_damaged: bool = False

    def __init__(self, checkpoint: Checkpoint, device: str | torch.device | None = None,
                 precision: str = "float32", max_batch: int = 32, detector: Any = "blazeface", compile: bool = False,
                 tune_process: bool = False, depth_scaling: str | DepthScaling | None = None,
                 in_place: bool = False):
        if precision not in PRECISIONS:
            raise SpigaError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        device = _pick_device(device)
        # in_place: the checkpoint's model becomes the inference network (no copy of the weights)
        backend = TorchBackend(checkpoint.model.eval(), device, precision, max_batch=max_batch, compile=compile,
                               tune_process=tune_process, in_place=in_place)
        name = str(checkpoint.path) if checkpoint.path else "<in memory>"
        self._setup(backend, checkpoint.landmarks, checkpoint.config, name, detector, depth_scaling)
        self.checkpoint = checkpoint
        self.model = backend.model

    @classmethod
    def from_backend(cls, backend: Backend, landmark_set: LandmarkSet, config: ModelConfig, name: str,
                     detector: Any = None, depth_scaling: str | DepthScaling | None = None) -> "Aligner":
        """An Aligner around any backend (e.g. `OnnxBackend`), without a PyTorch checkpoint."""
        aligner = cls.__new__(cls)
        aligner._setup(backend, landmark_set, config, name, detector, depth_scaling)
        aligner.checkpoint = None
        aligner.model = None
        return aligner

    def _setup(self, backend: Backend, landmark_set: LandmarkSet, config: ModelConfig, name: str,
               detector: Any, depth_scaling: str | DepthScaling | None = None) -> None:
        # the model's preprocessing; the rule for images deeper than 8 bits is the model's own
        # (recorded by `spiga train`; None: uint16 / 257) unless the caller gives one
        self.preprocessing: Preprocessing = config.preprocessing
        if depth_scaling is not None:
            rule = DepthScaling.parse(depth_scaling) if isinstance(depth_scaling, str) else depth_scaling
            self.preprocessing = replace(self.preprocessing, depth_scaling=rule)
        self.backend = backend
        self.device = backend.device
        self.precision = backend.precision
        self.max_batch = backend.max_batch
        self.landmark_set = landmark_set
        self.config = config
        self.name = name
        self.detector = detector

    @property
    def depth_scaling(self) -> DepthScaling | None:
        """The rule for images deeper than 8 bits (`preprocessing.depth_scaling`)."""
        return self.preprocessing.depth_scaling

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

    def detect(self, image_bgr: np.ndarray, path: str | os.PathLike | None = None
               ) -> tuple[np.ndarray, list[float]]:
        """Face boxes for SPIGA (the detector's boxes through the documented mapping,
        `spiga.detection.face_box_from_detection`) and the detector's scores. A box-file
        detector (`file:BOXES`) is asked for the boxes of `path`."""
        from ..detection import face_box_from_detection

        detector = self.get_detector()
        if hasattr(detector, "faces_for") and path is not None:
            detections = detector.faces_for(str(path))
        else:
            detections = detector.detect(image_bgr)
        boxes = np.array([face_box_from_detection(d) for d in detections], dtype=np.float64).reshape(-1, 4)
        return boxes, [float(d.score) for d in detections]

    def face_boxes(self, image_bgr: np.ndarray, boxes: Any = None, scores: Sequence[float | None] | None = None,
                   path: str | os.PathLike | None = None, max_faces: int | None = None) -> FaceBoxes:
        """The faces to align in one image: `boxes` checked (`validate_boxes`), or the
        detector's, the `max_faces` best-scored kept.

        Args:
            scores: a score per given box (reported as given), or None.
            path: the image's file, for a box-file detector.
        """
        height, width = image_bgr.shape[:2]
        if boxes is None:
            found, detected = self.detect(image_bgr, path)
            validate_boxes(found, width, height)
            return cap_faces(FaceBoxes(found, list(detected)), max_faces)
        array = validate_boxes(boxes, width, height)
        given = [None] * len(array) if scores is None else list(scores)
        if len(given) != len(array):
            raise InputError(f"{len(array)} boxes but {len(given)} scores")
        return FaceBoxes(array, given)

    def crop_faces(self, image_bgr: np.ndarray, faces: FaceBoxes) -> FaceCrops:
        """Crop `faces` of one BGR uint8 image for the network (one vectorised crop)."""
        if len(faces.boxes) == 0:
            size = self.preprocessing.crop_size
            return FaceCrops(faces, np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 2, 3)))
        crops, matrices = crop_images(image_bgr, faces.boxes, self.preprocessing)
        return FaceCrops(faces, crops, matrices)

    def faces_from_crops(self, crops: FaceCrops, landmarks_crop: np.ndarray, poses: np.ndarray) -> list[Face]:
        """The network's outputs for `crops` (landmarks in crop pixels (N, L, 2), poses (N, 6))
        -> `Face`s in image pixels, in box order."""
        landmarks = transform_points(landmarks_crop, invert_affine(crops.matrices)) if len(crops) else landmarks_crop
        crop = self.preprocessing
        return [Face(box=tuple(float(v) for v in box), landmarks=landmarks[i], headpose=HeadPose(*map(float, poses[i])),
                     score=crops.faces.scores[i], crop_matrix=crops.matrices[i], crop_size=crop.crop_size,
                     focal_ratio=crop.focal_ratio)
                for i, box in enumerate(crops.faces.boxes)]

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
        bgr = read_image(image, color=color, depth_scaling=self.depth_scaling, allow_damaged=self.allow_damaged)
        path = image if isinstance(image, (str, os.PathLike)) else None
        return self.align_many([bgr], [boxes], paths=[path])[0]

    def align_array(self, bgr: np.ndarray, boxes: Any = None) -> list[Face]:
        """`align` for an image already in BGR uint8 (H, W, 3)."""
        return self.align_many([bgr], [boxes])[0]

    def align_many(self, images_bgr: Sequence[np.ndarray], boxes_list: Sequence[Any] | None = None,
                   scores_list: Sequence[Sequence[float | None] | None] | None = None,
                   paths: Sequence[str | os.PathLike | None] | None = None) -> list[list[Face]]:
        """The faces of several images, all in one batch: the one path from images to faces
        (find or check the boxes, crop, run the network once, map back).

        Args:
            images_bgr: BGR uint8 (H, W, 3) images (sizes may differ).
            boxes_list: per image, its face boxes (x, y, w, h), or None to detect its faces;
                None for all: detect in every image.
            scores_list: per image, a score per box (or None) to report with given boxes.
            paths: per image, its file (for a box-file detector), or None.
        Returns:
            per image, its `Face`s in box order.
        """
        count = len(images_bgr)
        boxes_list = [None] * count if boxes_list is None else list(boxes_list)
        scores_list = [None] * count if scores_list is None else list(scores_list)
        paths = [None] * count if paths is None else list(paths)
        if not len(boxes_list) == len(scores_list) == len(paths) == count:
            raise InputError(f"align_many: {count} images but {len(boxes_list)} box lists, {len(scores_list)} score "
                             f"lists and {len(paths)} paths")
        crops = [self.crop_faces(bgr, self.face_boxes(bgr, boxes, scores, path))
                 for bgr, boxes, scores, path in zip(images_bgr, boxes_list, scores_list, paths)]
        if not any(len(c) for c in crops):
            return [[] for _ in range(count)]
        landmarks_crop, poses = self.predict_crops(np.concatenate([c.crops for c in crops]))
        results, start = [], 0
        for image_crops in crops:
            end = start + len(image_crops)
            results.append(self.faces_from_crops(image_crops, landmarks_crop[start:end], poses[start:end]))
            start = end
        return results


@dataclass
class FaceBoxes:
    """The faces of one image to align: boxes (N, 4) x, y, w, h and a score per box (None
    for given boxes); `dropped`: detected faces left out by `max_faces`."""

    boxes: np.ndarray
    scores: list[float | None]
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class FaceCrops:
    """`FaceBoxes` cropped for the network: crops (N, S, S, 3) BGR uint8 and the (N, 2, 3)
    affine maps from image to crop pixels."""

    faces: FaceBoxes
    crops: np.ndarray
    matrices: np.ndarray

    def __len__(self) -> int:
        return len(self.crops)


def cap_faces(faces: FaceBoxes, max_faces: int | None) -> FaceBoxes:
    """The `max_faces` best-scored faces (in their order), the rest counted in `dropped`."""
    if max_faces is None or len(faces) <= max_faces:
        return faces
    scores = np.array([-np.inf if s is None else s for s in faces.scores], np.float64)
    best = np.sort(np.argsort(-scores, kind="stable")[:max_faces])
    return FaceBoxes(faces.boxes[best], [faces.scores[i] for i in best], faces.dropped + len(faces) - max_faces)


def load(model: str | os.PathLike = "wflw", device: str | torch.device | None = None,
         precision: str = "float32", backend: str = "torch", compile: bool = False, **options: Any) -> Aligner:
    """Load a model for alignment.

    Args:
        model: a named official model (`wflw`, `300wpublic`, `300wprivate`, `merlrav`,
            `cofw68`; downloaded and cached on first use), a spiga checkpoint path, or,
            with `backend="onnxruntime"` or `"openvino"`, an `.onnx` file written by `spiga export`.
        device: `"cpu"`, `"cuda"`, `"cuda:1"`, ...; None picks CUDA when available, else CPU.
        precision: `"float32"` (default), `"bfloat16"` (CPU with AVX-512 BF16/AMX, or CUDA)
            or `"float16"` (CUDA only). The backbone runs in it; pose and landmark geometry
            stay float32.
        backend: `"torch"` (default), `"onnxruntime"` (float32) or `"openvino"` (float32, or
            bfloat16 where the CPU has it; the `openvino` extra); for these two a checkpoint
            is exported to a temporary .onnx file first.
        compile: `torch.compile` the network (frozen weights). Pays off only for long runs:
            every new batch size compiles for about a minute on a small CPU.
        options: `max_batch` (faces per network call, default 32), `detector` (the face
            detector used when `align` gets no boxes: a name for `spiga.detection.make_detector`,
            `blazeface` by default, `haar`, `dlib`, `file:PATH`; a `Detector`; or None),
            `tune_process` (torch backend on CPU: keep large freed blocks in the heap, a
            process-wide setting, and flush denormal floats to zero during each network call;
            default False, the `spiga` commands pass True; see `tune_cpu_process`),
            `depth_scaling` (how images deeper than 8 bits, e.g. 16-bit thermal, are scaled:
            a `spiga.io.DepthScaling` rule such as "percentile:1:99"; default: the rule the
            model was trained with, recorded in its checkpoint, else uint16 / 257),
            `allow_damaged` (accept JPEG files whose data is damaged or cut short, the
            missing part gray; default False: refused with `ImageError`).
    """
    check_installation_once()  # the mixed-install check, here rather than at `import spiga`
    allow_damaged = bool(options.pop("allow_damaged", False))
    aligner = _load(model, device, precision, backend, compile, **options)
    aligner.allow_damaged = allow_damaged
    return aligner


def _load(model: str | os.PathLike, device: str | torch.device | None, precision: str, backend: str, compile: bool,
          **options: Any) -> Aligner:
    if backend not in BACKENDS:
        raise SpigaError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend != "torch":  # onnxruntime, openvino: a graph written by `spiga export`
        from .graphs import open_graph_backend

        unknown = set(options) - {"max_batch", "detector", "tune_process", "depth_scaling"}
        if unknown:
            raise TypeError(f"load() got unexpected options: {', '.join(sorted(unknown))}")
        onnx, name = open_graph_backend(backend, model, device, precision, compile, options.get("max_batch", 32))
        return Aligner.from_backend(onnx, onnx.landmark_set, onnx.config, name, options.get("detector", "blazeface"),
                                    options.get("depth_scaling"))
    path = resolve_model(model)
    # the checkpoint is this load's own: its model is prepared in place, not copied
    return Aligner(load_checkpoint(path), device=device, precision=precision, compile=compile, in_place=True,
                   **options)
