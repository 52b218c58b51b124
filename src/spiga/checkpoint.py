"""spiga's checkpoint format, conversion of official files, safe loading.

A checkpoint is one safetensors file: the model's state_dict, the 3D mean face under
the key `spiga.mean_face_3d`, and a JSON header (safetensors metadata key `spiga`)
with everything else needed to run the weights: format version, model sizes
(`ModelConfig`), the landmark set (ids, mirror order, edge groups), and the
preprocessing (`spiga.preprocess.Preprocessing`: crop, camera, depth rule). Loading never executes code from the file: safetensors holds only
tensors, and official `.pt` files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes

from .errors import CheckpointError, SpigaError
from .io import parse_json, write_atomic
from .landmarks import LandmarkSet, landmark_set_for, read_mean_face
from .model import SPIGA, ModelConfig, official_to_own
from .preprocess import Preprocessing

FORMAT_NAME = "spiga-checkpoint"
FORMAT_VERSION = 1
MEAN_FACE_KEY = "spiga.mean_face_3d"
#: The safetensors metadata key holding the JSON header.
HEADER_KEY = "spiga"


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
        "preprocessing": model.config.preprocessing.to_dict(),
        "input": {"color": "bgr", "range": [0.0, 1.0]},
        **(extra or {}),
    }
    write_atomic(path, save_safetensors_bytes(tensors, metadata={HEADER_KEY: json.dumps(header)}))
    return path


def _open_file(path: Path, source: str):
    """`safe_open` on `path` (memory-mapped: tensors are read from the file as they are
    used, never the whole file into memory first), with every refusal a CheckpointError."""
    try:
        with path.open("rb") as handle:
            start = handle.read(8)
    except FileNotFoundError:
        raise CheckpointError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{source}: is a directory, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if len(start) < 8:
        raise CheckpointError(f"{source}: file is too short to be a checkpoint ({len(start)} bytes)")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        # only now: a safetensors header length may begin with these bytes too
        if start[:4] == b"PK\x03\x04" or (start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
            raise CheckpointError(
                f"{source}: this is a PyTorch pickle (.pt), not a spiga checkpoint; convert official weights with "
                f"`spiga convert {path.name} --config NAME --mean-face FILE --out MODEL.safetensors`") from None
        raise CheckpointError(f"{source}: not a safetensors file, or a truncated one ({_first_line(exc)})") from None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _read_header(metadata: dict[str, str] | None, source: str) -> dict[str, Any]:
    """The spiga header (safetensors metadata key `spiga`) as a JSON object."""
    if not metadata or HEADER_KEY not in metadata:
        raise CheckpointError(f"{source}: safetensors file without a spiga header (metadata key {HEADER_KEY!r}; "
                              "not written by spiga?)")
    header = parse_json(metadata[HEADER_KEY], f"{source}: header {HEADER_KEY!r}", CheckpointError)
    if not isinstance(header, dict):
        raise CheckpointError(f"{source}: header {HEADER_KEY!r} is {_kind(header)}, expected a JSON object")
    return header


def _field(header: dict[str, Any], name: str, source: str) -> Any:
    if name not in header:
        raise CheckpointError(f"{source}: header field {name!r} is missing")
    return header[name]


def _check_format(header: dict[str, Any], source: str) -> int:
    """The format version, after checking the format name."""
    fmt = _field(header, "format", source)
    if fmt != FORMAT_NAME:
        raise CheckpointError(f"{source}: header field 'format' is {_describe(fmt)}, expected {FORMAT_NAME!r}")
    version = _field(header, "version", source)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{source}: header field 'version' must be an integer, got {_kind(version)} "
                              f"({_describe(version)})")
    if version < 1:
        raise CheckpointError(f"{source}: header field 'version' is {version}; versions start at 1")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format version {version} is newer than this spiga "
                              f"understands ({FORMAT_VERSION}); upgrade spiga")
    return version


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_sizes(header: dict[str, Any], source: str) -> tuple[ModelConfig, LandmarkSet]:
    """Model configuration and landmark set from the header, each checked (types, bounds)."""
    parsed = {}
    for name, parse in (("model_config", ModelConfig.from_dict), ("landmarks", LandmarkSet.from_dict)):
        value = _field(header, name, source)
        if not isinstance(value, dict):
            raise CheckpointError(f"{source}: header field {name!r} is {_kind(value)}, expected a JSON object")
        try:
            parsed[name] = parse(value)
        except SpigaError as exc:
            raise CheckpointError(f"{source}: header field {name!r}: {exc}") from None
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise CheckpointError(f"{source}: header field {name!r} is malformed ({_first_line(exc)})") from None
    config, landmarks = parsed["model_config"], parsed["landmarks"]
    if (config.num_landmarks, config.num_edges) != (landmarks.num_landmarks, landmarks.num_edges):
        raise CheckpointError(
            f"{source}: header fields 'model_config' ({config.num_landmarks} points, {config.num_edges} edge groups) "
            f"and 'landmarks' ({landmarks.num_landmarks} points, {landmarks.num_edges} groups) disagree")
    return config, landmarks


def read_preprocessing(header: dict[str, Any], config: ModelConfig, source: str,
                       error: type[SpigaError] = CheckpointError) -> ModelConfig:
    """`config` with the preprocessing a checkpoint or ONNX header records (field
    `preprocessing`; files written before it: the crop and camera of `model_config` and the
    top-level `depth_scaling`)."""
    try:
        if "preprocessing" in header:
            preprocessing = Preprocessing.from_dict(header["preprocessing"])
        else:
            preprocessing = Preprocessing.from_legacy_header(header, config.preprocessing)
        return config.with_preprocessing(preprocessing)
    except SpigaError as exc:
        raise error(f"{source}: header field 'preprocessing': {exc}") from None
    except (TypeError, ValueError) as exc:
        raise error(f"{source}: header field 'preprocessing' is malformed ({_first_line(exc)})") from None


def parameter_count(config: ModelConfig) -> int:
    """Learned values of a network of `config`, counted without allocating it (PyTorch's
    meta device; the first call in a process imports PyTorch's meta kernels, about a second)."""
    with torch.device("meta"):
        edges = torch.zeros(config.num_landmarks, config.num_edges + 1)
        model = SPIGA(config, edges, None)
    return sum(p.numel() for p in model.parameters())


def _no_larger_than_official(config: ModelConfig) -> bool:
    """Every size at most the official model's (the official, small and tiny sizes)."""
    official = ModelConfig.official()
    widest = max(official.shape_hidden + official.decoder_hidden)
    sizes = ("num_landmarks", "num_edges", "image_size", "channels", "num_stacks", "hourglass_depth", "embed_dim",
             "gat_dim", "gat_layers", "gat_heads", "cascade_steps", "window_kernel")
    return (all(getattr(config, name) <= getattr(official, name) for name in sizes)
            and all(a <= b for a, b in zip(config.stem_channels, official.stem_channels))
            and all(len(hidden) <= len(official.decoder_hidden) and max(hidden, default=0) <= widest
                    for hidden in (config.shape_hidden, config.decoder_hidden)))


def _check_file_holds_the_network(config: ModelConfig, stored: int, source: str) -> None:
    """A header asking for a network larger than the official one must come with the values
    for it: a small crafted file cannot make us allocate a large network."""
    if _no_larger_than_official(config):
        return
    needed = parameter_count(config)
    if needed > stored:
        raise CheckpointError(f"{source}: header field 'model_config' describes a network of {needed} parameters, "
                              f"but the file holds only {stored} values")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a spiga checkpoint. Raises `CheckpointError` naming the file, and the header
    field where the header is at fault."""
    path = Path(path)
    source = str(path)
    with _open_file(path, source) as handle:
        header = _read_header(handle.metadata(), source)
        _check_format(header, source)
        config, landmarks = _read_sizes(header, source)
        config = read_preprocessing(header, config, source, CheckpointError)
        keys = list(handle.keys())
        if MEAN_FACE_KEY not in keys:
            raise CheckpointError(f"{source}: no 3D mean face stored (key {MEAN_FACE_KEY!r})")
        _check_file_holds_the_network(config, sum(math.prod(handle.get_slice(key).get_shape()) for key in keys),
                                      source)
        try:
            tensors = {key: handle.get_tensor(key) for key in keys}
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{source}: corrupt tensor data ({_first_line(exc)})") from None
    mean_face = tensors.pop(MEAN_FACE_KEY)
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
