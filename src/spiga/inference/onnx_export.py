"""Export a SPIGA checkpoint to ONNX.

The graph is the float32 inference copy of the `SPIGA` (`prepare_for_inference`: batch norms
folded, windows gathered with plain Gather operators: no `affine_grid`, no GridSample),
traced with PyTorch's TorchScript-based exporter (it needs only the `onnx` package).

The ONNX contract:

- input `images`: float32 (B, 3, S, S), S = 256 for the official models: the face crops,
  BGR channel order, values in [0, 1] (uint8 / 255). A crop is the square of side
  `enlarge` x max(w, h) of the face box, centred on the box, resampled to S x S with
  nearest-neighbour sampling (the header's `preprocessing`; see `spiga.geometry.crop`;
  pixels outside the image are black). B is fixed at export
  time unless the graph was exported with `dynamic_batch=True`.
- output `landmarks`: float32 (B, L, 2), x, y in crop units [0, 1] (multiply by S for crop
  pixels, then apply the inverse crop affine for image pixels).
- output `pose`: float32 (B, 6): yaw, pitch, roll (degrees), tx, ty, tz (crop camera units).
- metadata_props `spiga`: the same JSON header as a spiga checkpoint (model sizes, landmark
  set, `preprocessing`: crop, camera and depth rule), the 3D mean face (`mean_face_3d`, L x 3, SPIGA's world
  frame) and an `onnx` entry describing inputs and outputs, so the onnxruntime backend runs,
  and draws meshes, without the checkpoint.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import Checkpoint, load_checkpoint
from ..about import install_hint
from ..errors import SpigaError
from ..io import write_output
from .optimize import prepare_for_inference

log = logging.getLogger(__name__)

MIN_OPSET = 13  # Softmax over the last axis, Unsqueeze with axes as input, integer Clip
DEFAULT_OPSET = 17
METADATA_KEY = "spiga"


class LandmarksAndPose(nn.Module):
    """The graph's outputs: a `SPIGA`'s last cascade step and its pose, nothing else.

    forward(images (B, 3, S, S)) -> landmarks (B, L, 2), pose (B, 6)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out["landmarks"][-1], out["pose"]


def onnx_header(checkpoint: Checkpoint, dynamic_batch: bool, batch_size: int, opset: int) -> dict:
    """The metadata stored in the ONNX file."""
    size = checkpoint.config.image_size
    header = dict(checkpoint.metadata) if checkpoint.metadata else {}
    for legacy in ("crop", "camera", "depth_scaling"):  # older headers' fields, now in `preprocessing`
        header.pop(legacy, None)
    header.update({
        "model_config": checkpoint.config.to_dict(),
        "landmarks": checkpoint.landmarks.to_dict(),
        "preprocessing": checkpoint.config.preprocessing.to_dict(),
        "input": {"color": "bgr", "range": [0.0, 1.0]},
        # the 3D mean face (L, 3) the pose projects, for mesh drawings without the checkpoint
        "mean_face_3d": checkpoint.model.mean_face_3d.detach().cpu().double().tolist(),
        "onnx": {
            "opset": opset,
            "inputs": {"images": f"float32 ({'B' if dynamic_batch else batch_size}, 3, {size}, {size}) BGR crops "
                                 f"in [0, 1]"},
            "outputs": {"landmarks": "float32 (B, L, 2) x, y in crop units [0, 1]",
                        "pose": "float32 (B, 6) yaw, pitch, roll degrees, tx, ty, tz"},
            "dynamic_batch": dynamic_batch,
        },
    })
    return header


def export_onnx(model: str | os.PathLike | Checkpoint, out: str | os.PathLike, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, batch_size: int = 1) -> Path:
    """Write `model` (a checkpoint path or a loaded `Checkpoint`) as an ONNX graph at `out`.

    Args:
        opset: ONNX opset, >= 13.
        dynamic_batch: leave the batch axis free (else it is fixed at `batch_size`).
    Returns:
        the path written (atomically).
    """
    try:
        import onnx
    except ImportError:
        raise SpigaError(f"ONNX export needs the `onnx` package: {install_hint('onnx')}") from None
    if opset < MIN_OPSET:
        raise SpigaError(f"ONNX opset {opset} is too old: the graph needs opset >= {MIN_OPSET}")
    if batch_size < 1:
        raise SpigaError(f"batch size must be >= 1, got {batch_size}")
    checkpoint = model if isinstance(model, Checkpoint) else load_checkpoint(model)
    network = LandmarksAndPose(prepare_for_inference(checkpoint.model, "float32", "cpu", fuse=False,
                                                     sampler="gather")).eval()
    size = checkpoint.config.image_size
    example = torch.rand(max(batch_size, 2) if dynamic_batch else batch_size, 3, size, size)
    buffer = io.BytesIO()
    dynamic_axes = {"images": {0: "batch"}, "landmarks": {0: "batch"}, "pose": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(network, (example,), buffer, input_names=["images"],
                              output_names=["landmarks", "pose"], opset_version=opset, dynamic_axes=dynamic_axes,
                              do_constant_folding=True, dynamo=False)
        except Exception as exc:  # the exporter raises many types; say which step failed
            raise SpigaError(f"ONNX export (opset {opset}) failed: {type(exc).__name__}: {exc}") from exc
    graph = onnx.load_from_string(buffer.getvalue())
    header = onnx_header(checkpoint, dynamic_batch, batch_size, opset)
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(header)
    graph.producer_name = "spiga"
    graph.doc_string = ("SPIGA face alignment: images (B,3,S,S) BGR float [0,1] crops -> landmarks (B,L,2) in [0,1] "
                        "crop units, pose (B,6) yaw pitch roll degrees tx ty tz")
    onnx.checker.check_model(graph)
    path = Path(out)
    write_output(path, graph.SerializeToString())
    log.info("wrote %s (opset %d, %s batch)", path, opset, "dynamic" if dynamic_batch else f"fixed {batch_size}")
    return path


def read_onnx_header(path: str | os.PathLike) -> dict:
    """The spiga metadata of an exported ONNX file (without loading the weights)."""
    try:
        import onnx
    except ImportError:
        raise SpigaError(f"reading ONNX files needs the `onnx` package: {install_hint('onnx')}") from None
    path = Path(path)
    if not path.is_file():
        raise SpigaError(f"{path}: no such file")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise SpigaError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    for entry in graph.metadata_props:
        if entry.key == METADATA_KEY:
            try:
                return json.loads(entry.value)
            except ValueError:
                raise SpigaError(f"{path}: the `spiga` metadata is not valid JSON") from None
    raise SpigaError(f"{path}: ONNX file without spiga metadata (not written by `spiga export`?)")
