#!/usr/bin/env python3
"""Jitter, lag and error of video tracking, with and without One Euro smoothing.

Two synthetic videos with exactly known landmarks (a face from `spiga.data.synthetic`):

- still: one frame repeated, with fresh Gaussian pixel noise (sigma 4) in every frame;
  landmark jitter = per-landmark standard deviation across frames (mean over landmarks
  of sqrt(var x + var y)).
- moving: the frame moved along a known path (circle of radius 30 px, one turn in 4 s)
  and rotated (+-15 degrees, one period in 4 s), on a plain background; error = mean
  distance of landmarks to the true ones, lag = the delay (frames, 0.1 steps) that best
  aligns the predicted landmark centroid path with the true one.

Three pipelines, each raw and smoothed (default `SmoothingConfig`; `--sweep` adds other
One Euro parameters):
- tracker: `spiga.video.Tracker` with its defaults (detect every 15 frames, else follow
  the landmarks; box dead band 0.02); the detector is an oracle returning the true face
  box, so the figures are the tracker's and the model's, not a detector's;
- tracker, no dead band: the same with `box_deadband=0` (the box follows every change);
- BlazeFace every frame: the real detector on every frame, its mapped box used as is
  (no tracking), as a detect-per-frame pipeline would.
Pixel figures are also given in % of the face box height.

A trained model gives meaningful numbers: train one on synthetic faces (see
docs/images-and-video.md) and pass it with `--model`; without it, a seeded random-weight tiny model
is used and the numbers only show what smoothing does to that model's output.

    python speed/video_jitter.py --model runs/synthetic/best.safetensors [--sweep]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spiga.data.synthetic import render_face  # noqa: E402
from spiga.detection import Detection, Detector  # noqa: E402
from spiga.video import SmoothingConfig, Tracker, TrackerConfig  # noqa: E402
from spiga.video.smoothing import FaceSmoother  # noqa: E402

FPS = 30.0


class OracleDetector(Detector):
    """Returns the true face box the benchmark sets before each frame."""

    name = "oracle"

    def __init__(self) -> None:
        self.box: np.ndarray | None = None

    def detect(self, image_bgr):
        return [] if self.box is None else [Detection(tuple(map(float, self.box)), 1.0, None, "file")]


def still_video(face, frames: int, rng: np.random.Generator):
    """(frames, true landmarks per frame, true boxes per frame)."""
    images, points, boxes = [], [], []
    for _ in range(frames):
        noisy = np.clip(face.image.astype(np.float32) + rng.normal(0, 4.0, face.image.shape), 0, 255)
        images.append(noisy.astype(np.uint8))
        points.append(face.landmarks)
        boxes.append(face.box)
    return images, np.array(points), np.array(boxes)


def moving_video(face, frames: int, canvas: int = 384):
    """The face image moved on a circle and rotated sinusoidally; exact landmarks and boxes."""
    size = face.image.shape[0]
    background = tuple(float(v) for v in face.image.reshape(-1, 3).mean(0))
    images, points, boxes, angles = [], [], [], []
    for i in range(frames):
        phase = 2 * np.pi * i / (4 * FPS)
        angle = 15.0 * np.sin(phase)
        dx, dy = 30 * np.cos(phase), 30 * np.sin(phase)
        centre = np.array([size / 2, size / 2])
        matrix = cv2.getRotationMatrix2D(tuple(centre), angle, 1.0)
        matrix[:, 2] += (canvas - size) / 2 + np.array([dx, dy])
        images.append(cv2.warpAffine(face.image, matrix, (canvas, canvas), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=background))
        moved = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
        points.append(moved)
        x, y, w, h = face.box
        corners = np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]]) @ matrix[:, :2].T + matrix[:, 2]
        # the box of a rotated face: same size, centred where the face's box centre went
        cx, cy = corners.mean(0)
        boxes.append([cx - w / 2, cy - h / 2, w, h])
        angles.append(angle)
    return images, np.array(points), np.array(boxes), np.array(angles)


def track(aligner, images, boxes, detector: OracleDetector | None, config: TrackerConfig):
    """Raw faces (smoothing off) of the tracked face nearest the truth, per frame (None if none)."""
    tracker = Tracker(aligner, replace(config, smoothing=None))
    out = []
    for i, (image, box) in enumerate(zip(images, boxes)):
        if detector is not None:
            detector.box = box
        faces = tracker.step(image, i / FPS).faces
        if not faces:
            out.append(None)
            continue
        centre = box[:2] + box[2:] / 2
        out.append(min(faces, key=lambda f: np.linalg.norm(np.array(f.box[:2]) + np.array(f.box[2:]) / 2 - centre)))
    return out


def smooth(faces, config: SmoothingConfig | None):
    """The tracker's smoothing applied to one track's raw faces (restarted after a gap)."""
    if config is None:
        return faces
    smoother, out = FaceSmoother(config), []
    for i, face in enumerate(faces):
        if face is None:
            smoother = FaceSmoother(config)
            out.append(None)
            continue
        out.append(smoother(face, i / FPS))
    return out


def lag_frames(predicted: np.ndarray, truth: np.ndarray, max_lag: float = 15.0) -> float:
    """Delay (frames) minimising the distance between the centred predicted path and the
    truth path delayed by it (linear interpolation, 0.1-frame steps)."""
    t = np.arange(len(truth), dtype=np.float64)
    best, best_cost = 0.0, np.inf
    predicted = predicted - predicted.mean(0)
    for lag in np.arange(0.0, max_lag, 0.1):
        delayed = np.column_stack([np.interp(t - lag, t, truth[:, k]) for k in range(truth.shape[1])])
        delayed -= delayed.mean(0)
        valid = t >= lag
        cost = np.mean(np.sum((predicted[valid] - delayed[valid]) ** 2, axis=1))
        if cost < best_cost:
            best, best_cost = lag, cost
    return best


def figures(faces, truth_points, truth_boxes, moving: bool, skip: int = 5) -> dict[str, float]:
    """Jitter, error and lag of one run (frames before `skip` ignored: the filter starts)."""
    keep = [i for i, f in enumerate(faces) if f is not None and i >= skip]
    landmarks = np.array([faces[i].landmarks for i in keep])
    truth = truth_points[keep]
    height = float(np.mean(truth_boxes[keep, 3]))
    result = {"frames": len(keep), "missing": sum(f is None for f in faces), "face_px": height}
    std = np.sqrt(landmarks.var(0).sum(-1)).mean()
    result["std_px"] = float(std)
    if landmarks.shape[1] == truth.shape[1]:
        result["error_px"] = float(np.linalg.norm(landmarks - truth, axis=-1).mean())
    result["lag"] = lag_frames(landmarks.mean(1), truth.mean(1)) if moving else float("nan")
    angles = np.array([[faces[i].headpose.yaw, faces[i].headpose.pitch, faces[i].headpose.roll] for i in keep])
    result["angle_std"] = float(angles.std(0).mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="spiga checkpoint (default: a seeded random-weight tiny model)")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7, help="which synthetic face")
    parser.add_argument("--face-size", type=int, default=256, help="side of the synthetic face image")
    parser.add_argument("--no-blazeface", action="store_true", help="skip the BlazeFace-every-frame pipeline")
    parser.add_argument("--sweep", action="store_true", help="also try other One Euro parameters")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    import spiga

    oracle = OracleDetector()
    if args.model:
        aligner = spiga.load(args.model, device="cpu", detector=oracle)
        blazeface = spiga.load(args.model, device="cpu", detector="blazeface")
        model_name = args.model
    else:
        from spiga.checkpoint import Checkpoint
        from spiga.inference import Aligner
        from spiga.landmarks import WFLW_98
        from spiga.testing import random_model

        model, _ = random_model("tiny", WFLW_98, seed=0, mean_face_3d=np.random.default_rng(0).normal(size=(98, 3)) * 0.3)
        aligner = Aligner(Checkpoint(model, WFLW_98, model.config), device="cpu", detector=oracle)
        blazeface = Aligner(Checkpoint(model, WFLW_98, model.config), device="cpu", detector="blazeface")
        model_name = "random-weight tiny model (numbers show smoothing only, not accuracy)"
    pipelines = [("tracker", aligner, oracle, TrackerConfig()),
                 ("tracker, no dead band", aligner, oracle, TrackerConfig(box_deadband=0.0))]
    if not args.no_blazeface:
        # keep_iou above 1: every detection replaces the tracked box (no tracking)
        pipelines.append(("BlazeFace every frame", blazeface, None, TrackerConfig(redetect_every=1, keep_iou=1.1)))

    face = render_face(np.random.default_rng(args.seed), args.face_size)
    rng = np.random.default_rng(args.seed + 1)
    configs: list[tuple[str, SmoothingConfig | None]] = [("raw", None), ("smoothed", SmoothingConfig())]
    if args.sweep:
        for min_cutoff, beta in [(1.0, 1.0), (0.5, 1.0), (2.0, 1.0), (1.0, 3.0), (1.0, 10.0), (2.0, 5.0)]:
            configs.append((f"min_cutoff {min_cutoff}, beta {beta}", SmoothingConfig.uniform(min_cutoff, beta)))

    print(f"model: {model_name}")
    print(f"{FPS:.0f} fps, {args.frames} frames per video, synthetic face seed {args.seed} ({args.face_size} px)")
    for title, (images, points, boxes, angles) in [
        ("still (one frame + noise sigma 4)", (*still_video(face, args.frames, rng), None)),
        ("moving (circle r=30 px / 4 s, rotation +-15 deg / 4 s)", moving_video(face, args.frames)),
    ]:
        print(f"\n{title}")
        print(f"{'pipeline':22} {'smoothing':28} {'lm std px':>9} {'(% face)':>8} {'error px':>8} {'(% face)':>8} "
              f"{'lag fr':>6} {'angle std':>9} {'fps':>5}")
        for pipeline, pipeline_aligner, detector, tracker_config in pipelines:
            start = time.perf_counter()
            raw = track(pipeline_aligner, images, boxes, detector, tracker_config)
            fps = len(images) / (time.perf_counter() - start)
            for name, config in configs:
                result = figures(smooth(raw, config), points, boxes, moving=angles is not None)
                face_px = result["face_px"]
                error = result.get("error_px", float("nan"))
                print(f"{pipeline:22} {name:28} {result['std_px']:9.2f} {100 * result['std_px'] / face_px:8.2f} "
                      f"{error:8.2f} {100 * error / face_px:8.2f} {result['lag']:6.1f} {result['angle_std']:9.2f} "
                      f"{fps:5.1f}")
                if result["missing"]:
                    print(f"{'':22} ({result['missing']} frames without the face)")
    print("\nOn the moving video, lm std is the spread of the path itself, not jitter.")


if __name__ == "__main__":
    main()
