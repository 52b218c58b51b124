#!/usr/bin/env python3
"""Scale of `spiga align --ray`: the one-machine runner against Ray with 1 and 2 workers.

    python speed/ray_scale.py                          # 32 photos, small model
    python speed/ray_scale.py --images 200 --size official --workers 1 2 4
    python speed/ray_scale.py --folder my_photos/      # your own photos

Needs the `ray` extra. Runs from a clean checkout (it puts ../src on the path). The
folder is copies of the shared fixture photo (one face each, found by BlazeFace), or a
synthetic picture when ../shared is absent, or --folder. Weights are random (seeded), which
costs the same as trained ones.

Method: the one-machine runner (`align_files`, model loaded beforehand, --threads PyTorch
threads, 2 decode threads) and `align_files_on_ray` on a local Ray started once beforehand
(each worker one CPU and one PyTorch thread; the time includes starting the workers and
loading the model in each). Ray with 1 worker also runs on a quarter of the folder, so
that its time splits into a fixed cost (starting workers, planning) and a cost per image;
the per-image overhead of the Ray path is that cost minus the one-machine runner's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import harness

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
SHARED_PHOTO = HERE.parent.parent / "shared" / "fixtures" / "images" / "image_sportsfan.jpg"


def make_folder(folder: Path, count: int) -> Path:
    """`count` photos: copies of the shared photo, else a synthetic face picture."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    if SHARED_PHOTO.exists():
        data = SHARED_PHOTO.read_bytes()
    else:
        image = np.full((480, 640, 3), 60, np.uint8)
        cv2.ellipse(image, (320, 240), (90, 120), 0, 0, 360, (150, 170, 210), -1)
        data = cv2.imencode(".jpg", image)[1].tobytes()
    for i in range(count):
        (folder / f"photo_{i:04d}.jpg").write_bytes(data)
    return folder


def make_model(path: Path, size: str) -> Path:
    from spiga.testing import random_checkpoint

    mean_face = np.random.default_rng(0).normal(size=(98, 3)) * 0.3
    return random_checkpoint(path, size, "wflw98", seed=0, mean_face_3d=mean_face)


def time_one_machine(model: Path, paths: list, threads: int, out: Path) -> tuple[float, int]:
    import torch

    import spiga
    from spiga.inference.many_images import align_files

    torch.set_num_threads(threads)
    aligner = spiga.load(model)
    start = time.perf_counter()
    summary = align_files(aligner, paths, jsonl=out, progress=False)
    return time.perf_counter() - start, summary.faces


def time_ray(model: Path, inputs: list, workers: int, out: Path, gpus: float = 0) -> tuple[float, int]:
    from spiga.ray import align_files_on_ray

    start = time.perf_counter()
    summary = align_files_on_ray(inputs, jsonl=out, progress=False, model=model, concurrency=workers, num_cpus=1,
                                 num_gpus=gpus)
    return time.perf_counter() - start, summary.faces


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", default="small", help="model size: tiny, small, official (default small)")
    parser.add_argument("--folder", type=Path, help="your photos (default: copies of the shared photo)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads of the one-machine runner")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    parser.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per Ray worker (default 0)")
    args = parser.parse_args()

    import ray

    from spiga.inference.many_images import expand_inputs

    scratch = Path(tempfile.mkdtemp(prefix="spiga-ray-scale-"))
    try:
        folder = args.folder or make_folder(scratch / "photos", args.images)
        paths = expand_inputs([folder])
        model = make_model(scratch / "model.safetensors", args.size)
        quarter = make_folder(scratch / "quarter", max(1, len(paths) // 4)) if not args.folder else None
        print(f"CPU: {harness.cpu_name(cores=True)}; load average {os.getloadavg()[0]:.1f}; model size {args.size}; "
              f"{len(paths)} images; ray {ray.__version__}")
        one, faces = time_one_machine(model, paths, args.threads, scratch / "one.jsonl")
        print(f"one machine ({args.threads} thread): {one:7.2f} s  {len(paths) / one:6.2f} img/s  "
              f"{faces / one:6.2f} faces/s")
        ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        ray.data.DataContext.get_current().enable_progress_bars = False
        times = {}
        for workers in args.workers:
            seconds, faces = time_ray(model, [str(folder)], workers, scratch / f"ray{workers}.jsonl",
                                      args.gpus_per_worker)
            times[workers] = seconds
            print(f"ray, {workers} worker{'s' if workers > 1 else ' '}:     {seconds:7.2f} s  "
                  f"{len(paths) / seconds:6.2f} img/s  {faces / seconds:6.2f} faces/s  (workers' start included)")
        if quarter is not None and 1 in times:
            small, _ = time_ray(model, [str(quarter)], 1, scratch / "ray_quarter.jsonl", args.gpus_per_worker)
            count = len(expand_inputs([quarter]))
            per_image = (times[1] - small) / (len(paths) - count)
            fixed = small - per_image * count
            print(f"ray, 1 worker: fixed cost {fixed:.2f} s (workers' start, model load, planning); "
                  f"{per_image * 1000:.0f} ms per image against {one / len(paths) * 1000:.0f} ms on one machine: "
                  f"overhead {(per_image - one / len(paths)) * 1000:+.0f} ms per image")
        ray.shutdown()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
