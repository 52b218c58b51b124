"""Shared test fixtures: the path to ../shared, tiny checkpoints made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A file under ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)} (the project's shared fixtures), absent in this checkout")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny-size WFLW-layout checkpoint with seeded random weights and a synthetic mean face."""
    from spiga.checkpoint import build_model, save_checkpoint
    from spiga.landmarks import WFLW_98
    from spiga.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig.sized("tiny", WFLW_98.num_landmarks, WFLW_98.num_edges)
    rng = np.random.default_rng(0)
    mean_face = np.column_stack([rng.uniform(-0.3, 0.1, 98), rng.uniform(-0.8, 0.8, 98), rng.uniform(-1, 1, 98)])
    model = build_model(config, WFLW_98, mean_face).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, model, WFLW_98)
    return path


@pytest.fixture(scope="session")
def face_image() -> np.ndarray:
    """A 200x240 BGR test image with a bright ellipse as a 'face'."""
    import cv2

    image = np.full((200, 240, 3), 40, np.uint8)
    cv2.ellipse(image, (120, 100), (50, 65), 0, 0, 360, (150, 170, 210), -1)
    return image
