#!/usr/bin/env python3
"""Time `Aligner.align` on one face and on 8 faces of one image (official model size).

Prints median seconds per call, faces per second and the process's peak resident
memory. Weights are random (seeded), which costs the same as trained ones; denormal
floats are flushed so random values do not slow the CPU down.

    python speed/align_speed.py [--threads 2] [--repeats 5] [--size official]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import harness

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spiga.checkpoint import Checkpoint  # noqa: E402
from spiga.inference import Aligner  # noqa: E402
from spiga.landmarks import WFLW_98  # noqa: E402
from spiga.testing import random_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="official", help="model size: official, small, tiny")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    model, _ = random_model(args.size, WFLW_98, seed=0, mean_face_3d=np.random.default_rng(0).normal(size=(98, 3)) * 0.3)
    aligner = Aligner(Checkpoint(model, WFLW_98, model.config), device=args.device, tune_process=True)  # as `spiga align` does
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(720, 1280, 3), dtype=np.uint8)
    boxes = [(60 + 150 * i, 200 + 20 * (i % 3), 140, 160) for i in range(8)]

    print(f"model size {args.size}, device {args.device}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'faces':>5} {'s/call (median)':>16} {'faces/s':>8} {'s/face':>8}")
    for count in (1, 8):
        median = harness.time_call(lambda: aligner.align(image, boxes[:count]), args.repeats, warmup=1).median
        print(f"{count:>5} {median:>16.3f} {count / median:>8.2f} {median / count:>8.3f}")
    print(f"peak memory: {harness.peak_memory_mib():.0f} MiB")


if __name__ == "__main__":
    main()
