"""OpenVINO backend: runs a graph written by `spiga export` with OpenVINO's CPU plugin.

The graph, its metadata and `predict_crops` are shared with the onnxruntime backend
(`onnx_backend.GraphBackend`); what is OpenVINO's own is how the graph is compiled:

- `PERFORMANCE_HINT: LATENCY` (one request at a time, all threads on it);
- `INFERENCE_NUM_THREADS`: PyTorch's thread count when the backend is made (as onnxruntime's),
  so that `torch.set_num_threads` governs every backend;
- `INFERENCE_PRECISION_HINT`: `f32` for precision float32, `bf16` for bfloat16. OpenVINO runs
  bf16 only on CPUs with native bfloat16 (AVX-512 BF16, AMX); elsewhere it compiles float32
  and says so in the compiled model's properties: the backend then logs a warning and reports
  `precision == "float32"` (what runs), rather than emulating bfloat16 slowly as PyTorch does.

Needs the `openvino` package (`pip install 'spiga-landmarks[openvino]'`).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from ..about import install_hint
from ..errors import SpigaError
from .onnx_backend import GraphBackend
from .onnx_export import METADATA_KEY

log = logging.getLogger(__name__)

# spiga precision -> OpenVINO's INFERENCE_PRECISION_HINT
PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16"}
_HINT_PRECISIONS = {"f32": "float32", "bf16": "bfloat16"}


def openvino_available() -> bool:
    """Whether the `openvino` package is installed."""
    from importlib.util import find_spec

    return find_spec("openvino") is not None


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise SpigaError(f"the openvino backend needs the `openvino` package: {install_hint('openvino')}") from None
    return openvino


class OpenVinoBackend(GraphBackend):
    """`predict_crops` with OpenVINO on the CPU.

    Args:
        path: an .onnx file written by `spiga export`.
        device: "cpu" (OpenVINO's CPU plugin; the only device this backend offers).
        precision: "float32" or "bfloat16" (see the module docstring).
        max_batch: faces per call (graphs with a fixed batch size use that size instead).
        threads: inference threads; default: PyTorch's thread count.
    """

    name = "openvino"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", precision: str = "float32",
                 max_batch: int = 32, threads: int | None = None):
        ov = _import_openvino()
        import torch

        self.path = Path(path)
        if not self.path.is_file():
            raise SpigaError(f"{self.path}: no such file")
        self.device = str(device or "cpu")
        if self.device != "cpu":
            raise SpigaError(f"the openvino backend runs on the CPU only (asked for device {self.device!r})")
        if precision not in PRECISION_HINTS:
            raise SpigaError(f"the openvino backend runs {' or '.join(PRECISION_HINTS)} (asked for {precision!r})")
        self.threads = int(threads or torch.get_num_threads())
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
            metadata = {METADATA_KEY: model.get_rt_info(["framework", METADATA_KEY]).astype(str)} \
                if model.has_rt_info(["framework", METADATA_KEY]) else {}
            batch = model.inputs[0].get_partial_shape()[0]
            self._read_graph(self.path, metadata, batch.get_length() if batch.is_static else None, max_batch)
            self.compiled = core.compile_model(model, "CPU", {
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": self.threads,
                "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
            })
        except SpigaError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            raise SpigaError(f"{self.path}: OpenVINO cannot load it ({type(exc).__name__}: {exc})") from None
        self.precision = self.compiled_precision()
        if self.precision != precision:
            log.warning("OpenVINO runs %s on this CPU (asked for %s: no native support); the openvino backend "
                        "reports precision=%s", self.precision, precision, self.precision)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one call at a time

    def compiled_precision(self) -> str:
        """The precision the compiled model runs (OpenVINO's answer, not the hint asked for)."""
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
        name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        return _HINT_PRECISIONS.get(name, name)

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            outputs = self._request.infer({"images": images})
            # the request's output buffers are reused by the next call: copy them out
            named = {port.get_any_name(): np.array(value) for port, value in outputs.items()}
        return named["landmarks"], named["pose"]
