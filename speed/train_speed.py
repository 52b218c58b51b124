#!/usr/bin/env python3
"""Training throughput (images/s): the whole network, and cascade-only fine-tuning
(CNN and pose frozen), on random images, with the official recipe's losses.

    python speed/train_speed.py [--size official] [--batch 8] [--steps 5] [--threads 2]

Data loading is measured separately by speed/data_loading.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import harness

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spiga.landmarks import WFLW_98  # noqa: E402
from spiga.model import ModelConfig  # noqa: E402
from spiga.train.distributed import convert_batch_norm  # noqa: E402
from spiga.train.loop import loss_terms  # noqa: E402
from spiga.testing import random_model  # noqa: E402
from spiga.train.recipe import STAGES, apply_freeze, set_train_mode, trainable_parameters  # noqa: E402


def fake_batch(config: ModelConfig, batch: int) -> dict[str, torch.Tensor]:
    size, maps, points = config.image_size, config.feature_size, config.num_landmarks
    return {
        "image": torch.rand(batch, 3, size, size),
        "landmarks": torch.rand(batch, points, 2) * 0.5 + 0.25,
        "visible": torch.ones(batch, points, dtype=torch.bool),
        "annotated": torch.ones(batch, points, dtype=torch.bool),
        "inside": torch.ones(batch, points, dtype=torch.bool),
        "heatmaps": torch.rand(batch, points, maps, maps),
        "boundaries": torch.rand(batch, config.num_edges, maps, maps),
        "pose": torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 3.0]]).repeat(batch, 1),
        "pose_valid": torch.ones(batch, dtype=torch.bool),
    }


def measure(stage: str, size: str, batch: int, steps: int) -> float:
    model = convert_batch_norm(random_model(size, WFLW_98, seed=0)[0])
    config = model.config
    frozen = STAGES[stage].frozen
    apply_freeze(model, frozen)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-4)
    data = fake_batch(config, batch)
    set_train_mode(model, frozen)

    def step() -> None:
        loss = sum(loss_terms(model(data["image"]), data, STAGES[stage].weights).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return batch / harness.time_call(step, repeats=steps, warmup=1).median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="official")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"model size {args.size}, batch {args.batch}, {args.threads} threads, torch {torch.__version__}, CPU")
    for stage, label in (("full", "whole network"), ("3", "cascade only (CNN, pose frozen)")):
        print(f"{label:>34}: {measure(stage, args.size, args.batch, args.steps):7.2f} images/s")


if __name__ == "__main__":
    main()
