"""Shared test fixtures: the path to ../shared, tiny checkpoints made on the fly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: The original release's two 3D mean faces (mean_face_3D_98.txt, mean_face_3D_68.txt).
UPSTREAM_MEAN_FACES = SHARED / "fixtures" / "upstream" / "models3D"


def shared_path(*parts: str) -> Path:
    """A file under ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)} (the project's shared fixtures), absent in this checkout")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny-size WFLW-layout checkpoint with seeded random weights and a synthetic mean face."""
    from spiga.testing import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", "tiny", "wflw98", seed=0)


@pytest.fixture(scope="session")
def face_image() -> np.ndarray:
    """A 200x240 BGR test image with a bright ellipse as a 'face'."""
    import cv2

    image = np.full((200, 240, 3), 40, np.uint8)
    cv2.ellipse(image, (120, 100), (50, 65), 0, 0, 360, (150, 170, 210), -1)
    return image


@pytest.fixture
def image_file(tmp_path, face_image) -> Path:
    """`face_image` as a PNG file."""
    import cv2

    path = tmp_path / "face.png"
    cv2.imwrite(str(path), face_image)
    return path


EQUIVALENCE_FIXTURES = (sorted((SHARED / "fixtures" / "equivalence").glob("*_sportsfan.json"))
                        if SHARED.exists() else [])


@pytest.fixture(scope="session", params=EQUIVALENCE_FIXTURES or [None], ids=lambda p: p.stem if p else "absent")
def equivalence_model(request, tmp_path_factory):
    """(reference outputs of the original, converted checkpoint path, scratch folder) for each
    fixture in ../shared/fixtures/equivalence: the seeded random weights are regenerated with
    the shared tool and converted with `spiga convert` (once per session)."""
    from spiga.cli import main as cli
    from spiga.hub import OFFICIAL_MEAN_FACES

    if request.param is None:
        pytest.skip("needs ../shared/fixtures/equivalence (the project's shared fixtures), absent in this checkout")
    reference = json.loads(request.param.read_text())
    weights = reference["weights"]
    folder = tmp_path_factory.mktemp(request.param.stem)
    official = folder / "official.pt"
    subprocess.run(
        [sys.executable, str(SHARED / "tools" / "random_spiga_weights.py"), "--landmarks", str(weights["landmarks"]),
         "--seed", str(weights["seed"]), "--bn-stats", str(request.param.parent / weights["bn_stats"]),
         "--out", str(official)],
        check=True)
    model = folder / "model.safetensors"
    mean_face = UPSTREAM_MEAN_FACES / OFFICIAL_MEAN_FACES[weights["landmarks"]].file
    assert cli(["convert", str(official), "--config", reference["dataset"], "--mean-face", str(mean_face),
                "--out", str(model)]) == 0
    official.unlink()
    return reference, model, folder


@pytest.fixture
def one_torch_thread():
    """One thread (use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`): the
    tiny model gains nothing from more, and on a busy machine several threads contend (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
