"""`spiga.load(..., backend="onnxruntime" | "openvino")`: the graph `spiga export` writes,
opened by the backend asked for (an .onnx file, or a checkpoint exported on the fly)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import SpigaError
from .onnx_backend import GraphBackend, OnnxBackend

log = logging.getLogger(__name__)


def open_graph_backend(backend: str, model: str | os.PathLike, device: Any = None, precision: str = "float32",
                       compile: bool = False, max_batch: int = 32) -> tuple[GraphBackend, str]:
    """The backend of `spiga.load(..., backend=B)` for B `onnxruntime` or `openvino`, and the
    model's name: an .onnx file, or a checkpoint exported on the fly (to a temporary file,
    removed once loaded)."""
    from ..hub import resolve_model
    from .onnx_export import export_onnx

    if compile:
        raise SpigaError("compile applies to the torch backend only")
    device = "cpu" if device is None else str(device)
    if backend == "onnxruntime":
        if precision != "float32":
            raise SpigaError(f"the onnxruntime backend runs float32 only (asked for {precision!r})")

        def open_graph(path):
            return OnnxBackend(path, device, max_batch)
    elif backend == "openvino":
        from .openvino_backend import OpenVinoBackend  # the optional extra: imported when asked for

        def open_graph(path):
            return OpenVinoBackend(path, device, precision, max_batch)
    else:
        raise SpigaError(f"{backend!r} does not run exported graphs (onnxruntime and openvino do)")
    if str(model).endswith(".onnx"):
        return open_graph(model), str(model)
    path = resolve_model(model)
    with tempfile.TemporaryDirectory(prefix="spiga-onnx-") as folder:
        log.info("exporting %s to ONNX for %s", path, backend)
        # the batch axis stays free: the backend fixes nothing the caller did not ask for
        graph = open_graph(export_onnx(path, Path(folder) / "model.onnx", dynamic_batch=True))
    return graph, str(path)
