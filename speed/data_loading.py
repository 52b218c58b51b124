"""Data-loading throughput of training: read, augment, crop, targets, pose labels.

Prints samples per second through a torch DataLoader, and a per-stage breakdown in one
process. Without --dataset it builds a synthetic set (JPEG images with 68 points from a
synthetic rigid face at random poses) in a temporary folder.

    python speed/data_loading.py                          # synthetic, 640x480 JPEGs
    python speed/data_loading.py --workers 4 --samples 1000
    python speed/data_loading.py --dataset wflw:/data/WFLW/.../list_98pt_rect_attr_train.txt \\
        --mean-face mean_face_3D_98.txt

Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spiga.data import read_dataset  # noqa: E402
from spiga.data.augment import AugmentConfig, augment  # noqa: E402
from spiga.data.dataset import FaceDataset  # noqa: E402
from spiga.data.images import read_image_float  # noqa: E402
from spiga.landmarks.mean_face import write_mean_face  # noqa: E402
from spiga.data.targets import boundary_heatmaps, fit_pose, point_heatmaps, pose_points, project_mean_face  # noqa: E402
from spiga.geometry import crop_matrices, invert_affine, transform_points  # noqa: E402
from spiga.landmarks import IBUG_68  # noqa: E402
from spiga.preprocess import Preprocessing  # noqa: E402

CROP = Preprocessing()  # the official crop


def synthetic_set(folder: Path, count: int, width: int, height: int) -> tuple[str, Path]:
    """Write `count` JPEGs and a custom-format JSONL with 68 points; return (spec, mean face)."""
    rng = np.random.default_rng(0)
    angle = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    face = np.stack([0.7 * np.cos(angle), 0.9 * np.sin(angle), -0.5 * np.cos(angle) ** 2], axis=1)
    face *= rng.uniform(0.6, 1.0, (68, 1))
    face = (face + face[list(IBUG_68.flip_order)] * [-1, 1, 1]) / 2  # symmetric
    world = np.stack([face[:, 2], -face[:, 0], -face[:, 1]], axis=1)
    write_mean_face(folder / "mean_face.txt", face, IBUG_68)
    lines = []
    for i in range(count):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        side = rng.uniform(0.3, 0.6) * min(width, height)
        box = np.array([rng.uniform(0, width - side), rng.uniform(0, height - side), side, side])
        pose = np.array([*rng.uniform([-40, -20, -20], [40, 20, 20]), 0.0, 0.0, 3.0])
        in_crop = project_mean_face(world, pose, CROP)
        points = transform_points(in_crop[None], invert_affine(crop_matrices(box[None], CROP)))[0]
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), image)
        lines.append(json.dumps({"image": f"{i:04d}.jpg", "landmarks": points.tolist(), "box": box.tolist()}))
    (folder / "faces.jsonl").write_text("\n".join(lines) + "\n")
    return f"custom:{folder / 'faces.jsonl'}", folder / "mean_face.txt"


def stage_breakdown(dataset: FaceDataset, count: int) -> dict[str, float]:
    """Milliseconds per sample of each stage, in this process."""
    totals = dict(decode=0.0, augment=0.0, heatmaps=0.0, boundaries=0.0, pose=0.0)
    rng = np.random.default_rng(0)
    layout = dataset.landmark_set
    mask = pose_points(layout)
    for i in range(count):
        sample = dataset.data[i % len(dataset.data)]
        t0 = time.perf_counter()
        image = read_image_float(sample.image_path)
        t1 = time.perf_counter()
        crop = augment(image, sample.landmarks, sample.visible, sample.annotated, sample.box,
                       layout.flip_order, dataset.augment, rng, dataset.preprocessing)
        t2 = time.perf_counter()
        on_map = crop.landmarks / 4.0
        point_heatmaps(on_map, crop.annotated)
        t3 = time.perf_counter()
        boundary_heatmaps(on_map, crop.annotated, layout.edge_groups)
        t4 = time.perf_counter()
        if dataset.mean_face is not None:
            fit_pose(crop.landmarks, crop.annotated & mask, dataset.mean_face, dataset.preprocessing)
        t5 = time.perf_counter()
        for key, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            totals[key] += seconds
    return {key: 1000 * value / count for key, value in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", help="FORMAT:PATH[:ROOT] (default: a synthetic set)")
    parser.add_argument("--landmark-set", help="landmark-set file or name (custom format)")
    parser.add_argument("--mean-face", help="`id|x|y|z` mean face for pose labels")
    parser.add_argument("--samples", type=int, default=256, help="samples to load (default 256)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--no-augment", action="store_true", help="plain inference crops")
    parser.add_argument("--image-size", default="640x480", help="synthetic image size WxH")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as temporary:
        spec, mean_face, layout = args.dataset, args.mean_face, args.landmark_set
        if spec is None:
            width, height = (int(v) for v in args.image_size.split("x"))
            spec, mean_face = synthetic_set(Path(temporary), 64, width, height)
            layout = IBUG_68
        data = read_dataset(spec, layout)
        dataset = FaceDataset(data, mean_face=mean_face, augment=None if args.no_augment else AugmentConfig(),
                              seed=0)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                            drop_last=False)
        print(f"{data.summary()}; augmentation {'off' if args.no_augment else 'on'}; "
              f"batch {args.batch_size}; workers {args.workers}; torch threads 1")
        seen, start, epoch = 0, None, 0
        while seen < args.samples:
            dataset.set_epoch(epoch)
            for batch in loader:
                if start is None:  # the first batch pays for worker start-up
                    start = time.perf_counter()
                    continue
                seen += len(batch["index"])
                if seen >= args.samples:
                    break
            epoch += 1
        elapsed = time.perf_counter() - start
        print(f"throughput: {seen / elapsed:.1f} samples/s ({seen} samples in {elapsed:.2f} s)")
        stages = stage_breakdown(dataset, min(64, args.samples))
        print("per sample, one process: " + ", ".join(f"{k} {v:.2f} ms" for k, v in stages.items()))


if __name__ == "__main__":
    main()
