"""Backends: what runs the network for an `Aligner`.

A backend has one job, `predict_crops(crops)`: (B, S, S, 3) BGR uint8 face crops ->
landmarks (B, L, 2) in crop pixels and pose (B, 6), both float64 NumPy arrays. The
`Aligner` around it crops, back-projects and builds `Face`s, the same for every backend.

- `TorchBackend`: PyTorch, on CPU or CUDA, float32 / bfloat16 / float16 / float64,
  optionally `torch.compile`d; runs the inference copy of the `SPIGA` made by
  `prepare_for_inference` (the model's own forward, transformed).
- `OnnxBackend` (`onnx_backend.py`): onnxruntime on a graph written by `spiga export`.
- `OpenVinoBackend` (`openvino_backend.py`): OpenVINO's CPU plugin on the same graph
  (float32, or bfloat16 where the CPU has it; the `openvino` extra).
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Protocol

import numpy as np
import torch

from .. import choices
from ..model import SPIGA
from .cpu import flushed_denormals
from .optimize import precision_dtype, prepare_for_inference

log = logging.getLogger(__name__)

BACKENDS = choices.BACKENDS

_GLIBC_M_TRIM_THRESHOLD = -1
_GLIBC_M_MMAP_THRESHOLD = -3
_process_tuned = False


def tune_cpu_process() -> None:
    """Process-wide settings that make CPU inference faster (applied once; `spiga.load(...,
    tune_process=True)`, which the `spiga` commands pass):

    - with glibc, large freed blocks stay in the heap (`mallopt` M_MMAP_THRESHOLD and
      M_TRIM_THRESHOLD at 1 GiB): otherwise every activation above 32 MiB (a batch of 4 or
      more faces) is a fresh `mmap` whose pages fault in on every call, which measured
      about 20% of the time per face at batch 8. The process then keeps its peak memory;
    - what loading and preparing the model freed goes back to the system (`malloc_trim`).

    With it the backend also flushes denormal floats to zero during each network call
    (`spiga.inference.cpu.flushed_denormals`, restored after the call).
    """
    global _process_tuned
    libc = _glibc()
    if libc is not None:
        # what loading and preparing the model freed goes back to the system first
        libc.malloc_trim(0)
    if _process_tuned:
        return
    _process_tuned = True
    if libc is not None:
        limit = 1 << 30
        ok = libc.mallopt(_GLIBC_M_MMAP_THRESHOLD, limit) and libc.mallopt(_GLIBC_M_TRIM_THRESHOLD, limit)
        log.debug("glibc mallopt for large blocks: %s", "set" if ok else "refused")


def _glibc():
    """The C library when it is glibc (which has mallopt / malloc_trim), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only: other C libraries have no such knobs
        return libc
    except (OSError, AttributeError):
        return None


class Backend(Protocol):
    name: str
    device: torch.device | str
    precision: str
    max_batch: int
    mean_face_3d: np.ndarray | None  # (L, 3) world-frame mean face, for mesh drawings

    def predict_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, S, 3) BGR uint8 -> landmarks (B, L, 2) crop pixels, pose (B, 6); float64."""
        ...


def batch_bucket(size: int, max_batch: int) -> int:
    """The smallest power of two >= size (capped at max_batch): compiled graphs are made for
    these sizes only, so a run meets at most log2(max_batch) + 1 of them."""
    bucket = 1
    while bucket < size:
        bucket *= 2
    return min(bucket, max_batch)


class TorchBackend:
    """PyTorch inference on an optimised copy of a `SPIGA`.

    Args:
        model: the network (unchanged, the backend keeps an optimised copy; with `in_place`
            the backend prepares the model itself, which then no longer trains or exports).
        device: where it runs.
        precision: "float32", "bfloat16", "float16" (CUDA only) or "float64".
        max_batch: faces per network call (larger inputs are split).
        compile: `torch.compile` with frozen weights. Each new batch size compiles once
            (about a minute for the official model on a small CPU); batches are padded to a
            power of two so that few sizes occur.
        tune_process: on CPUs, apply `tune_cpu_process()` (keep large freed blocks in the
            heap: a process-wide setting) and flush denormals to zero during each call.
        in_place: prepare `model` itself instead of a copy (`spiga.load`: the model is its own).
    """

    name = "torch"

    def __init__(self, model: SPIGA, device: torch.device, precision: str = "float32", max_batch: int = 32,
                 compile: bool = False, tune_process: bool = False, in_place: bool = False):
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = precision_dtype(precision, self.device)
        self.max_batch = int(max_batch)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.mean_face_3d = model.mean_face_3d.detach().cpu().double().numpy()
        self.image_size = model.config.image_size
        self.num_landmarks = model.config.num_landmarks
        # torch.compile does its own oneDNN fusion, on the plain (unfused) module
        self.network = prepare_for_inference(model, precision, self.device, fuse=False if compile else None,
                                             in_place=in_place)
        self.flush_denormal = tune_process and self.device.type == "cpu"
        if self.flush_denormal:
            tune_cpu_process()
        self.compiled = compile
        self._run = self.network
        if compile:
            self._run = torch.compile(self.network, dynamic=False, options={"freezing": True})

    def predict_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.flush_denormal:
            # per call and per thread (this call may come from another thread than the one
            # that loaded the model), restored after: the caller's arithmetic stays IEEE
            with flushed_denormals():
                return self._predict_crops(crops)
        return self._predict_crops(crops)

    @torch.inference_mode()
    def _predict_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        landmarks, poses = [], []
        for start in range(0, len(crops), self.max_batch):
            chunk = crops[start:start + self.max_batch]
            count = len(chunk)
            if self.compiled and count < self.max_batch:
                padding = batch_bucket(count, self.max_batch) - count
                if padding:
                    chunk = np.concatenate([chunk, np.zeros((padding, *chunk.shape[1:]), chunk.dtype)])
            # uint8 crosses to the device (4x less traffic than float); NHWC -> NCHW is a view
            # that is already channels-last in memory
            images = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device).permute(0, 3, 1, 2)
            # float32 crops whatever the precision: the network casts them to its own dtype
            # (the original feeds float32 crops in every precision too)
            images = images.float().div_(255.0)
            out = self._run(images)
            points, pose = out["landmarks"][-1], out["pose"]
            landmarks.append(points[:count].double().cpu().numpy() * self.image_size)
            poses.append(pose[:count].double().cpu().numpy())
        if not landmarks:
            return np.zeros((0, self.num_landmarks, 2)), np.zeros((0, 6))
        return np.concatenate(landmarks), np.concatenate(poses)
