#!/usr/bin/env python3
"""Faces per second on a CUDA GPU: spiga (float32, bfloat16, float16) and the original.

    bash speed/gpu.sh                  # what to run on a GPU machine (see gpu.sh)
    PYTHONPATH=src python speed/gpu.py --batches 1 32 128 --readme docs/performance.md

Needs only torch (with CUDA), numpy, opencv, pillow, safetensors and the repository
(`PYTHONPATH=src`, nothing installed). The original (`spiga==0.0.6`) runs when it can be
found or installed: in --original-site, $SPIGA_ORIGINAL_SITE, speed/.cache/original-0.0.6
(make it beforehand with `python speed/original.py speed/.cache/original-0.0.6`
and carry the folder to a machine without internet), or by pip; otherwise the table
says why it is missing.

Measured, for each implementation and batch size: end-to-end faces/s (image + boxes ->
landmarks in image pixels, the way a user calls it; for ours the crops are made on the
CPU, the network runs on the GPU) and, for ours, network-only faces/s (crops already made;
uint8 crops in, landmarks out). Every implementation runs in its own process; the
original's bfloat16 row is the original under `torch.autocast` (it has no precision option).
Results go to stdout as Markdown and, with --readme, into that file between the markers
`<!-- gpu-results:start -->` and `<!-- gpu-results:end -->`; with $OUT set, also to
$OUT/gpu_results.md and $OUT/gpu_results.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402  (stdlib + numpy at import time)
import harness  # noqa: E402


def find_original(explicit: str | None) -> tuple[Path | None, str | None]:
    candidates = [explicit, os.environ.get("SPIGA_ORIGINAL_SITE"), str(HERE / ".cache" / "original-0.0.6")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "spiga" / "inference" / "framework.py").is_file():
            return Path(candidate), None
    from original import install_original

    try:
        return install_original(), None
    except Exception as exc:
        return None, str(exc)


DEVICE = "cuda"


def _sync():
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak() -> None:
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_mib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2 ** 20 if DEVICE.startswith("cuda") else float("nan")


def _time(fn, warmup: int, runs: int, budget_s: float) -> list[float]:
    return harness.time_call(fn, runs, warmup, sync=_sync, budget_s=budget_s).seconds


def _failed_row(batch: int, exc: Exception) -> dict:
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"batch": batch, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}


def worker(conn, spec: dict, paths: dict, batches: list[int], args: dict) -> None:
    """Measure one implementation in this process; send back rows or an error."""
    global DEVICE
    DEVICE = args["device"]
    try:
        import torch

        torch.backends.cudnn.benchmark = True
        image = np.load(paths["image"])
        all_boxes = np.load(paths["boxes"])
        rows = []
        if spec["kind"] == "original":
            from original import load_original

            run = load_original(Path(paths["original_site"]), Path(paths["official"]), bench.DATASET,
                                device="cuda" if DEVICE.startswith("cuda") else "cpu",
                                autocast_dtype=torch.bfloat16 if spec["precision"] == "bfloat16" else None)
            for batch in batches:
                boxes = np.resize(all_boxes, (batch, 4))

                def call():
                    run(image, boxes)
                _reset_peak()
                try:
                    seconds = _time(call, args["warmup"], args["runs"], args["budget_s"])
                except Exception as exc:  # e.g. CUDA out of memory at a large batch: keep the smaller ones
                    rows.append(_failed_row(batch, exc))
                    continue
                rows.append({"batch": batch, "end_to_end": batch / float(np.median(seconds)),
                             "network": None, "peak_mib": _peak_mib()})
        else:
            sys.path.insert(0, str(REPO / "src"))
            import spiga
            from spiga.geometry.crop import crop_images

            aligner = spiga.load(paths["checkpoint"], device=DEVICE, precision=spec["precision"],
                                 compile=spec.get("compile", False), max_batch=max(batches))
            for batch in batches:
                boxes = np.resize(all_boxes, (batch, 4))
                crops, _ = crop_images(image, boxes, aligner.preprocessing)
                _reset_peak()
                try:
                    network = _time(lambda: aligner.predict_crops(crops), args["warmup"], args["runs"],
                                    args["budget_s"])
                    end_to_end = _time(lambda: aligner.align(image, boxes), 1, args["runs"], args["budget_s"])
                except Exception as exc:
                    rows.append(_failed_row(batch, exc))
                    continue
                rows.append({"batch": batch, "end_to_end": batch / float(np.median(end_to_end)),
                             "network": batch / float(np.median(network)), "peak_mib": _peak_mib()})
        conn.send(("ok", rows))
    except Exception as exc:
        import traceback

        conn.send(("error", f"{type(exc).__name__}: {exc} | {traceback.format_exc().splitlines()[-3].strip()}"))


def measure(spec: dict, paths: dict, batches: list[int], args: dict, timeout_s: float) -> tuple[list, str | None]:
    context = mp.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=worker, args=(child, spec, paths, batches, args), daemon=True)
    process.start()
    if not parent.poll(timeout_s):
        process.terminate()
        return [], f"timed out after {timeout_s:.0f} s"
    status, detail = parent.recv()
    process.join(timeout=30)
    return (detail, None) if status == "ok" else ([], detail)


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def markdown(report: dict) -> str:
    lines = [f"GPU: **{report['gpu']}** (CUDA {report['cuda']}, torch {report['torch']}, driver-visible memory "
             f"{report['gpu_memory_gib']:.0f} GiB); host CPU: {report['cpu']}; {report['date']}.", "",
             "| implementation | precision | batch | end-to-end faces/s | network-only faces/s | peak GPU MiB | "
             "end-to-end vs original float32 |",
             "|---|---|---|---|---|---|---|"]
    base = {row["batch"]: row["end_to_end"] for entry in report["results"]
            if entry["kind"] == "original" and entry["precision"] == "float32" for row in entry["rows"]
            if "error" not in row}
    for entry in report["results"]:
        for row in entry["rows"]:
            if "error" in row:
                lines.append(f"| {entry['label']} | {entry['precision']} | {row['batch']} | failed: {row['error']} "
                             f"| | | |")
                continue
            ratio = f"{row['end_to_end'] / base[row['batch']]:.1f}x" if row["batch"] in base else ""
            network = _rate(row["network"]) if row["network"] else "-"
            lines.append(f"| {entry['label']} | {entry['precision']} | {row['batch']} | {_rate(row['end_to_end'])} | "
                         f"{network} | {row['peak_mib']:.0f} | {ratio} |")
    for entry in report["results"]:
        if entry["error"]:
            lines.append(f"\n{entry['label']} {entry['precision']}: not measured ({entry['error']})")
    if report["original_error"]:
        lines.append(f"\noriginal: not available ({report['original_error']})")
    lines.append(f"\nWeights: {report['weights']}. Command: `bash speed/gpu.sh`.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--runs", type=int, default=10, help="timed calls per configuration (at most)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=15.0, help="time limit per configuration")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (bfloat16)")
    parser.add_argument("--no-original", action="store_true")
    parser.add_argument("--original-site", default=None, help="folder holding the installed original")
    parser.add_argument("--readme", default=None, help="Markdown file to put the table in (between markers)")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": smoke test of this script
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu.py: no CUDA GPU visible to torch", file=sys.stderr)
        return 1
    folder = Path(tempfile.mkdtemp(prefix="spiga-gpu-bench-"))
    original_site, original_error = (None, "skipped (--no-original)") if args.no_original else \
        find_original(args.original_site)
    official, checkpoint, weights_note = bench.make_weights(folder, original_site)
    image_path, boxes_path = bench.make_inputs(folder, 32)
    paths = {"image": str(image_path), "boxes": str(boxes_path), "official": str(official),
             "checkpoint": str(checkpoint), "original_site": str(original_site)}
    specs = []
    if original_site is not None:
        specs += [{"label": "original 0.0.6", "kind": "original", "precision": "float32"},
                  {"label": "original 0.0.6 (autocast)", "kind": "original", "precision": "bfloat16"}]
    specs += [{"label": "spiga", "kind": "ours", "precision": p} for p in args.precisions]
    if args.compile:
        specs.append({"label": "spiga compiled", "kind": "ours", "precision": "bfloat16", "compile": True})
    timing = {"runs": args.runs, "warmup": args.warmup, "budget_s": args.budget_s, "device": args.device}
    results = []
    for spec in specs:
        print(f"[gpu] {spec['label']} {spec['precision']}", file=sys.stderr, flush=True)
        timeout = args.budget_s * 3 * len(args.batches) + (600 if spec.get("compile") else 120)
        rows, error = measure(spec, paths, args.batches, timing, timeout)
        results.append({**spec, "rows": rows, "error": error})
    on_gpu = args.device.startswith("cuda")
    report = {"gpu": torch.cuda.get_device_name(0) if on_gpu else f"none (smoke test on {args.device})",
              "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2 ** 30 if on_gpu else 0.0,
              "cuda": torch.version.cuda, "torch": torch.__version__, "cpu": harness.cpu_name(),
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), "weights": weights_note,
              "original_error": original_error, "results": results}
    text = markdown(report)
    print(text)
    if args.readme:
        bench.update_readme_section(Path(args.readme), "gpu-results", text, "### GPU figures")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_results.md").write_text(text + "\n")
        Path(out, "gpu_results.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
