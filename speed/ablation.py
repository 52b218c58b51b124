#!/usr/bin/env python3
"""What each inference optimisation gives: network-only time per face, one change at a time.

    python speed/ablation.py                    # batch 1 and 8, 2 threads
    python speed/ablation.py --compile          # also torch.compile (minutes of compiling)

Every variant runs the official-size network on the same 256 x 256 crops, in this one
process, in turns (the order rotates every repeat), and the table shows the median time
per face and the largest landmark difference from the first row (in crop pixels). The
first row is the training module (`spiga.model.SPIGA`, the same arithmetic as the
original implementation) with autograd on, as the original's inference runs it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402
import harness  # noqa: E402


def _no_grad(run, x):
    import torch

    with torch.no_grad():
        return run(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--clock", choices=sorted(harness.CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (meaningful with --threads 1 on a busy "
                             "machine: time spent waiting for a core is not counted)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--readme", metavar="FILE.md",
                        help="also write the table into FILE.md between <!-- SECTION:start/end --> markers")
    parser.add_argument("--section", default="ablation", help="marker name for --readme (default ablation)")
    args = parser.parse_args(argv)

    import torch

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    folder = Path(tempfile.mkdtemp(prefix="spiga-ablation-"))
    _, checkpoint_path, weights_note = bench.make_weights(folder, None)
    image_path, boxes_path = bench.make_inputs(folder, max(args.batches))
    from spiga.checkpoint import load_checkpoint
    from spiga.geometry.crop import crop_images
    from spiga.inference.optimize import prepare_for_inference

    checkpoint = load_checkpoint(checkpoint_path)
    model = checkpoint.model.eval()
    crops, _ = crop_images(np.load(image_path), np.load(boxes_path), checkpoint.config.preprocessing)
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255

    def module(grad: bool):
        def run(x):
            with torch.set_grad_enabled(grad):
                return model(x)["landmarks"][-1].detach()
        return run

    def optimised(**options):
        network = prepare_for_inference(model, **options)

        def run(x):
            return network(x)["landmarks"][-1]
        return run

    variants = [
        ("SPIGA module, autograd on (as the original runs)", module(True)),
        ("+ inference mode", module(False)),
        ("+ BN folded, CoordConv precomputed",
         optimised(precision="float32", channels_last=False, fuse=False, sampler="embedding_bag")),
        ("+ channels-last", optimised(precision="float32", channels_last=True, fuse=False, sampler="embedding_bag")),
        ("+ oneDNN fused conv/linear, pre-packed weights (default float32)", optimised(precision="float32")),
        ("float64 (the reference)", optimised(precision="float64")),
        ("bfloat16, plain oneDNN ops", optimised(precision="bfloat16", fuse=False)),
        ("bfloat16, fused (default bfloat16)", optimised(precision="bfloat16")),
    ]
    if args.compile:
        for precision in ("float32", "bfloat16"):
            network = prepare_for_inference(model, precision, fuse=False)
            compiled = torch.compile(network, dynamic=False, options={"freezing": True})
            variants.append((f"{precision}, torch.compile (frozen weights)",
                             lambda x, c=compiled: c(x)["landmarks"][-1]))

    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in args.batches} for name, _ in variants}
    differences: dict[str, float] = {}
    compile_s: dict[str, float] = {}
    with torch.inference_mode(False):
        for batch in args.batches:
            x = images[:batch]
            reference = None
            for name, run in variants:
                start = time.perf_counter()
                with torch.no_grad():
                    out = run(x)
                if "compile" in name:
                    compile_s[f"{name}, batch {batch}"] = time.perf_counter() - start
                if reference is None:
                    reference = out
                differences[name] = max(differences.get(name, 0.0), float((out - reference).abs().max()) * 256)
                print(f"[ablation] warm {name}, batch {batch}", file=sys.stderr, flush=True)
            candidates = {name: (lambda run=run: _no_grad(run, x)) for name, run in variants}
            timed = harness.time_interleaved(candidates, args.repeats, warmup=0, clock=args.clock, rotate=True)
            for name, timing in timed.items():
                times[name][batch] = [seconds / batch for seconds in timing.seconds]
    header = ["network variant"] + [f"ms/face batch {b}" for b in args.batches] + \
        [f"vs first, batch {b}" for b in args.batches] + ["max |diff| px"]
    rows = []
    first = variants[0][0]
    for name, _ in variants:
        medians = [np.median(times[name][b]) for b in args.batches]
        ratios = [np.median(times[first][b]) / m for b, m in zip(args.batches, medians)]
        rows.append([name] + [f"{m * 1000:.0f}" for m in medians] + [f"{r:.2f}x" for r in ratios] +
                    [f"{differences[name]:.3f}"])
    print(bench.format_text(header, rows))
    print(f"\n{harness.cpu_name()}, {threads} threads, torch {torch.__version__}; weights: {weights_note}; "
          f"medians of {args.repeats} interleaved repeats, {args.clock} clock")  # noqa: E501
    for name, seconds in compile_s.items():
        print(f"first call of {name}: {seconds:.0f} s (compiling)")
    note = (f"{harness.cpu_name()} ({bench._isa_description()}), {threads} threads, torch {torch.__version__}; "
            f"weights: {weights_note}; medians of {args.repeats} interleaved repeats, {args.clock} clock")
    if args.markdown:
        print()
        print(bench.format_markdown(header, rows))
    if args.readme:
        shown = [a for a in (argv if argv is not None else sys.argv[1:])]
        while "--readme" in shown:
            at = shown.index("--readme")
            del shown[at:at + 2]
        while "--section" in shown:
            at = shown.index("--section")
            del shown[at:at + 2]
        text = "\n".join([f"`python speed/ablation.py {' '.join(shown)}`".replace("  ", " "), "",
                          bench.format_markdown(header, rows), "", f"- {note}"])
        bench.update_readme_section(Path(args.readme), args.section, text, "### What each change gives")
    return 0


if __name__ == "__main__":
    sys.exit(main())
