"""Runtimes for the BlazeFace networks: plain PyTorch, or onnxruntime on the same weights.

A runtime is a callable `(B, 3, H, W) float32 RGB in [-1, 1] -> regressors (B, N, 16),
logits (B, N)`, both float32 NumPy arrays (see `blazeface_net` for their meaning):

- `torch`: the PyTorch network of `blazeface_net` with the shipped `.safetensors` weights
  (channels-last on the CPU: faster depthwise convolutions). Always available, any device.
- `onnxruntime`: the same network exported to `weights/blazeface_<variant>.onnx` by
  `tools/convert_blazeface.py` (same float16 weight values), run by onnxruntime's CPU
  provider: about 2.5x faster than eager PyTorch on these small depthwise networks.
  Needs the `onnxruntime` package (a dependency of spiga-landmarks). Outputs agree with the
  PyTorch runtime's within float32 rounding (about 1e-4 on logits and pixel offsets), which
  the tests check on detections.

`auto` (the default) picks onnxruntime on the CPU where it is installed (and can load the
graph) and PyTorch otherwise. onnxruntime's threads spin between operators during a run
and stop when it ends (`session.force_spinning_stop`), so that idle they do not hold the
cores while PyTorch runs the alignment model in the same process; their number is
PyTorch's thread count when the runtime is made (`torch.set_num_threads` governs both).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from importlib import resources
from importlib.util import find_spec
from typing import Protocol

import numpy as np
import torch

from ..errors import CheckpointError, InputError, SpigaError
from ..inference.cpu import denormal_mode_kept, flushed_denormals
from .blazeface_net import NETWORKS

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "torch")
ONNX_METADATA_KEY = "spiga.blazeface"  # JSON: variant, weights file name and its SHA-256
ONNX_OPSET = 17


class NetworkRuntime(Protocol):
    """A BlazeFace network behind one call signature (see the module docstring)."""

    name: str

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def weights_file(variant: str, suffix: str) -> bytes:
    """The bytes of `weights/blazeface_<variant><suffix>` shipped in the package."""
    source = resources.files("spiga.detection") / "weights" / f"blazeface_{variant}{suffix}"
    try:
        return source.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{source}: BlazeFace file missing from the package ({exc})") from exc


def load_network(variant: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The BlazeFace network `short` or `full` with the weights shipped in the package."""
    if variant not in NETWORKS:
        raise InputError(f"unknown BlazeFace model {variant!r}; choose one of {sorted(NETWORKS)}")
    return _load_network_cached(variant, str(device))


@lru_cache(maxsize=4)
def _load_network_cached(variant: str, device: str) -> torch.nn.Module:
    from safetensors.torch import load as load_safetensors

    data = weights_file(variant, ".safetensors")
    try:
        state = load_safetensors(data)
        network = NETWORKS[variant]()
        network.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    except Exception as exc:  # a damaged or foreign file
        raise CheckpointError(f"blazeface_{variant}.safetensors: not a BlazeFace {variant} weights file "
                              f"({exc})") from exc
    network = network.eval().to(device)
    if torch.device(device).type == "cpu":
        network = network.to(memory_format=torch.channels_last)  # faster depthwise convolutions
    return network


class TorchRuntime:
    """The PyTorch network (the reference runtime)."""

    name = "torch"

    def __init__(self, variant: str, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.network = load_network(variant, self.device)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = torch.from_numpy(images).to(self.device)
        if self.device.type == "cpu":
            batch = batch.contiguous(memory_format=torch.channels_last)
            with flushed_denormals():  # see `flushed_denormals` below
                regressors, logits = self.network(batch)
        else:
            regressors, logits = self.network(batch)
        return regressors.float().cpu().numpy(), logits.float().cpu().numpy()


def onnxruntime_available() -> bool:
    """Whether the `onnxruntime` package is installed."""
    return find_spec("onnxruntime") is not None


class OnnxRuntime:
    """The exported network run by onnxruntime's CPU provider.

    Args:
        threads: intra-op threads; default PyTorch's thread count now.
    """

    name = "onnxruntime"

    def __init__(self, variant: str, threads: int | None = None) -> None:
        if variant not in NETWORKS:
            raise InputError(f"unknown BlazeFace model {variant!r}; choose one of {sorted(NETWORKS)}")
        self.threads = int(threads or torch.get_num_threads())
        self.session = _onnx_session(variant, self.threads)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # the calling thread computes too (flushed for the call only); the pool's threads are set by the session
        with flushed_denormals():
            return tuple(self.session.run(["regressors", "logits"],
                                          {"images": np.ascontiguousarray(images, dtype=np.float32)}))


# Denormal floats are flushed to zero during each call, on the calling thread, and the
# thread's setting restored after (`spiga.inference.cpu.flushed_denormals`): a real photo's
# activations go denormal in BlazeFace's later layers, where x86 arithmetic on them is
# 10-100x slower: measured, the finest pyramid level of a 640x480 photo took 35 ms instead
# of 17.5 ms.


@lru_cache(maxsize=8)
def _onnx_session(variant: str, threads: int):
    try:
        import onnxruntime as ort
    except ImportError:
        raise SpigaError("the onnxruntime BlazeFace backend needs the `onnxruntime` package: "
                         "pip install onnxruntime (or use backend='torch')") from None
    data = weights_file(variant, ".onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no notes about folded Cast nodes
    # the pool's threads spin between operators during a run (sleeping there costs a wake-up
    # per operator of this small network) and stop spinning when the run ends: idle, they
    # would take the cores from PyTorch
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    # denormals flushed in the pool's threads too (see `flushed_denormals` above)
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    try:
        with denormal_mode_kept():  # the option would flush this thread's arithmetic for good
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise CheckpointError(f"blazeface_{variant}.onnx: onnxruntime cannot load it "
                              f"({type(exc).__name__}: {exc})") from None
    header = json.loads(session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY, "{}"))
    if header.get("variant") != variant:
        raise CheckpointError(f"blazeface_{variant}.onnx: not the {variant} BlazeFace graph (metadata {header})")
    logger.debug("onnxruntime %s BlazeFace %s, %d thread(s)", ort.__version__, variant, threads)
    return session


def make_runtime(backend: str, variant: str, device: str | torch.device = "cpu") -> NetworkRuntime:
    """The runtime `backend` (one of `BACKENDS`) for the network `variant` on `device`."""
    if backend not in BACKENDS:
        raise InputError(f"unknown BlazeFace backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    on_cpu = torch.device(device).type == "cpu"
    if backend == "auto" and on_cpu and onnxruntime_available():
        try:
            return OnnxRuntime(variant)
        except SpigaError as exc:  # e.g. an onnxruntime too old for the graph: PyTorch still works
            logger.warning("BlazeFace: onnxruntime unusable (%s); running on PyTorch", exc)
    if backend == "onnxruntime":
        if not on_cpu:
            raise InputError(f"the onnxruntime BlazeFace backend runs on the CPU only, not on {device}; "
                             "use backend='torch'")
        return OnnxRuntime(variant)
    return TorchRuntime(variant, device)
