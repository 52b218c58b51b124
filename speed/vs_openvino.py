#!/usr/bin/env python3
# (not named openvino.py: run as a script, that name would shadow the openvino package)
"""spiga's backends against OpenVINO on the graph `spiga export` writes: network only, per face.

For each precision P (float32; bfloat16 where the CPU has native bfloat16) and batch N (1, 8):

- `spiga torch`, `spiga onnxruntime`, `spiga openvino`:
  `spiga.load(M, precision=P, backend=B).backend.predict_crops(crops)` (uint8 crops in,
  landmarks and pose out: the network plus the uint8 -> float conversion);
- `OpenVINO`: OpenVINO itself on `spiga export --model M --fixed-batch N` (PERFORMANCE_HINT
  LATENCY, INFERENCE_NUM_THREADS = the thread count, INFERENCE_PRECISION_HINT f32 or bf16),
  float crops in: the reference of issue 19.

M: the official-size model (98 landmarks) with random weights (`spiga.checkpoint.build_model`,
seeded); speed does not depend on the weights' values. Every implementation runs in a
worker process of its own (same thread count, denormals flushed); they take turns for every
repeat (so load from other processes hits them alike) and the table shows medians, in
milliseconds per face, and each one's time over OpenVINO's.

    python speed/vs_openvino.py [--threads 2] [--repeats 9] [--batches 1 8] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def make_checkpoint(folder: Path) -> Path:
    """The official-size WFLW model with seeded random weights, as a spiga checkpoint."""
    import torch

    from spiga.checkpoint import build_model, save_checkpoint
    from spiga.landmarks import WFLW_98
    from spiga.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig.official(WFLW_98.num_landmarks, WFLW_98.num_edges)
    model = build_model(config, WFLW_98, np.random.default_rng(0).normal(size=(98, 3)) * 0.3).eval()
    return save_checkpoint(folder / "official-random.safetensors", model, WFLW_98)


def openvino_reference(graph: Path, precision: str, threads: int):
    """OpenVINO on the exported graph, as issue 19 ran it: (B, 3, S, S) float32 in."""
    import openvino as ov

    from spiga.inference.openvino_backend import PRECISION_HINTS

    compiled = ov.Core().compile_model(str(graph), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]})
    request = compiled.create_infer_request()
    return lambda crops: request.infer({0: np.ascontiguousarray(crops.transpose(0, 3, 1, 2), np.float32) / 255})


def make_call(kind: str, precision: str, paths: dict, threads: int):
    """The callable `crops -> outputs` of one implementation."""
    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    import spiga

    if kind == "OpenVINO":
        return openvino_reference(Path(paths["graph"]), precision, threads)
    model = paths["graph"] if kind == "openvino" else paths["checkpoint"]
    backend = spiga.load(model, device="cpu", precision=precision, backend=kind).backend
    if backend.precision != precision:
        raise RuntimeError(f"runs {backend.precision}, not {precision}")
    return backend.predict_crops


def worker(conn, kind: str, precision: str, paths: dict, threads: int, clock_name: str) -> None:
    """Load one implementation, then time one call per request; answer ms or an error line."""
    try:
        call = make_call(kind, precision, paths, threads)
        crops = np.load(paths["crops"])
        call(crops)  # warm-up
        call(crops)
        conn.send("ready")
    except Exception as exc:  # report why this row is missing, keep the others
        conn.send(f"error: {type(exc).__name__}: {exc}".splitlines()[0])
        return
    clock = CLOCKS[clock_name]
    while conn.recv() == "run":
        start = clock()
        call(crops)
        conn.send((clock() - start) * 1000)


def native_bfloat16() -> bool:
    from spiga.inference.cpu import cpu_features

    return cpu_features().native_bfloat16


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def time_batch(batch: int, precision: str, checkpoint: Path, folder: Path, args) -> dict[str, float | str]:
    """{implementation: median ms per face, or the reason it has none} for one batch size."""
    from spiga.inference.onnx_export import export_onnx

    graph = export_onnx(checkpoint, folder / f"fixed-{batch}.onnx", batch_size=batch)  # spiga export --fixed-batch
    crops_path = folder / f"crops-{batch}.npy"
    np.save(crops_path, np.random.default_rng(batch).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8))
    paths = {"checkpoint": str(checkpoint), "graph": str(graph), "crops": str(crops_path)}
    kinds = ["torch", "onnxruntime", "openvino", "OpenVINO"] if precision == "float32" else \
        ["torch", "openvino", "OpenVINO"]
    context = mp.get_context("spawn")
    workers, results = {}, {}
    for kind in kinds:
        parent, child = context.Pipe()
        process = context.Process(target=worker, args=(child, kind, precision, paths, args.threads, args.clock))
        process.start()
        answer = parent.recv()
        if answer == "ready":
            workers[kind] = (parent, process)
        else:
            results[kind] = answer
            process.join()
    times = {kind: [] for kind in workers}
    for repeat in range(args.repeats):
        order = list(workers)[repeat % len(workers):] + list(workers)[:repeat % len(workers)]
        for kind in order:
            time.sleep(0.05)  # let the previous worker's idle threads stop spinning
            workers[kind][0].send("run")
            times[kind].append(workers[kind][0].recv() / batch)
    for kind, (conn, process) in workers.items():
        conn.send("stop")
        process.join()
        results[kind] = statistics.median(times[kind])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--precisions", nargs="+", default=None,
                        help="default: float32, and bfloat16 where the CPU has native bfloat16")
    args = parser.parse_args()
    precisions = args.precisions or (["float32", "bfloat16"] if native_bfloat16() else ["float32"])
    import openvino
    import torch

    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores, native bfloat16: "
          f"{'yes' if native_bfloat16() else 'no'}; {args.threads} threads; torch {torch.__version__}, "
          f"OpenVINO {openvino.__version__.split('-')[0]}; median of {args.repeats} interleaved calls, "
          f"{args.clock} clock; ms per face (network only), and over OpenVINO's")
    print("| precision | batch | spiga torch | spiga onnxruntime | spiga openvino | OpenVINO |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="spiga-openvino-bench-") as folder:
        checkpoint = make_checkpoint(Path(folder))
        for precision in precisions:
            for batch in args.batches:
                results = time_batch(batch, precision, checkpoint, Path(folder), args)
                reference = results.get("OpenVINO")
                cells = []
                for kind in ("torch", "onnxruntime", "openvino", "OpenVINO"):
                    value = results.get(kind, "-")
                    if isinstance(value, float):
                        ratio = f" ({value / reference:.2f}x)" if isinstance(reference, float) else ""
                        cells.append(f"{value:.1f}{ratio}")
                    else:
                        cells.append(str(value))
                print(f"| {precision} | {batch} | " + " | ".join(cells) + " |", flush=True)
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
