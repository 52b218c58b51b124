#!/usr/bin/env python3
"""Speed of spiga against the original SPIGA implementation, on the same weights and images.

    python speed/bench.py                     # float32 + bfloat16 vs the original, batch 1/8/32
    python speed/bench.py --quick             # batch 1 and 8, two repeats
    python speed/bench.py --compile           # also the torch.compile paths (minutes of compiling)
    python speed/bench.py --markdown          # also print the table as Markdown (for docs/performance.md)

Runs from a clean checkout without installing spiga (it puts ../src on the path). The
original (`spiga==0.0.6`) is pip-installed into ~/.cache/spiga-benchmarks on first use and
run with stubs (see original.py); when that fails the table says why and shows ours only.

Method: every implementation runs in a worker process of its own (same thread count,
denormals flushed), all load the same random weights in the official layout (the shared
tool's seeded weights with measured batch-norm statistics when ../shared is present, else
PyTorch's default initialisation) and align the same boxes on the same image (the
shared fixture image, else a synthetic one). The full path is timed: image and boxes in,
landmarks in image pixels out (crop, network, back-projection). The implementations take
turns for every repeat and batch size (the order rotates), so load from other processes
on the machine hits them alike; the table shows medians. Peak memory is the worker's
peak resident set size while it ran that batch size (weights included).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import harness
from harness import cpu_flags, cpu_name, peak_memory_mib, reset_peak_memory

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
DATASET = "wflw"


# --- the machine -----------------------------------------------------------------------


def matmul_peak(threads: int, dtype_name: str, size: int = 2048, runs: int = 8) -> float:
    """Best GFLOPS of a (size x size) @ (size x size) matmul in `dtype_name`."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    best = harness.time_call(lambda: a @ b, repeats=runs, warmup=2).min
    return 2 * size ** 3 / best / 1e9


# --- memory ----------------------------------------------------------------------------


def available_memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return None


# the original's inference keeps the autograd graph: about 0.45 GiB per face (measured)
ORIGINAL_GIB_PER_FACE = 0.45


# --- inputs ----------------------------------------------------------------------------


def make_inputs(folder: Path, max_batch: int) -> tuple[Path, Path]:
    """The image (BGR uint8) and `max_batch` face boxes, saved as .npy files in `folder`."""
    import cv2

    image_path = SHARED / "fixtures" / "images" / "image_sportsfan.jpg"
    rng = np.random.default_rng(0)
    if image_path.is_file():
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        box = np.array(json.loads((SHARED / "fixtures" / "equivalence" / "wflw_seed1_sportsfan.json").read_text())
                       ["bboxes_xywh"][0])
    else:
        image = rng.integers(0, 256, (720, 960, 3), dtype=np.uint8)
        image = cv2.GaussianBlur(image, (0, 0), 6)
        cv2.ellipse(image, (480, 360), (140, 180), 0, 0, 360, (150, 170, 210), -1)
        box = np.array([350.0, 200.0, 260.0, 300.0])
    # the same face, jittered: every box is a different crop
    jitter = rng.uniform(-0.08, 0.08, (max_batch, 4)) * box[[2, 3, 2, 3]]
    boxes = box + jitter
    boxes[0] = box
    np.save(folder / "image.npy", image)
    np.save(folder / "boxes.npy", boxes)
    return folder / "image.npy", folder / "boxes.npy"


def make_weights(folder: Path, original_site: Path | None) -> tuple[Path, Path, str]:
    """Random official-layout weights (.pt) and the same weights as a spiga checkpoint.

    Returns (official .pt, checkpoint, a description of the weights)."""
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from spiga.checkpoint import convert_official, save_checkpoint
    from spiga.landmarks import landmark_set_for, read_mean_face
    from spiga.testing import random_model

    landmarks = landmark_set_for(DATASET)
    official = folder / f"spiga_{DATASET}.pt"
    checkpoint = folder / f"{DATASET}.safetensors"
    mean_face = None
    for candidate in (SHARED / "fixtures" / "upstream" / "models3D" / "mean_face_3D_98.txt",
                      (original_site / "spiga" / "data" / "models3D" / "mean_face_3D_98.txt") if original_site else None):
        if candidate is not None and candidate.is_file():
            mean_face = candidate
            break
    tool = SHARED / "tools" / "random_spiga_weights.py"
    bn_stats = SHARED / "fixtures" / "equivalence" / "bn_stats_wflw_seed1.npz"
    if tool.is_file() and bn_stats.is_file() and mean_face is not None:
        subprocess.run([sys.executable, str(tool), "--landmarks", "98", "--seed", "1", "--bn-stats", str(bn_stats),
                        "--out", str(official)], check=True)
        convert_official(official, DATASET, mean_face, checkpoint)
        return official, checkpoint, "shared tool, seed 1, measured batch-norm statistics"
    points = read_mean_face(mean_face, landmarks) if mean_face is not None else None
    model, _ = random_model("official", landmarks, seed=0, mean_face_3d=points)
    torch.save(model.state_dict(), official)
    save_checkpoint(checkpoint, model, landmarks)
    return official, checkpoint, "PyTorch default initialisation, seed 0"


def model_flops() -> tuple[float, float]:
    """(GFLOPs per face, millions of parameters) of the official-size model."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(REPO / "src"))
    from spiga.model import SPIGA, ModelConfig

    model = SPIGA(ModelConfig.official(98, 15), torch.zeros(98, 16)).eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.rand(1, 3, 256, 256))
    return counter.get_total_flops() / 1e9, sum(p.numel() for p in model.parameters()) / 1e6


# --- workers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Impl:
    """One implementation under test."""

    label: str
    kind: str  # "original" or "ours"
    precision: str = "float32"
    compile: bool = False
    backend: str = "torch"


def worker(conn, impl: Impl, threads: int, paths: dict, clock_name: str = "wall") -> None:
    """Load `impl` and answer ("warm", batch) / ("time", batch, calls) / ("quit",) messages."""
    try:
        import torch

        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        image = np.load(paths["image"])
        all_boxes = np.load(paths["boxes"])
        if impl.kind == "original":
            sys.path.insert(0, str(HERE))
            from original import load_original

            run = load_original(Path(paths["original_site"]), Path(paths["official"]), DATASET)
        else:
            sys.path.insert(0, str(REPO / "src"))
            import spiga

            model = paths["onnx"] if impl.backend == "onnxruntime" else paths["checkpoint"]
            aligner = spiga.load(model, device="cpu", precision=impl.precision, compile=impl.compile,
                                 backend=impl.backend, max_batch=64, tune_process=True)  # as the commands do

            def run(image, boxes):
                faces = aligner.align(image, boxes)
                return (np.stack([f.landmarks for f in faces]), np.stack([f.headpose.as_array() for f in faces]))
        conn.send(("ready", None))
    except Exception as exc:  # reported, not raised: the table says what failed
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        message = conn.recv()
        try:
            if message[0] == "quit":
                return
            batch = message[1]
            boxes = all_boxes[:batch]
            if message[0] == "warm":
                start = time.perf_counter()
                landmarks, pose = run(image, boxes)
                conn.send(("ok", (time.perf_counter() - start, np.asarray(landmarks), np.asarray(pose))))
            elif message[0] == "time":
                resettable = reset_peak_memory()
                seconds = harness.time_call(lambda: run(image, boxes), message[2], warmup=0, clock=clock_name).seconds
                conn.send(("ok", (seconds, peak_memory_mib(), resettable)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class Worker:
    def __init__(self, impl: Impl, threads: int, paths: dict, clock: str = "wall"):
        context = mp.get_context("spawn")
        self.impl = impl
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker, args=(child, impl, threads, paths, clock), daemon=True)
        self.process.start()
        status, detail = self.conn.recv()
        self.error = detail if status == "error" else None

    def ask(self, *message):
        try:
            self.conn.send(message)
            status, detail = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(timeout=5)
            code = self.process.exitcode
            reason = "killed (out of memory?)" if code in (-9, 137) else f"exit code {code}"
            self.error = f"worker process died: {reason}"
            raise RuntimeError(self.error) from None
        if status == "error":
            raise RuntimeError(detail)
        return detail

    def close(self) -> None:
        try:
            if self.process.is_alive() and self.error is None:
                self.conn.send(("quit",))
            self.process.join(timeout=10)
        except (OSError, EOFError):
            pass
        finally:
            if self.process.is_alive():
                self.process.terminate()


# --- the run ---------------------------------------------------------------------------


@dataclass
class Result:
    impl: Impl
    per_face: dict[int, list[float]] = field(default_factory=dict)
    peak_mib: dict[int, float] = field(default_factory=dict)
    warm_s: dict[int, float] = field(default_factory=dict)
    outputs: dict[int, tuple] = field(default_factory=dict)
    error: str | None = None


def run_benchmark(args) -> dict:
    import torch

    threads = args.threads or torch.get_num_threads()
    folder = Path(tempfile.mkdtemp(prefix="spiga-bench-"))
    original_site, original_error = None, None
    if not args.no_original:
        sys.path.insert(0, str(HERE))
        from original import install_original

        try:
            original_site = install_original()
        except Exception as exc:
            original_error = str(exc)
    elif args.no_original:
        original_error = "skipped (--no-original)"
    log(f"preparing weights and inputs in {folder}")
    official, checkpoint, weights_note = make_weights(folder, original_site)
    image_path, boxes_path = make_inputs(folder, max(args.batches))
    paths = {"image": str(image_path), "boxes": str(boxes_path), "official": str(official),
             "checkpoint": str(checkpoint), "original_site": str(original_site)}

    impls = []
    if original_site is not None:
        impls.append(Impl("original 0.0.6", "original"))
    for precision in args.precisions:
        impls.append(Impl(f"spiga {precision}", "ours", precision))
        if args.compile:
            impls.append(Impl(f"spiga {precision} compiled", "ours", precision, compile=True))
    if args.onnx:
        from spiga.inference.onnx_export import export_onnx

        paths["onnx"] = str(folder / "model.onnx")
        export_onnx(checkpoint, paths["onnx"], dynamic_batch=True)
        impls.append(Impl("spiga onnxruntime float32", "ours", backend="onnxruntime"))

    log("measuring the matmul peak")
    # bfloat16's peak only where it is timed: without native bfloat16 an emulated 2048^3
    # matmul takes minutes
    peaks = {name: matmul_peak(threads, name) for name in ("float32", "bfloat16")
             if name == "float32" or name in args.precisions}
    gflops_per_face, params_m = model_flops()

    def remeasure_peaks() -> None:  # the best of several: other load on the machine only lowers it
        for name in peaks:
            peaks[name] = max(peaks[name], matmul_peak(threads, name, runs=4))

    results = {impl: Result(impl) for impl in impls}
    workers: dict[Impl, Worker] = {}
    try:
        for impl in impls:
            log(f"loading {impl.label}")
            w = Worker(impl, threads, paths, args.clock)
            if w.error:
                results[impl].error = w.error
                w.close()
                continue
            workers[impl] = w
        # batch sizes in increasing order, each warmed up then timed in interleaved turns,
        # so that a batch size's peak memory is not raised by a larger one run before it
        for batch in args.batches:
            for impl, w in list(workers.items()):
                available = available_memory_gib()
                needed = ORIGINAL_GIB_PER_FACE * batch
                if impl.kind == "original" and available is not None and needed > 0.9 * available:
                    results[impl].error = (f"batch {batch} skipped: it would need about {needed:.0f} GiB more "
                                           f"(its inference keeps the autograd graph), {available:.0f} GiB available")
                    w.close()
                    del workers[impl]
                    continue
                log(f"warm-up {impl.label}, batch {batch}")
                try:
                    seconds, landmarks, pose = w.ask("warm", batch)
                except RuntimeError as exc:
                    results[impl].error = f"batch {batch}: {exc}"
                    w.close()
                    del workers[impl]
                    continue
                results[impl].warm_s[batch] = seconds
                results[impl].outputs[batch] = (landmarks, pose)
            # each timed turn lasts about args.turn_s for the slowest implementation
            slowest = max((r.warm_s.get(batch, 0) for r in results.values()), default=1.0)
            calls = max(1, min(10, round(args.turn_s / max(slowest, 1e-3))))
            for repeat in range(args.repeats):
                order = list(workers.items())
                shift = repeat % max(1, len(order))
                for impl, w in order[shift:] + order[:shift]:
                    if impl not in workers or batch not in results[impl].warm_s:
                        continue
                    try:
                        seconds, peak, _ = w.ask("time", batch, calls)
                    except RuntimeError as exc:
                        results[impl].error = f"batch {batch}: {exc}"
                        w.close()
                        del workers[impl]
                        continue
                    results[impl].per_face.setdefault(batch, []).extend(s / batch for s in seconds)
                    results[impl].peak_mib[batch] = max(results[impl].peak_mib.get(batch, 0.0), peak)
                log(f"batch {batch}: repeat {repeat + 1}/{args.repeats} done")
                remeasure_peaks()
    finally:
        for w in workers.values():
            w.close()

    return {
        "machine": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "threads": threads,
                    "amx_bf16": "amx_bf16" in cpu_flags(), "avx512_bf16": "avx512_bf16" in cpu_flags(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "isa": _isa_description(),
                    "isa_limits": " ".join(f"{k}={os.environ[k]}" for k in ISA_LIMITS if os.environ.get(k))},
        "weights": weights_note, "gflops_per_face": gflops_per_face, "params_m": params_m,
        "matmul_peak_gflops": peaks, "original_error": original_error, "batches": args.batches,
        "clock": args.clock, "load_average": _load_average(),
        "results": results,
    }


# environment variables that make this CPU behave as one with fewer instruction sets (an
# AVX-512 machine as an AVX2-only one): oneDNN's, ATen's and MKL's limits
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def _isa_description() -> str:
    """What spiga's CPU probe finds (vector ISA, fused oneDNN operators, native bfloat16)."""
    sys.path.insert(0, str(REPO / "src"))
    try:
        from spiga.inference.cpu import cpu_features
    except ImportError:  # an older checkout without the probe
        import torch

        return torch.backends.cpu.get_cpu_capability()
    return cpu_features().describe()


def _load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def summarise(report: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and notes of the result table."""
    results: dict[Impl, Result] = report["results"]
    original = next((r for i, r in results.items() if i.kind == "original"), None)
    header = ["implementation", "batch", "ms/face", "faces/s", "peak MiB", "vs original", "GFLOPS",
              "% matmul peak", "max |diff| px"]
    rows = []
    for batch in report["batches"]:
        for impl, result in results.items():
            if batch not in result.per_face:
                continue
            per_face = float(np.median(result.per_face[batch]))
            speedup = ""
            diff = ""
            if original is not None and batch in original.per_face:
                speedup = f"{np.median(original.per_face[batch]) / per_face:.2f}x"
                if impl.kind != "original" and batch in original.outputs:
                    diff = f"{np.abs(result.outputs[batch][0] - original.outputs[batch][0]).max():.3f}"
            achieved = report["gflops_per_face"] / per_face
            peak_name = "bfloat16" if impl.precision == "bfloat16" else "float32"
            short = {"bfloat16": "bf16", "float32": "fp32"}[peak_name]
            rows.append([impl.label, str(batch), f"{per_face * 1000:.0f}", f"{1 / per_face:.2f}",
                         f"{result.peak_mib.get(batch, float('nan')):.0f}", speedup, f"{achieved:.0f}",
                         f"{100 * achieved / report['matmul_peak_gflops'].get(peak_name, math.nan):.0f}% {short}",
                         diff])
    machine = report["machine"]
    notes = [
        f"machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['threads']} threads, "
        f"AMX-BF16 {'yes' if machine['amx_bf16'] else 'no'}, AVX512-BF16 {'yes' if machine['avx512_bf16'] else 'no'}; "
        f"Python {machine['python']}, torch {machine['torch']}",
        f"instruction sets: {machine['isa']}" + (f" (limited by {machine['isa_limits']})" if machine["isa_limits"]
                                                 else ""),
        f"matmul peak (2048^3, {machine['threads']} threads): "
        + ", ".join(f"{name} {value:.0f} GFLOPS" for name, value in report["matmul_peak_gflops"].items()),
        f"model: official size, 98 landmarks, {report['gflops_per_face']:.1f} GFLOPs/face, "
        f"{report['params_m']:.1f}M parameters; weights: {report['weights']}",
        f"timed ({report['clock']} clock): image + boxes -> landmarks in image pixels (crop, network, "
        f"back-projection); medians of interleaved repeats; load average at the end {report['load_average']}; "
        "max |diff|: landmarks vs the original on the same faces (random weights amplify "
        "rounding: bfloat16 differences here say nothing about accuracy on a trained model)",
    ]
    if report["original_error"]:
        notes.append(f"original: not available ({report['original_error']})")
    for impl, result in results.items():
        if result.error:
            notes.append(f"{impl.label}: not measured further ({result.error})")
        elif impl.compile:
            warm = ", ".join(f"batch {b}: {s:.0f} s" for b, s in result.warm_s.items())
            notes.append(f"{impl.label}: first call per batch size (compiling) {warm}")
    return header, rows, notes


def update_readme_section(path: Path, name: str, text: str, title: str) -> None:
    """Put `text` between `<!-- {name}:start -->` and `<!-- {name}:end -->` in the Markdown file
    `path` (appending a section `title` with the markers when absent); atomic."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = path.read_text() if path.is_file() else ""
    block = f"{start}\n{text}\n{end}"
    if start in content and end in content:
        content = content[:content.index(start)] + block + content[content.index(end) + len(end):]
    else:
        content = content.rstrip() + f"\n\n{title}\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(content)
    os.replace(tmp, path)


def format_text(header, rows) -> str:
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="threads per implementation (default: torch's)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="faces per call")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed turns per batch size")
    parser.add_argument("--turn-s", type=float, default=1.5, help="about how long one timed turn lasts")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16"], help="our precisions to measure")
    parser.add_argument("--compile", action="store_true", help="also measure the torch.compile paths")
    parser.add_argument("--onnx", action="store_true", help="also measure the onnxruntime backend")
    parser.add_argument("--no-original", action="store_true", help="do not install or run the original")
    parser.add_argument("--quick", action="store_true", help="batch 1 and 8, two repeats")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or each worker's CPU time (meaningful with --threads 1 on a busy "
                             "machine: time spent waiting for a core is not counted)")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--readme", metavar="FILE.md",
                        help="put the Markdown table into FILE.md between <!-- SECTION:start/end --> markers")
    parser.add_argument("--section", default="cpu-results", help="marker name for --readme (default cpu-results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.repeats = [1, 8], 2
    report = run_benchmark(args)
    header, rows, notes = summarise(report)
    print(format_text(header, rows))
    print()
    print("\n".join(notes))
    if args.markdown:
        print()
        print(format_markdown(header, rows))
        print()
        print("\n".join(f"- {note}" for note in notes))
    if args.readme:
        given = list(argv if argv is not None else sys.argv[1:])
        shown = []
        while given:  # the command as run, without where its outputs went
            item = given.pop(0)
            if item in ("--readme", "--section", "--json"):
                given = given[1:]
            elif not item.startswith(("--readme=", "--section=", "--json=")):
                shown.append(item)
        command = "python speed/bench.py " + " ".join(shown)
        text = "\n".join([f"`{command.strip()}`", "", format_markdown(header, rows), ""] +
                          [f"- {note}" for note in notes])
        update_readme_section(Path(args.readme), args.section, text, "### CPU figures")
    if args.json:
        data = {k: v for k, v in report.items() if k != "results"}
        data["table"] = {"header": header, "rows": rows, "notes": notes}
        Path(args.json).write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
