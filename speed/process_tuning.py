"""What `tune_process` gains: per-face time with and without the process-wide settings.

    PYTHONPATH=src python speed/process_tuning.py                    # official size, batch 1 and 8
    PYTHONPATH=src python speed/process_tuning.py --size small --processes 4 --calls 5

`spiga.load(..., tune_process=True)` (what the `spiga` commands pass) keeps large freed
blocks in the heap (glibc `mallopt`) and flushes denormal floats to zero during each
network call (`spiga.inference.backends.tune_cpu_process`); the library's default leaves
the process alone. The settings are process-wide, so each measurement is a fresh process:
`--processes` of each kind, alternating (off, on, off, on, ...), each loading a
random-weight checkpoint of `--size`, warming up once per batch size, then timing
`--calls` calls of `predict_crops` on random crops per batch size. Prints the median time
per face of each setting and batch, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from startup import cpu_name, random_checkpoint  # noqa: E402

#: One measurement: argv = checkpoint, tune (0/1), calls, batch sizes (comma-separated).
WORKER = """
import json, statistics, sys, time
import numpy as np
import spiga
model, tune, calls, batches = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4].split(",")
aligner = spiga.load(model, device="cpu", tune_process=tune)
size = aligner.config.image_size
rng = np.random.default_rng(0)
result = {}
for batch in map(int, batches):
    crops = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    aligner.predict_crops(crops)  # warm-up: oneDNN primitives, the heap
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        aligner.predict_crops(crops)
        times.append((time.perf_counter() - start) / batch)
    result[batch] = statistics.median(times)
print(json.dumps(result))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "small", "official"], default="official",
                        help="random-weight model size (official)")
    parser.add_argument("--processes", type=int, default=2, help="processes per setting (2)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per batch size and process (3)")
    parser.add_argument("--batches", default="1,8", help="batch sizes (1,8)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="spiga-tuning-"))
    model = random_checkpoint(work, args.size)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    seconds: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    for index in range(args.processes):
        for name, tune in (("off", "0"), ("on", "1")):
            done = subprocess.run([sys.executable, "-c", WORKER, str(model), tune, str(args.calls), args.batches],
                                  env=env, capture_output=True, text=True, check=True)
            for batch, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
                seconds[name].setdefault(batch, []).append(value)
        print(f"  process pair {index + 1}/{args.processes} done", file=sys.stderr)
    print(f"{cpu_name()}, {os.cpu_count()} logical CPUs, torch threads: default; model size {args.size}")
    print("| batch | tune_process=False, ms/face | tune_process=True, ms/face | off / on |")
    print("|---:|---:|---:|---:|")
    for batch in seconds["off"]:
        off, on = statistics.median(seconds["off"][batch]), statistics.median(seconds["on"][batch])
        print(f"| {batch} | {off * 1000:.1f} | {on * 1000:.1f} | {off / on:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
