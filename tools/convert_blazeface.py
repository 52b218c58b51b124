"""Convert MediaPipe's BlazeFace .tflite files into spiga's weight files and ONNX graphs.

    pip download --no-deps mediapipe==0.10.21 --platform manylinux_2_28_x86_64 \
        --python-version 3.11 --only-binary=:all: -d /tmp/mp
    unzip -j -o /tmp/mp/mediapipe-0.10.21-*.whl \
        'mediapipe/modules/face_detection/*.tflite' -d /tmp/mp/fd
    pip install tflite            # the flatbuffer schema bindings (pure Python)
    PYTHONPATH=src python tools/convert_blazeface.py /tmp/mp/fd

The tool reads the .tflite flatbuffer directly (no interpreter): it walks the graph's
operators in execution order, follows each convolution's weight and bias back through
DEQUANTIZE (float16 -> float32) and DENSIFY (sparse -> dense) operators to the stored
constants, checks that kernel shapes and strides match the PyTorch network's
convolutions taken in the same order, and writes the float16 values unchanged (the
.tflite stores float16, so nothing is lost) to
`src/spiga/detection/weights/blazeface_<short|full>.safetensors`, atomically.

Then it exports the PyTorch network with those weights to
`blazeface_<short|full>.onnx` beside them (the detector's onnxruntime backend): batch,
height and width left free, the weights stored as float16 (the values they have) with a
Cast to float32 that onnxruntime folds away when it loads the graph, and the SHA-256 of
the .safetensors file in the graph's metadata (key "spiga.blazeface"), so that a graph
out of step with the weights is noticed. `--onnx-only` re-exports the graphs from the
weight files already there (no .tflite needed), e.g. after a change to the network code:

    pip install onnx              # the `onnx` extra
    PYTHONPATH=src python tools/convert_blazeface.py --onnx-only
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import tflite
except ImportError:  # pragma: no cover - needed for the conversion only, not for --onnx-only
    tflite = None

from safetensors.numpy import save_file

from spiga.detection.blazeface_net import NETWORKS, SPECS, conv_layers
from spiga.detection.runtime import ONNX_METADATA_KEY, ONNX_OPSET

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "src" / "spiga" / "detection" / "weights"
MEDIAPIPE_VERSION = "0.10.21"

if tflite is not None:
    _OP_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    _NUMPY_TYPES = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
                    tflite.TensorType.INT32: np.int32, tflite.TensorType.INT8: np.int8,
                    tflite.TensorType.UINT8: np.uint8}


@dataclass
class ConvOp:
    """One convolution of the graph: kernel in PyTorch layout (out, in/groups, kh, kw)."""

    kind: str
    weight: np.ndarray
    bias: np.ndarray
    stride: int
    output: str


class TfliteGraph:
    """Read-only view of subgraph 0 of a .tflite model."""

    def __init__(self, data: bytes) -> None:
        self.model = tflite.Model.GetRootAsModel(data, 0)
        self.graph = self.model.Subgraphs(0)
        self.producer = {}
        for index in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(index)
            for j in range(op.OutputsLength()):
                self.producer[op.Outputs(j)] = index

    def op_name(self, index: int) -> str:
        code = self.model.OperatorCodes(self.graph.Operators(index).OpcodeIndex())
        return _OP_NAMES[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]

    def constant(self, tensor_index: int) -> np.ndarray:
        """The value of a constant tensor, through DEQUANTIZE and DENSIFY, as float32."""
        if tensor_index in self.producer:
            op_index = self.producer[tensor_index]
            name = self.op_name(op_index)
            source = self.graph.Operators(op_index).Inputs(0)
            if name == "DEQUANTIZE":
                return self.constant(source).astype(np.float32)
            if name == "DENSIFY":
                return self.constant(source)
            raise ValueError(f"tensor {tensor_index} is computed by {name}, not a constant")
        tensor = self.graph.Tensors(tensor_index)
        dtype = _NUMPY_TYPES[tensor.Type()]
        raw = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(raw, int) or raw.size == 0:
            raise ValueError(f"tensor {tensor.Name().decode()} has no data")
        values = np.frombuffer(raw.tobytes(), dtype=dtype)
        shape = tuple(int(s) for s in tensor.ShapeAsNumpy())
        if tensor.Sparsity() is not None:
            return _densify(values, shape, tensor.Sparsity(), tensor.Name().decode())
        return values.reshape(shape)

    def conv_ops(self) -> list[ConvOp]:
        """Every CONV_2D and DEPTHWISE_CONV_2D in execution order."""
        ops = []
        for index in range(self.graph.OperatorsLength()):
            name = self.op_name(index)
            if name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                continue
            op = self.graph.Operators(index)
            options = tflite.Conv2DOptions() if name == "CONV_2D" else tflite.DepthwiseConv2DOptions()
            table = op.BuiltinOptions()
            options.Init(table.Bytes, table.Pos)
            if options.DilationWFactor() != 1 or options.DilationHFactor() != 1:
                raise ValueError(f"operator {index}: dilated convolutions are not supported")
            kernel = self.constant(op.Inputs(1))
            bias = self.constant(op.Inputs(2))
            # TFLite kernels: conv (out, kh, kw, in); depthwise (1, kh, kw, channels)
            weight = kernel.transpose(0, 3, 1, 2) if name == "CONV_2D" else kernel.transpose(3, 0, 1, 2)
            output = self.graph.Tensors(op.Outputs(0)).Name().decode()
            ops.append(ConvOp(name, np.ascontiguousarray(weight), bias, options.StrideW(), output))
        return ops


def _densify(values: np.ndarray, shape: tuple[int, ...], sparsity, name: str) -> np.ndarray:
    """Dense array from a TFLite sparse tensor: identity traversal order, no blocks,
    leading dimensions DENSE and the last one SPARSE_CSR (the layout the full-range
    model uses); anything else is refused rather than guessed."""
    order = sparsity.TraversalOrderAsNumpy()
    if sparsity.BlockMapLength() or list(order) != list(range(len(shape))):
        raise ValueError(f"{name}: only unblocked sparsity in natural order is supported")
    dims = [sparsity.DimMetadata(d) for d in range(sparsity.DimMetadataLength())]
    if any(d.Format() != tflite.DimensionType.DENSE for d in dims[:-1]) or \
            dims[-1].Format() != tflite.DimensionType.SPARSE_CSR:
        raise ValueError(f"{name}: only DENSE...DENSE, SPARSE_CSR sparsity is supported")
    last = dims[-1]
    segments = _index_vector(last.ArraySegments(), last.ArraySegmentsType())
    indices = _index_vector(last.ArrayIndices(), last.ArrayIndicesType())
    rows = int(np.prod(shape[:-1]))
    if len(segments) != rows + 1 or segments[-1] != len(values) or len(indices) != len(values):
        raise ValueError(f"{name}: inconsistent sparse index arrays")
    dense = np.zeros((rows, shape[-1]), dtype=values.dtype)
    row_of_value = np.repeat(np.arange(rows), np.diff(segments))
    dense[row_of_value, indices] = values
    return dense.reshape(shape)


def _index_vector(table, kind: int) -> np.ndarray:
    vector_type = {tflite.SparseIndexVector.Int32Vector: tflite.Int32Vector,
                   tflite.SparseIndexVector.Uint16Vector: tflite.Uint16Vector,
                   tflite.SparseIndexVector.Uint8Vector: tflite.Uint8Vector}[kind]
    vector = vector_type()
    vector.Init(table.Bytes, table.Pos)
    return vector.ValuesAsNumpy().astype(np.int64)


def convert(tflite_path: Path, variant: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Weights of one variant as a PyTorch state_dict of float16 arrays, plus metadata."""
    data = tflite_path.read_bytes()
    ops = TfliteGraph(data).conv_ops()
    network = NETWORKS[variant]()
    layers = conv_layers(network)
    names = {id(module): name for name, module in network.named_modules()}
    if len(ops) != len(layers):
        raise ValueError(f"{tflite_path}: {len(ops)} convolutions, the {variant} network has {len(layers)}")
    state = {}
    for op, layer in zip(ops, layers):
        name = names[id(layer)]
        expected = tuple(layer.weight.shape)
        if op.weight.shape != expected or op.stride != layer.stride[0] or op.bias.shape != (expected[0],):
            raise ValueError(f"{tflite_path}: {op.output} has kernel {op.weight.shape} stride {op.stride}; "
                             f"layer {name} expects {expected} stride {layer.stride[0]}")
        if (op.kind == "DEPTHWISE_CONV_2D") != (layer.groups > 1):
            raise ValueError(f"{tflite_path}: {op.output} is {op.kind}, layer {name} has groups={layer.groups}")
        state[f"{name}.weight"] = op.weight.astype(np.float16)
        state[f"{name}.bias"] = op.bias.astype(np.float16)
    for key, value in state.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{tflite_path}: {key} does not fit float16")
    metadata = {
        "format": "spiga.blazeface/1",
        "variant": variant,
        "source": f"mediapipe=={MEDIAPIPE_VERSION}: mediapipe/modules/face_detection/{tflite_path.name}",
        "source_sha256": hashlib.sha256(data).hexdigest(),
        "license": "Apache-2.0 (MediaPipe); see LICENSE-mediapipe.txt",
    }
    return state, metadata


def save_atomic(state: dict[str, np.ndarray], metadata: dict[str, str], path: Path) -> None:
    write_atomic(path, lambda temp: save_file(state, temp, metadata=metadata))


def write_atomic(path: Path, write) -> None:
    """`write(temporary_path)`, then the file renamed into place (readable by all: it ships)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        write(temp)
        os.chmod(temp, 0o644)  # mkstemp makes 0600; the file ships in the package
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def export_onnx(weights: Path, variant: str, target: Path) -> None:
    """The PyTorch network with the weights of `weights` as an ONNX graph at `target`.

    Input `images` (B, 3, H, W) float32 in [-1, 1] (H, W multiples of the model's size
    multiple); outputs `regressors` (B, N, 16) and `logits` (B, N), as the PyTorch network.
    """
    try:
        import onnx
    except ImportError:
        sys.exit("convert_blazeface: exporting ONNX needs the `onnx` package (pip install onnx)")
    import torch
    from safetensors.torch import load as load_safetensors

    data = weights.read_bytes()
    network = NETWORKS[variant]()
    network.load_state_dict({key: value.float() for key, value in load_safetensors(data).items()}, strict=True)
    spec = SPECS[variant]
    # a non-square example so that the exporter cannot confuse height and width
    example = torch.zeros(1, 3, spec.input_size, spec.input_size + spec.size_multiple)
    buffer = io.BytesIO()
    free = {"images": {0: "batch", 2: "height", 3: "width"}, "regressors": {0: "batch", 1: "anchors"},
            "logits": {0: "batch", 1: "anchors"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; it needs no onnxscript
        torch.onnx.export(network.eval(), (example,), buffer, input_names=["images"],
                          output_names=["regressors", "logits"], dynamic_axes=free, opset_version=ONNX_OPSET,
                          do_constant_folding=True, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    store_float16(graph)
    entry = graph.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = json.dumps({"variant": variant, "weights": weights.name,
                              "weights_sha256": hashlib.sha256(data).hexdigest()})
    graph.producer_name = "spiga tools/convert_blazeface.py"
    graph.doc_string = (f"BlazeFace {variant} (MediaPipe's face detector, Apache-2.0): images (B,3,H,W) RGB "
                        "float [-1,1] -> regressors (B,N,16), logits (B,N)")
    onnx.checker.check_model(graph)
    write_atomic(target, lambda temp: Path(temp).write_bytes(graph.SerializeToString()))


def store_float16(graph) -> None:
    """Float32 initializers that are float16 values stored as float16, each behind a Cast
    to float32 (in place): the file halves, the values stay exactly the same."""
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for index, tensor in enumerate(graph.graph.initializer):
        if tensor.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(tensor)
        half = values.astype(np.float16)
        if values.size < 2 or not np.array_equal(half.astype(np.float32), values):
            continue
        stored = numpy_helper.from_array(half, f"{tensor.name}.float16")
        casts.append(helper.make_node("Cast", [stored.name], [tensor.name], to=TensorProto.FLOAT,
                                      name=f"{tensor.name}.to_float32"))
        graph.graph.initializer[index].CopyFrom(stored)
    nodes = casts + list(graph.graph.node)
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tflite_dir", type=Path, nargs="?",
                        help="folder with MediaPipe's face_detection_*.tflite files")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: the package's)")
    parser.add_argument("--variants", nargs="+", default=sorted(SPECS), choices=sorted(SPECS))
    parser.add_argument("--onnx-only", action="store_true",
                        help="only export the ONNX graphs, from the .safetensors files in --out")
    args = parser.parse_args(argv)
    if (args.tflite_dir is None) != args.onnx_only:
        parser.error("give the .tflite folder, or --onnx-only")
    if not args.onnx_only and tflite is None:
        parser.error("the conversion needs the `tflite` package (pip install tflite)")
    for variant in args.variants:
        weights = args.out / f"blazeface_{variant}.safetensors"
        if not args.onnx_only:
            source = args.tflite_dir / SPECS[variant].tflite_name
            if not source.is_file():
                parser.error(f"{source} not found")
            state, metadata = convert(source, variant)
            save_atomic(state, metadata, weights)
            count = sum(v.size for v in state.values())
            print(f"{source.name} -> {weights} ({len(state)} tensors, {count} parameters, "
                  f"{weights.stat().st_size / 1024:.0f} KiB)")
        elif not weights.is_file():
            parser.error(f"{weights} not found")
        graph = weights.with_suffix(".onnx")
        export_onnx(weights, variant, graph)
        print(f"{weights.name} -> {graph} ({graph.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
