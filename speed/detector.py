#!/usr/bin/env python3
"""Time face detectors on the same images, beside the alignment of one face (milliseconds).

Images, at 640x480 and 1920x1080 (`--sizes`):
- `photo`: the sportsfan fixture photo (../shared) resized to fill the frame (one large face);
- `group`: a synthetic group photo: the sportsfan face and matplotlib's grace_hopper.jpg
  face (when matplotlib is installed), each also mirrored, pasted at 24 .. 200 px face-box
  widths on a blurred copy of the photo (`faces` column: how many were pasted).
Without ../shared, blurred noise (no face) stands in for both.

Rows, each the median of `--repeats` calls after one warm-up call, in this process unless said:
- `spiga <backend>`: `make_detector("blazeface", backend=...)` from this checkout;
- `before`: the default detector of another checkout (`--before-src DIR`, its `src`
  folder), in a subprocess;
- `mediapipe`: MediaPipe's own face detector (`mediapipe.solutions.face_detection`, full-range
  model, one pass at 192x192 as MediaPipe runs it, threshold 0.6 like ours) in a subprocess
  of the interpreter given by `--mediapipe-python` (a virtual environment with
  `mediapipe==0.10.21`; later releases dropped `solutions` and the bundled models);
- `align 1 face`: `spiga.load(checkpoint).align(photo, boxes=[box])` (float32, official model
  size; `--checkpoint`, else random weights written to a temporary checkpoint), and the
  first detector's time on the photo as a share of it, the two calls interleaved (both
  then see the same load on a shared machine).

    python speed/detector.py [--threads 2] [--repeats 7] [--clock wall|cpu] [--backends onnxruntime torch]
        [--before-src ../other-checkout/src] [--mediapipe-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

import harness

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "fixtures" / "images" / "image_sportsfan.jpg"
BOX = PHOTO.with_name("bbox_sportsfan.json")


# ------------------------------------------------------------------ images


def face_crops() -> list[tuple[np.ndarray, tuple[float, float, float, float]]]:
    """(square crop BGR, face box in crop fractions x, y, w, h) for each real face at hand,
    and its mirror image. Grace Hopper's face box is the one spiga's default detector maps."""
    from spiga.detection import face_box_from_detection, make_detector

    sources = []
    if PHOTO.is_file():
        sources.append((cv2.imread(str(PHOTO)), json.loads(BOX.read_text())["bbox"]))
        try:
            import matplotlib.cbook

            with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
                grace = cv2.imdecode(np.frombuffer(handle.read(), np.uint8), cv2.IMREAD_COLOR)
            sources.append((grace, face_box_from_detection(make_detector().detect(grace)[0])))
        except (ImportError, OSError, ValueError):
            pass
    crops = []
    for image, (x, y, w, h) in sources:
        side = int(1.6 * max(w, h))
        x0, y0 = int(x + w / 2 - side / 2), int(y + h / 2 - side / 2)
        padded = cv2.copyMakeBorder(image, side, side, side, side, cv2.BORDER_REFLECT)
        crop = padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side]
        box = ((x - x0) / side, (y - y0) / side, w / side, h / side)
        crops += [(crop, box), (np.ascontiguousarray(crop[:, ::-1]), (1 - box[0] - box[2], *box[1:]))]
    return crops


def test_images(width: int, height: int, seed: int = 0) -> dict[str, tuple[np.ndarray, int]]:
    """{"photo": (image, faces), "group": (image, faces)} at this size."""
    rng = np.random.default_rng(seed)
    if not PHOTO.is_file():
        noise = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3)
        return {"photo": (noise, 0), "group": (noise.copy(), 0)}
    photo = cv2.resize(cv2.imread(str(PHOTO)), (width, height), interpolation=cv2.INTER_AREA)
    group = cv2.GaussianBlur(photo, (0, 0), 6)
    crops = face_crops()
    widths = [24, 32, 48, 64, 96, 128, 200] if width >= 1280 else [24, 32, 40, 56, 72, 96]
    pasted, x, y, row = 0, 8, 8, 0
    for index in range(200):
        crop, (_, _, fw, _) = crops[index % len(crops)]
        side = int(round(widths[index % len(widths)] / fw))
        if x + side > width - 8:
            x, y, row = 8, y + row + 8, 0
        if y + side > height - 8:
            break
        group[y:y + side, x:x + side] = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        pasted += 1
        x, row = x + side + 8, max(row, side)
    return {"photo": (photo, 1), "group": (group, pasted)}


# ------------------------------------------------------------------ timing


CLOCKS = harness.CLOCKS
clock = "wall"


def median_ms(call, repeats: int) -> float:
    return harness.time_call(call, repeats, warmup=1, clock=clock).median * 1000


def time_detector(detect, images: dict[str, np.ndarray], repeats: int) -> dict[str, dict]:
    """{image name: {"ms", "faces"}} for a `detect(image_bgr) -> list` callable."""
    return {name: {"ms": median_ms(lambda: detect(image), repeats), "faces": len(detect(image))}
            for name, image in images.items()}


def mediapipe_detector(threshold: float = 0.6):
    import mediapipe as mp

    detector = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=threshold)

    def detect(image_bgr: np.ndarray) -> list:
        result = detector.process(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
        return list(result.detections or [])

    return detect


def worker(kind: str, folder: Path, repeats: int, threads: int) -> None:
    """Time one detector on the PNG images of `folder`; print the results as one JSON line."""
    cv2.setNumThreads(threads)
    images = {path.stem: cv2.imread(str(path)) for path in sorted(folder.glob("*.png"))}
    if kind == "mediapipe":
        detect = mediapipe_detector()
    else:
        import torch

        torch.set_num_threads(threads)
        from spiga.detection import make_detector

        detect = make_detector("blazeface").detect
    print(json.dumps(time_detector(detect, images, repeats)))


def run_worker(python: str, kind: str, folder: Path, args, src: str | None = None) -> dict | str:
    """A worker's results, or the reason it gave none."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    command = [python, str(Path(__file__).resolve()), "--worker", kind, "--images", str(folder),
               "--repeats", str(args.repeats), "--threads", str(args.threads), "--clock", args.clock]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1])


def alignment_ms(checkpoint: str | None, image: np.ndarray, box, detect, repeats: int) -> tuple[float, float]:
    """Median ms of `align(image, boxes=[box])` and of `detect(image)`, the calls interleaved
    (so that both see the same load on a shared machine)."""
    import spiga
    from spiga.testing import random_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        if checkpoint is None:
            checkpoint = random_checkpoint(Path(folder) / "official-random.safetensors", "official", "wflw98", seed=0,
                                           mean_face_3d=np.random.default_rng(0).normal(size=(98, 3)) * 0.3)
        aligner = spiga.load(checkpoint, device="cpu")
        timed = harness.time_interleaved({"align": lambda: aligner.align(image, boxes=[box]),
                                          "detect": lambda: detect(image)}, repeats, warmup=1, clock=clock,
                                         rotate=False)
        return timed["align"].median * 1000, timed["detect"].median * 1000


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch (and onnxruntime) threads")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time, all its threads together "
                             "(steadier on a machine shared with other work)")
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1920x1080"])
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    parser.add_argument("--checkpoint", help="spiga checkpoint for the alignment row (default: random weights)")
    parser.add_argument("--no-align", action="store_true", help="skip the alignment row")
    parser.add_argument("--before-src", help="`src` folder of another checkout, timed as `before`")
    parser.add_argument("--mediapipe-python", help="a Python with mediapipe==0.10.21, timed as `mediapipe`")
    parser.add_argument("--worker", choices=["spiga", "mediapipe"], help=argparse.SUPPRESS)
    parser.add_argument("--images", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global clock
    clock = args.clock
    if args.worker:
        worker(args.worker, args.images, args.repeats, args.threads or os.cpu_count())
        return
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from spiga.detection import face_box_from_detection, make_detector
    from spiga.errors import SpigaError

    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    cv2.setNumThreads(args.threads)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
    detectors = {}
    for backend in args.backends:
        try:
            detectors[f"spiga {backend}"] = make_detector("blazeface", backend=backend)
        except SpigaError as exc:
            print(f"spiga {backend}: skipped ({exc})")
    print(f"CPU: {harness.cpu_name(cores=True)}; {args.threads} thread(s) (torch, onnxruntime, OpenCV), torch {torch.__version__}; "
          f"median of {args.repeats} calls, {args.clock} clock, milliseconds per image")
    columns = ["image", "faces", *detectors]
    columns += ["before"] if args.before_src else []
    columns += ["mediapipe"] if args.mediapipe_python else []
    columns += [] if args.no_align else ["align 1 face", "share of align"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for width, height in sizes:
        images = test_images(width, height)
        results = {name: time_detector(d.detect, {k: v[0] for k, v in images.items()}, args.repeats)
                   for name, d in detectors.items()}
        with tempfile.TemporaryDirectory() as folder:
            for name, (image, _) in images.items():
                cv2.imwrite(str(Path(folder) / f"{name}.png"), image)
            if args.before_src:
                results["before"] = run_worker(sys.executable, "spiga", Path(folder), args, args.before_src)
            if args.mediapipe_python:
                results["mediapipe"] = run_worker(args.mediapipe_python, "mediapipe", Path(folder), args)
        align = share = None
        if not args.no_align and detectors:
            photo = images["photo"][0]
            detect = next(iter(detectors.values())).detect
            found = detect(photo)
            box = face_box_from_detection(found[0]) if found else (width / 3, height / 4, width / 3, height / 2)
            align, detect_ms = alignment_ms(args.checkpoint, photo, box, detect, args.repeats)
            share = detect_ms / align
        for name, (_, faces) in images.items():
            cells = [f"{width}x{height} {name}", str(faces)]
            for column in columns[2:]:
                if column == "align 1 face":
                    cells.append(f"{align:.0f}" if align else "-")
                elif column == "share of align":
                    cells.append(f"{share:.3f}" if share and name == "photo" else "")
                elif isinstance(results.get(column), str):
                    cells.append(f"failed: {results[column]}")
                else:
                    cell = results[column][name]
                    cells.append(f"{cell['ms']:.1f} ({cell['faces']} found)")
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
