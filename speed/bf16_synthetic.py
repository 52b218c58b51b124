#!/usr/bin/env python3
"""The accuracy cost of bfloat16 on a trained model, while no trained official-size model exists.

    python speed/bf16_synthetic.py                 # train (about 10 min on 1 core), then measure
    python speed/bf16_synthetic.py --steps 100     # shorter

Random weights cannot measure it: a random network amplifies rounding chaotically
(bfloat16 moves the landmarks of the equivalence-fixture weights by tens of pixels), a
trained one does not. So this script trains a `tiny` SPIGA for a few hundred steps on a
synthetic task: a 98-point 3D face (the official WFLW mean face with per-image shape noise)
in a random pose, drawn as coloured contours on a noisy background; targets are the
projected points and the pose. It then compares, on held-out renders, the NME (mean point
error over the inter-ocular distance, in %) of the float32 and bfloat16 inference paths,
and their landmark differences in pixels. A tiny, briefly trained model is only a proxy for
the official one (4 hourglass stacks accumulate more rounding): rerun the comparison with
`spiga evaluate --precision` once a model trained by `spiga train` exists.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

import cv2  # noqa: E402
import torch  # noqa: E402

from spiga.evaluate.metrics import landmark_report  # noqa: E402
from spiga.geometry.rotations import euler_to_rotation  # noqa: E402
from spiga.inference.optimize import prepare_for_inference  # noqa: E402
from spiga.landmarks import WFLW_98, read_mean_face  # noqa: E402
from spiga.testing import random_model  # noqa: E402

MEAN_FACE = REPO.parent / "shared" / "fixtures" / "upstream" / "models3D" / "mean_face_3D_98.txt"
COLOURS = [(60, 200, 255), (255, 120, 40), (80, 255, 80), (200, 80, 255), (255, 255, 90), (90, 160, 255)]


def render(rng: np.random.Generator, mean_face: np.ndarray, camera: np.ndarray, size: int = 256):
    """One synthetic crop: (image BGR uint8 (S, S, 3), landmarks (L, 2) in [0, 1], pose (6,))."""
    pose = np.array([rng.uniform(-35, 35), rng.uniform(-20, 20), rng.uniform(-20, 20),
                     rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(2.6, 3.4)])
    shape = mean_face + rng.normal(0, 0.03, mean_face.shape)
    rotation = euler_to_rotation(pose[:3])
    cam = shape @ rotation.T + pose[3:]
    pix = cam @ camera.T
    points = pix[:, :2] / pix[:, 2:3]  # feature-map pixels (camera of the 64 x 64 map)
    points = points / (size // 4)
    background = rng.integers(0, 90, (size // 8, size // 8, 3), dtype=np.uint8)
    image = cv2.resize(background, (size, size), interpolation=cv2.INTER_CUBIC)
    image = cv2.add(image, rng.integers(0, 40, image.shape, dtype=np.uint8))
    pixels = points * size
    for g, group in enumerate(WFLW_98.edge_groups):
        contour = np.round(pixels[list(group)] * 16).astype(np.int32)
        cv2.polylines(image, [contour], False, COLOURS[g % len(COLOURS)], 2, cv2.LINE_AA, shift=4)
    for i, (x, y) in enumerate(pixels):
        shade = int(80 + 170 * i / len(pixels))
        cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), 2 * 16, (shade, 255 - shade, 255), -1,
                   cv2.LINE_AA, shift=4)
    return image, points, pose


def batch(rng, n, mean_face, camera, size: int = 256):
    images, points, poses = zip(*(render(rng, mean_face, camera, size) for _ in range(n)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(np.stack(points)).float(), torch.from_numpy(np.stack(poses)).float()


def nme(predicted: np.ndarray, target: np.ndarray) -> float:
    """NME over the outer-eye-corner distance, in %, of a batch (B, L, 2): the project's one
    metric (`spiga.evaluate.metrics`, as `spiga evaluate --norm corners` scores)."""
    annotated = np.ones(target.shape[:2], bool)
    boxes = np.tile([0.0, 0.0, 256.0, 256.0], (len(target), 1))  # unused by the corners norm
    return landmark_report(target, predicted, annotated, boxes, WFLW_98, "corners", 10.0).overall.nme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval", type=int, default=96, help="held-out renders")
    parser.add_argument("--save", default=None, help="write the trained checkpoint here")
    args = parser.parse_args(argv)
    if not MEAN_FACE.is_file():
        print(f"needs the WFLW mean face at {MEAN_FACE}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    mean_face = read_mean_face(MEAN_FACE, WFLW_98)
    model, _ = random_model("tiny", WFLW_98, seed=0, mean_face_3d=mean_face)
    camera = model.camera_matrix.double().numpy()
    size = model.config.image_size  # the tiny model's crops are 128 px
    with torch.no_grad():  # start the pose head at the mean pose, as a trained model would be near
        model.pose_fc.weight.mul_(0.01)
        model.pose_fc.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 3.0]))
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=args.steps, pct_start=0.1)
    rng = np.random.default_rng(0)
    pose_scale = torch.tensor([10.0, 10.0, 10.0, 0.05, 0.05, 0.1])
    model.train()
    start = time.time()
    for step in range(args.steps):
        images, points, poses = batch(rng, args.batch, mean_face, camera, size)
        out = model(images)
        loss = sum(torch.nn.functional.l1_loss(p, points) for p in out["landmarks"]) * 100
        loss = loss + torch.nn.functional.l1_loss(out["pose"] / pose_scale, poses / pose_scale)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    model.eval()
    eval_rng = np.random.default_rng(12345)
    images, points, poses = batch(eval_rng, args.eval, mean_face, camera, size)
    target = points.numpy() * size
    results = {}
    with torch.inference_mode():
        for precision in ("float32", "bfloat16"):
            network = prepare_for_inference(model, precision, "cpu")
            outputs = [network(images[i:i + 16]) for i in range(0, len(images), 16)]
            landmarks, pose = [out["landmarks"][-1] for out in outputs], [out["pose"] for out in outputs]
            results[precision] = (torch.cat(landmarks).numpy() * size, torch.cat(pose).numpy())
        reference = model(images)["landmarks"][-1].numpy() * size
    fp32, bf16 = results["float32"][0], results["bfloat16"][0]
    difference = np.linalg.norm(bf16 - fp32, axis=-1)
    print(f"tiny SPIGA trained {args.steps} steps x {args.batch} synthetic crops; {args.eval} held-out crops")
    print(f"NME (inter-ocular, %): SPIGA module float32 {nme(reference, target):.3f}, "
          f"optimised float32 {nme(fp32, target):.3f}, optimised bfloat16 {nme(bf16, target):.3f}")
    print(f"bfloat16 vs float32 landmarks: mean {difference.mean():.3f} px, 99th percentile "
          f"{np.percentile(difference, 99):.3f} px, max {difference.max():.3f} px ({size}-px crops); pose max "
          f"{np.abs(results['bfloat16'][1] - results['float32'][1]).max(0).round(3).tolist()}")
    if args.save:
        from spiga.checkpoint import save_checkpoint

        save_checkpoint(args.save, model, WFLW_98)
    return 0


if __name__ == "__main__":
    sys.exit(main())
