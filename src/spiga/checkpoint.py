"""spiga's checkpoint format, conversion of official files, safe loading.

A checkpoint is one safetensors file: the model's state_dict, the 3D mean face under
the key `spiga.mean_face_3d`, and a JSON header (safetensors metadata key `spiga`)
with everything else needed to run the weights: format version, model sizes
(`ModelConfig`), the landmark set (ids, mirror order, edge groups), and crop and
camera settings. Loading never executes code from the file: safetensors holds only
tensors, and official `.pt` files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .errors import CheckpointError, SpigaError
from .io import write_atomic
from .landmarks import LandmarkSet, landmark_set_for, read_mean_face
from .model import SPIGA, ModelConfig, official_to_own

FORMAT_NAME = "spiga-checkpoint"
FORMAT_VERSION = 1
MEAN_FACE_KEY = "spiga.mean_face_3d"


@dataclass
class Checkpoint:
    """A model ready to run, with what it needs around it."""

    model: SPIGA
    landmarks: LandmarkSet
    config: ModelConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def build_model(config: ModelConfig, landmarks: LandmarkSet, mean_face_3d: np.ndarray | None = None) -> SPIGA:
    """A SPIGA network for `landmarks`, with the mean face set when given."""
    if (config.num_landmarks, config.num_edges) != (landmarks.num_landmarks, landmarks.num_edges):
        raise SpigaError(
            f"model configuration is for {config.num_landmarks} points / {config.num_edges} edges but landmark set "
            f"{landmarks.name!r} has {landmarks.num_landmarks} / {landmarks.num_edges}")
    mean_face = None if mean_face_3d is None else torch.as_tensor(np.asarray(mean_face_3d), dtype=torch.float32)
    return SPIGA(config, torch.from_numpy(landmarks.edge_matrix()), mean_face)


def save_checkpoint(path: str | os.PathLike, model: SPIGA, landmarks: LandmarkSet,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write `model` (weights, mean face, sizes, landmark set) to one safetensors file, atomically."""
    path = Path(path)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    tensors[MEAN_FACE_KEY] = model.mean_face_3d.detach().cpu().float().contiguous()
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "landmarks": landmarks.to_dict(),
        "crop": {"size": model.config.image_size, "enlarge": model.config.crop_enlarge},
        "camera": {"focal_ratio": model.config.focal_ratio, "feature_size": model.config.feature_size},
        "input": {"color": "bgr", "range": [0.0, 1.0]},
        **(extra or {}),
    }
    write_atomic(path, save_safetensors_bytes(tensors, metadata={"spiga": json.dumps(header)}))
    return path


def _read_header(data: bytes, source: str) -> dict[str, Any]:
    """The JSON header of a safetensors file, without deserialising tensors."""
    if len(data) < 8:
        raise CheckpointError(f"{source}: file is too short to be a checkpoint ({len(data)} bytes)")
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or 8 + size > len(data):
        raise CheckpointError(f"{source}: not a spiga checkpoint, or truncated (header of {size} bytes, file of {len(data)})")
    try:
        header = json.loads(data[8:8 + size])
        return json.loads(header["__metadata__"]["spiga"])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise CheckpointError(f"{source}: safetensors file without a spiga header (not written by spiga?)") from None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a spiga checkpoint. Raises `CheckpointError` naming the file and the problem."""
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{source}: is a directory, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{source}: cannot read ({exc.strerror or exc})") from None
    # safetensors: an 8-byte header length, then the JSON header (the length's first byte may
    # well be 0x80, a pickle's first byte)
    looks_like_safetensors = data[8:9] == b"{"
    if not looks_like_safetensors and (data[:2] == b"PK" or data[:1] == b"\x80"):
        raise CheckpointError(
            f"{source}: this is a PyTorch pickle (.pt), not a spiga checkpoint; convert official weights with "
            f"`spiga convert {path.name} --config NAME --mean-face FILE --out MODEL.safetensors`")
    header = _read_header(data, source)
    if header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{source}: header format is {header.get('format')!r}, expected {FORMAT_NAME!r}")
    if int(header.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format version {header['version']} is newer than this "
                              f"spiga understands ({FORMAT_VERSION}); upgrade spiga")
    try:
        config = ModelConfig.from_dict(header["model_config"])
        landmarks = LandmarkSet.from_dict(header["landmarks"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{source}: header lacks {exc}") from None
    except SpigaError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: corrupt or truncated tensor data ({exc})") from None
    mean_face = tensors.pop(MEAN_FACE_KEY, None)
    if mean_face is None:
        raise CheckpointError(f"{source}: no 3D mean face stored (key {MEAN_FACE_KEY!r})")
    try:
        model = build_model(config, landmarks)
    except SpigaError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    _load_state(model, tensors, source)
    try:
        model.set_mean_face(mean_face)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    model.eval().to(device)
    return Checkpoint(model, landmarks, config, header, path)


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict state_dict loading with a readable account of what does not fit."""
    state = dict(state)
    official_to_own(state)  # official layout (or checkpoints written in it) -> the model's
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} tensors of the wrong shape (e.g. {'; '.join(wrong[:3])})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(parts))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: non-finite values in {len(bad)} tensors (e.g. {bad[0]})")
    model.load_state_dict(state, strict=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def load_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official `spiga_<name>.pt` state_dict without executing code from it."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise CheckpointError(f"{source}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{source}: empty file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{source}: refused to load: the file holds Python objects other than tensors, which could run "
            f"code ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{source}: corrupt or truncated PyTorch file ({_first_line(exc)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: expected a state_dict (a mapping of names to tensors)")
    return state


def convert_official(weights: str | os.PathLike, config_name: str, mean_face: str | os.PathLike,
                     out: str | os.PathLike, model_config: ModelConfig | None = None) -> Path:
    """Official state_dict + mean-face text file -> a spiga checkpoint at `out`.

    `config_name` is an official configuration (`wflw`, `300wpublic`, `300wprivate`,
    `merlrav`, `cofw68`); it fixes the landmark set. The constant tensors stored in the
    official file (edge matrix, coordinate channels) are checked against ours.
    """
    landmarks = landmark_set_for(config_name)
    config = model_config or ModelConfig.official(landmarks.num_landmarks, landmarks.num_edges)
    state = load_official_state_dict(weights)
    mean_face_world = read_mean_face(mean_face, landmarks)
    model = build_model(config, landmarks, mean_face_world)
    constants = ("visual_cnn.E2Ptransform.edge2point", "visual_cnn.pre.0.xx_channel", "visual_cnn.pre.0.yy_channel",
                 "diagonal_mask")
    reference = {key: value.clone() for key, value in model.state_dict().items() if key in constants}
    _load_state(model, state, str(weights))
    for key in constants:
        if not torch.equal(state[key].to(reference[key].dtype), reference[key]):
            raise CheckpointError(
                f"{weights}: constant tensor {key} differs from configuration {config_name!r}: the weights were "
                f"made for another landmark layout or model")
    return save_checkpoint(out, model, landmarks, {"source": {"official": config_name, "file": Path(weights).name}})
