#!/usr/bin/env python3
"""Does a bilinear augmentation warp cost accuracy against the nearest-neighbour inference crop?

    python speed/augment_interpolation.py                  # 400 steps per run
    python speed/augment_interpolation.py --steps 100      # shorter
    python speed/augment_interpolation.py --data syn --only nearest   # one run, data kept in syn/

Trains a `tiny` SPIGA twice on the same synthetic faces (`spiga.data.synthetic`), same
seed, once with the augmentation warp sampling bilinearly and once with nearest
neighbours (`AugmentConfig.interpolation`); both validate on the plain inference crop
(nearest, `Preprocessing`). Prints each run's validation NME (%, inter-ocular) and its
time. A short run on a small set: differences under about 1 % NME are noise.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import spiga.data.augment as augment_module  # noqa: E402
from spiga.data.synthetic import write_synthetic_dataset  # noqa: E402
from spiga.train import TrainConfig, train  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(folder: Path, interpolation: str, steps: int, seed: int, batch_size: int) -> tuple[float, float]:
    """Train once with the given warp sampling; (best validation NME, seconds)."""
    original = augment_module.AugmentConfig
    # the training loop builds `AugmentConfig()` itself: give it this run's sampling
    augment_module.AugmentConfig = functools.partial(original, interpolation=interpolation)
    try:
        config = TrainConfig(
            train=[f"custom:{folder}/train/faces.jsonl:{folder}/train"],
            val=[f"custom:{folder}/val/faces.jsonl:{folder}/val"],
            landmark_set=str(folder / "train" / "landmark_set.json"), mean_face=str(folder / "train" / "mean_face.txt"),
            model_size="tiny", max_steps=steps, batch_size=batch_size, lr=2e-3, workers=0, device="cpu", seed=seed,
            progress=False, out=str(folder / f"run-{interpolation}"))
        start = time.perf_counter()
        result = train(config)
        return float(result.best_nme), time.perf_counter() - start
    finally:
        augment_module.AugmentConfig = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--train-faces", type=int, default=800)
    parser.add_argument("--val-faces", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--only", choices=("bilinear", "nearest"), help="one of the two runs")
    parser.add_argument("--data", help="folder for the synthetic sets, kept (default: a temporary one)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="spiga-interp-") as tmp:
        folder = Path(args.data or tmp)
        for part, count, seed in (("train", args.train_faces, 1), ("val", args.val_faces, 2)):
            if not (folder / part / "faces.jsonl").is_file():  # written once, shared by both runs
                write_synthetic_dataset(folder / part, count, seed=seed)
        print(f"{cpu_name()}; tiny model, {args.steps} steps of {args.batch_size}, {args.train_faces} training faces, "
              f"{args.val_faces} validation faces, seed {args.seed}")
        for interpolation in [args.only] if args.only else ["bilinear", "nearest"]:
            nme, seconds = run(folder, interpolation, args.steps, args.seed, args.batch_size)
            print(f"augmentation warp {interpolation:8s}: validation NME {nme:.2f} %  ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
