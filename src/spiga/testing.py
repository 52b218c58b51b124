"""Stand-in models for tests, tools, speed scripts and documentation checks.

A random-weight checkpoint runs every code path of the real ones (the same file format,
sizes and landmark layouts) without a download: `random_checkpoint` is the one recipe for it.

    from spiga.testing import random_checkpoint
    path = random_checkpoint("tiny.safetensors", size="tiny", landmark_set="wflw98", seed=0)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .landmarks import LandmarkSet


def random_mean_face(num_landmarks: int, seed: int = 0) -> np.ndarray:
    """(L, 3) points spread over a face-sized box in the mean-face frame (x to the
    subject's left, y up, z out of the face), seeded."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(-0.3, 0.1, num_landmarks), rng.uniform(-0.8, 0.8, num_landmarks),
                            rng.uniform(-1.0, 1.0, num_landmarks)])


def random_model(size: str = "tiny", landmark_set: LandmarkSet | str | os.PathLike = "wflw98", seed: int = 0,
                 mean_face_3d: np.ndarray | None = None):
    """A SPIGA network of a named size (`tiny`, `small`, `official`) with seeded random
    weights, in evaluation mode, and its landmark set: `(model, landmark_set)`."""
    import torch

    from .checkpoint import build_model
    from .landmarks import resolve_landmark_set
    from .model import ModelConfig

    landmarks = resolve_landmark_set(landmark_set)
    config = ModelConfig.sized(size, landmarks.num_landmarks, landmarks.num_edges)
    if mean_face_3d is None:
        mean_face_3d = random_mean_face(landmarks.num_landmarks, seed)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        model = build_model(config, landmarks, mean_face_3d).eval()
    return model, landmarks


def random_checkpoint(path: str | os.PathLike, size: str = "tiny",
                      landmark_set: LandmarkSet | str | os.PathLike = "wflw98", seed: int = 0,
                      mean_face_3d: np.ndarray | None = None, extra: dict | None = None) -> Path:
    """Write a random-weight spiga checkpoint to `path` (see `random_model`) and return the path;
    `extra` is more header metadata (e.g. `{"depth_scaling": "percentile:1:99"}`)."""
    from .checkpoint import save_checkpoint

    model, landmarks = random_model(size, landmark_set, seed, mean_face_3d)
    return save_checkpoint(path, model, landmarks, extra)
