#!/usr/bin/env python3
"""Does a bilinear augmentation warp cost accuracy against the nearest-neighbour inference crop?

    python benchmarks/augment_interpolation.py                  # 400 steps per run
    python benchmarks/augment_interpolation.py --steps 100      # shorter

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


def run(folder: Path, interpolation: str, steps: int, seed: int) -> tuple[float, float]:
    """Train once with the given warp sampling; (best validation NME, seconds)."""
    original = augment_module.AugmentConfig
    # the training loop builds `AugmentConfig()` itself: give it this run's sampling
    augment_module.AugmentConfig = functools.partial(original, interpolation=interpolation)
    try:
        config = TrainConfig(
            train=[f"custom:{folder}/train/faces.jsonl:{folder}/train"],
            val=[f"custom:{folder}/val/faces.jsonl:{folder}/val"],
            landmark_set=str(folder / "train" / "landmark_set.json"), mean_face=str(folder / "train" / "mean_face.txt"),
            model_size="tiny", max_steps=steps, batch_size=16, lr=2e-3, workers=0, device="cpu", seed=seed,
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spiga-interp-") as tmp:
        folder = Path(tmp)
        write_synthetic_dataset(folder / "train", args.train_faces, seed=1)
        write_synthetic_dataset(folder / "val", args.val_faces, seed=2)
        print(f"{cpu_name()}; tiny model, {args.steps} steps of 16, {args.train_faces} training faces, "
              f"{args.val_faces} validation faces, seed {args.seed}")
        for interpolation in ("bilinear", "nearest"):
            nme, seconds = run(folder, interpolation, args.steps, args.seed)
            print(f"augmentation warp {interpolation:8s}: validation NME {nme:.2f} %  ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
