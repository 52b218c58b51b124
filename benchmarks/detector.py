#!/usr/bin/env python3
"""Time face detectors on images of 640x480 and 1920x1080 (milliseconds per image).

The test image is the sportsfan fixture photo resized to fill the frame (one large face)
when ../shared is present, else blurred noise (no face; the cost is nearly the same,
it depends on the image size and the pyramid, not on the content). Prints the median
of `--repeats` calls after one warm-up call, and BlazeFace's pyramid for each size.

    python benchmarks/detector.py [--threads 1] [--repeats 5] [--detectors blazeface haar dlib]
        [--min-face-size 24]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spiga.detection import make_detector  # noqa: E402
from spiga.errors import SpigaError  # noqa: E402

SIZES = [(640, 480), (1920, 1080)]
PHOTO = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "images" / "image_sportsfan.jpg"


def test_image(width: int, height: int) -> tuple[np.ndarray, str]:
    photo = cv2.imread(str(PHOTO)) if PHOTO.is_file() else None
    if photo is not None:
        return cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA), "sportsfan photo"
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3), "blurred noise"


def time_ms(detector, image: np.ndarray, repeats: int) -> tuple[float, int]:
    faces = len(detector.detect(image))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        detector.detect(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--detectors", nargs="+", default=["blazeface", "blazeface-short", "haar", "dlib"])
    parser.add_argument("--min-face-size", type=float, default=24.0, help="BlazeFace's smallest face (pixels)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}; median of {args.repeats} calls")
    for name in args.detectors:
        try:
            if name.startswith("blazeface"):
                model = "short" if name.endswith("short") else "full"
                detector = make_detector("blazeface", model=model, min_face_size=args.min_face_size)
            else:
                detector = make_detector(name)
        except SpigaError as exc:
            print(f"{name:16s} skipped: {exc}")
            continue
        for width, height in SIZES:
            image, kind = test_image(width, height)
            ms, faces = time_ms(detector, image, args.repeats)
            pyramid = ""
            if hasattr(detector, "levels"):
                pyramid = "  pyramid: " + ", ".join(f"x{lv.scale:.3f} {len(lv.origins)}x{lv.window[0]}x{lv.window[1]}"
                                                    for lv in detector.levels(height, width))
            print(f"{name:16s} {width}x{height} ({kind}): {ms:7.1f} ms, {faces} face(s){pyramid}")


if __name__ == "__main__":
    main()
