#!/usr/bin/env python3
"""End-to-end video speed: `spiga.video.run_video` on a generated video, frames per second.

The video is a synthetic face (`spiga.data.synthetic`) moving across a plain frame,
written with OpenCV (mp4v). Each run reads it, tracks and aligns the face (BlazeFace
detector, re-detection every K frames), draws the annotations and writes the annotated
video and the JSON Lines: everything `spiga video IN --out OUT --jsonl OUT` does.
Weights are random (seeded; the same cost as trained ones); denormals are flushed.

    python speed/video_fps.py [--size tiny] [--frames 90] [--width 640 --height 480] \\
        [--redetect-every 15 1] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spiga.checkpoint import Checkpoint  # noqa: E402
from spiga.data.synthetic import render_face  # noqa: E402
from spiga.inference import Aligner  # noqa: E402
from spiga.landmarks import WFLW_98  # noqa: E402
from spiga.testing import random_model  # noqa: E402
from spiga.video import TrackerConfig, run_video  # noqa: E402


def make_video(path: Path, frames: int, width: int, height: int, fps: float = 30.0) -> None:
    face = render_face(np.random.default_rng(7), min(width, height) // 2)
    side = face.image.shape[0]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for i in range(frames):
        frame = np.full((height, width, 3), 110, np.uint8)
        x = int((width - side) * (0.5 + 0.4 * np.sin(2 * np.pi * i / frames)))
        y = (height - side) // 2
        frame[y:y + side, x:x + side] = face.image
        writer.write(frame)
    writer.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="model size: tiny, small, official")
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--redetect-every", type=int, nargs="+", default=[15, 1])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    model, _ = random_model(args.size, WFLW_98, seed=0, mean_face_3d=np.random.default_rng(0).normal(size=(98, 3)) * 0.3)
    aligner = Aligner(Checkpoint(model, WFLW_98, model.config), device=args.device, detector="blazeface",
                      tune_process=True)  # as `spiga video` does
    print(f"model size {args.size}, device {args.device}, {args.threads} threads, torch {torch.__version__}, "
          f"{args.width}x{args.height}, {args.frames} frames, BlazeFace (full, min_face_size 24)")
    print(f"{'K':>4} {'frames':>6} {'detections':>10} {'seconds':>8} {'fps':>6}")
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in.mp4"
        make_video(source, args.frames, args.width, args.height)
        run_video(aligner, str(source), max_frames=3, progress=False)  # warm-up: detector and model
        for k in args.redetect_every:
            summary = run_video(aligner, str(source), out=Path(folder) / "out.mp4", jsonl=Path(folder) / "out.jsonl",
                                config=TrackerConfig(redetect_every=k), progress=False)
            print(f"{k:>4} {summary.frames:>6} {summary.detections:>10} {summary.seconds:>8.2f} {summary.fps:>6.1f}")


if __name__ == "__main__":
    main()
