"""spiga's checkpoint format, conversion of official files, safe loading.

A checkpoint is one safetensors file: the model's state_dict, the 3D mean face under
the key `spiga.mean_face_3d`, and a JSON header (safetensors metadata key `spiga`)
with everything else needed to run the weights: format version, model sizes
(`ModelConfig`), the landmark set (ids, mirror order, edge groups), and the
preprocessing (`spiga.preprocess.Preprocessing`: crop, camera, depth rule). Loading never executes code from the file: safetensors holds only
tensors, and official `.pt` files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import shlex
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes

from .errors import CheckpointError, SpigaError
from .io import parse_json, write_output
from .landmarks import LandmarkSet, landmark_set_for, read_mean_face
from .model import SPIGA, ModelConfig, official_to_own
from .preprocess import Preprocessing

FORMAT_NAME = "spiga-checkpoint"
FORMAT_VERSION = 1
MEAN_FACE_KEY = "spiga.mean_face_3d"
#: The safetensors metadata key holding the JSON header.
HEADER_KEY = "spiga"
#: The largest magnitude a stored value may have. Trained weights, batch-norm statistics and
#: mean faces lie within a few hundred (the official models within 10); a value beyond this
#: overflows float32 within a few layers, so the file is refused at load time instead.
MAX_ABS_VALUE = 1e6


@dataclass
class Checkpoint:
    """A model ready to run, with what it needs around it."""

    model: SPIGA
    landmarks: LandmarkSet
    config: ModelConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def build_model(config: ModelConfig, landmarks: LandmarkSet, mean_face_3d: np.ndarray | None = None,
                initialise: bool = True) -> SPIGA:
    """A SPIGA network for `landmarks`, with the mean face set when given.

    `initialise=False` leaves the learned weights unset (uninitialised memory, never
    touched) for a caller that loads them next: the random initialisation of a full-size
    network costs about a quarter of a second. Constant buffers are made as always.
    """
    if (config.num_landmarks, config.num_edges) != (landmarks.num_landmarks, landmarks.num_edges):
        raise SpigaError(
            f"model configuration is for {config.num_landmarks} points / {config.num_edges} edges but landmark set "
            f"{landmarks.name!r} has {landmarks.num_landmarks} / {landmarks.num_edges}")
    mean_face = None if mean_face_3d is None else torch.as_tensor(np.asarray(mean_face_3d), dtype=torch.float32)
    with contextlib.nullcontext() if initialise else _SkipInit():
        return SPIGA(config, torch.from_numpy(landmarks.edge_matrix()), mean_face)


class _SkipInit(torch.overrides.TorchFunctionMode):
    """Within the block, PyTorch's weight initialisers (`torch.nn.init`, the random fills
    they use) leave their tensor as it is. A torch function mode is per thread: other
    threads building models meanwhile initialise as usual."""

    _SKIPPED = frozenset({torch.nn.init.uniform_, torch.nn.init.normal_, torch.nn.init.kaiming_uniform_,
                          torch.nn.init.constant_, torch.Tensor.uniform_, torch.Tensor.normal_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._SKIPPED:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


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
    write_output(path, save_safetensors_bytes(tensors, metadata={HEADER_KEY: json.dumps(header)}))
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
        if _is_torch_file(start):
            raise CheckpointError(
                f"{source}: this is a PyTorch pickle (.pt), not a spiga checkpoint; convert official weights with "
                f"`spiga convert {shlex.quote(source)} --config NAME --mean-face FILE --out MODEL.safetensors`"
            ) from None
        if path.suffix.lower() == ".onnx" or _looks_like_onnx(start):
            raise CheckpointError(f"{source}: this is an ONNX model, which the torch backend cannot run; add "
                                  "`--backend onnxruntime` (library: backend=\"onnxruntime\")") from None
        raise CheckpointError(f"{source}: not a safetensors file, or a truncated one ({_first_line(exc)})") from None


def _is_torch_file(start: bytes) -> bool:
    """`torch.save`'s formats: a zip archive, or (before PyTorch 1.6) a bare pickle."""
    return start[:4] == b"PK\x03\x04" or (start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def _looks_like_onnx(start: bytes) -> bool:
    """An ONNX ModelProto opens with field 1 (ir_version, a small varint), then field 2
    (producer name), 7 (graph) or 8 (opset imports)."""
    return len(start) >= 3 and start[0] == 0x08 and start[1] < 0x80 and start[2] in (0x12, 0x1A, 0x22, 0x3A, 0x42)


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
    source = os.fspath(path)  # messages and hints quote the path as given
    path = Path(path)
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
    _check_mean_face(mean_face, source)
    try:
        model = build_model(config, landmarks, initialise=False)  # every learned value comes from the file
    except SpigaError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    _load_state(model, tensors, source, assign=True)
    try:
        model.set_mean_face(mean_face)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    model.eval().to(device)
    return Checkpoint(model, landmarks, config, header, path)


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Strict state_dict loading with a readable account of what does not fit. `assign`: the
    model takes the file's tensors as its own (cast to its dtypes) instead of copying them
    into its own, for a model built without initialisation."""
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
    for key, value in state.items():
        _check_values(key, value, expected[key].dtype, source)
    if assign:
        state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)


def _dtype_fits(stored: torch.dtype, expected: torch.dtype) -> bool:
    """Floating values for floating tensors (any precision: cast exactly enough), integers
    for integer ones (batch counters), bool for masks; never bool or complex in place of
    numbers, which a cast would change."""
    if stored == expected:
        return True
    if stored == torch.bool or expected == torch.bool or stored.is_complex:
        return False
    if expected.is_floating_point:
        return stored.is_floating_point
    return not stored.is_floating_point


def _check_values(key: str, value: torch.Tensor, expected: torch.dtype, source: str) -> None:
    """One stored tensor: a dtype the network can take without changing values, finite,
    within `MAX_ABS_VALUE`, and batch-norm variances not negative."""
    if not _dtype_fits(value.dtype, expected):
        raise CheckpointError(f"{source}: tensor {key} is {str(value.dtype).removeprefix('torch.')}, the model "
                              f"expects {str(expected).removeprefix('torch.')} (a damaged or foreign file)")
    if not value.is_floating_point() or not value.numel():
        return
    # one pass over the values (a NaN makes both NaN and fails the range test); the cause is
    # looked for only in a tensor that fails
    low, high = (float(bound) for bound in torch.aminmax(value))
    if not -MAX_ABS_VALUE <= low <= high <= MAX_ABS_VALUE:
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{source}: tensor {key} holds NaN or infinite values")
        raise CheckpointError(f"{source}: tensor {key} holds a value of magnitude {max(-low, high):.3g}, beyond "
                              f"the plausible {MAX_ABS_VALUE:g} (diverged or damaged weights)")
    if key.endswith("running_var") and low < 0:
        raise CheckpointError(f"{source}: tensor {key} (a batch-norm variance) holds negative values")


def _check_mean_face(mean_face: torch.Tensor, source: str) -> None:
    """The stored 3D mean face: real numbers, finite and bounded (the pose projects it)."""
    _check_values(MEAN_FACE_KEY, mean_face, torch.float32, source)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def load_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official `spiga_<name>.pt` state_dict without executing code from it."""
    source = os.fspath(path)
    state = load_torch_file(path, "PyTorch state_dict")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: expected a state_dict (a mapping of names to tensors)")
    return state


def load_torch_file(path: str | os.PathLike, what: str, error: type[SpigaError] = CheckpointError) -> Any:
    """`torch.load(weights_only=True)` of a file `torch.save` wrote, every failure one line
    (`error`) naming the file and saying what it is: missing, a folder, empty, text, a
    safetensors file, unknown bytes, truncated, or a pickle that would run code. `what`
    names the expected content in those lines ("PyTorch state_dict", "resume state")."""
    source = os.fspath(path)
    path = Path(path)
    if path.is_dir():
        raise error(f"{source}: is a directory, not a {what} file")
    if not path.is_file():
        raise error(f"{source}: no such file")
    if path.stat().st_size == 0:
        raise error(f"{source}: empty file, not a {what}")
    with path.open("rb") as handle:
        start = handle.read(512)
    problem = _torch_file_problem(path, start, what)
    if problem:
        raise error(f"{source}: {problem}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # PyTorch's own message advises weights_only=False, i.e. running the file's code: not quoted
        raise error(f"{source}: refused to load: the file holds Python objects other than tensors, "
                    "which could run code") from None
    except Exception:  # noqa: BLE001 - torch.load raises anything from KeyError to RuntimeError on bad bytes
        raise error(f"{source}: corrupt or truncated PyTorch file (its data cannot be unpickled)") from None


def _torch_file_problem(path: Path, start: bytes, what: str) -> str | None:
    """What a file is when it is not one `torch.save` wrote (text, a safetensors checkpoint,
    anything else), or that its zip archive is cut short; None for a plausible file."""
    if start[:4] == b"PK\x03\x04":
        return None if zipfile.is_zipfile(path) else \
            "corrupt or truncated PyTorch file (its zip archive has no central directory)"
    if _is_torch_file(start):
        return None
    if _is_safetensors(start):
        return (f"this is a safetensors file, not a {what} (.pt); a spiga checkpoint needs no conversion "
                "(use it as --model)")
    if _is_text(start):
        return f"a text file, not a {what} (.pt written by torch.save)"
    return f"not a PyTorch file (neither a zip archive nor a pickle: starts with bytes {start[:8].hex(' ')})"


def _is_safetensors(start: bytes) -> bool:
    """8-byte little-endian header length, then the JSON header."""
    return len(start) > 9 and start[8:9] == b"{" and int.from_bytes(start[:8], "little") < 100_000_000


def _is_text(start: bytes) -> bool:
    try:
        text = start.decode("utf-8")
    except UnicodeDecodeError:
        try:  # the sample may end inside a multi-byte character
            text = start[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\r\n\f" for c in text)


def convert_official(weights: str | os.PathLike, config_name: str,
                     mean_face: str | os.PathLike | Callable[[int], str | os.PathLike],
                     out: str | os.PathLike, model_config: ModelConfig | None = None) -> Path:
    """Official state_dict + mean-face text file -> a spiga checkpoint at `out`.

    `config_name` is an official configuration (`wflw`, `300wpublic`, `300wprivate`,
    `merlrav`, `cofw68`); it fixes the landmark set. `mean_face`: the file's path, or a
    function of the point count that returns it (`spiga.hub.official_mean_face`, which may
    download), called once the weights have loaded. The constant tensors stored in the
    official file (edge matrix, coordinate channels) are checked against ours.
    """
    landmarks = landmark_set_for(config_name)
    config = model_config or ModelConfig.official(landmarks.num_landmarks, landmarks.num_edges)
    state = load_official_state_dict(weights)
    if callable(mean_face):
        mean_face = mean_face(landmarks.num_landmarks)
    mean_face_world = read_mean_face(mean_face, landmarks)
    _check_mean_face(torch.from_numpy(np.asarray(mean_face_world, np.float64)), str(mean_face))
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
