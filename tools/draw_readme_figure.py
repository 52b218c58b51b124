#!/usr/bin/env python3
"""Draw the README's drawing figure from a real photo, with the project's own code.

Left: the photo with the face detector's output (BlazeFace box in grey, its six keypoints
in yellow), the SPIGA box mapped from it (white, with the face id), and what
`spiga.draw.draw_faces` draws for the model given: landmarks coloured by facial part, the
head-pose axes (red: the subject's left, green: down, blue: out of the face) and the
model's 3D mean face projected with the estimated pose (`--mesh`, pale yellow).
Right (with `--synthetic`): the same drawing on a synthetic test face
(`spiga.data.synthetic`), where a model trained on synthetic faces is meaningful.

    python tools/draw_readme_figure.py --model MODEL [--synthetic] \\
        [--image ../shared/fixtures/images/image_sportsfan.jpg] [--out docs/drawing.png]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import spiga  # noqa: E402
from spiga.detection import face_box_from_detection, make_detector  # noqa: E402
from spiga.draw import draw_faces  # noqa: E402
from spiga.io import read_image, write_output  # noqa: E402


def crop_around(image: np.ndarray, box, margin: float = 0.45, side: int = 360) -> np.ndarray:
    """A square around `box` (enlarged by `margin` on each side), resized to `side`."""
    x, y, w, h = box
    size = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(max(0, cx - size / 2)), int(max(0, cy - size / 2))
    x1, y1 = int(min(image.shape[1], cx + size / 2)), int(min(image.shape[0], cy + size / 2))
    return cv2.resize(image[y0:y1, x0:x1], (side, side), interpolation=cv2.INTER_AREA)


def photo_panel(aligner, image: np.ndarray) -> np.ndarray:
    detector = make_detector("blazeface")
    detections = detector.detect(image)
    if not detections:
        raise SystemExit("no face detected in the photo")
    # work on the panel-sized view of the face, so that the drawing is at its final scale
    image = crop_around(image, detections[0].box)
    detection = detector.detect(image)[0]
    box = face_box_from_detection(detection)
    faces = aligner.align_array(image, [box])
    faces[0].id, faces[0].score = 0, detection.score
    canvas = image.copy()
    x, y, w, h = detection.box
    cv2.rectangle(canvas, (int(x), int(y)), (int(x + w), int(y + h)), (150, 150, 150), 1, cv2.LINE_AA)
    for kx, ky in detection.keypoints:
        cv2.circle(canvas, (int(round(kx)), int(round(ky))), 4, (0, 230, 255), 1, cv2.LINE_AA)
    return draw_faces(canvas, faces, aligner.landmark_set, mesh_points=aligner.mean_face_world())


def synthetic_panel(aligner, seed: int = 7) -> np.ndarray:
    from spiga.data.synthetic import render_face

    face = render_face(np.random.default_rng(seed), 360)
    faces = aligner.align_array(face.image, [face.box])
    faces[0].id = 0
    return draw_faces(face.image, faces, aligner.landmark_set, mesh_points=aligner.mean_face_world())


def caption(panel: np.ndarray, lines: list[str]) -> np.ndarray:
    height = 18 * len(lines) + 10
    strip = np.full((height, panel.shape[1], 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(strip, line, (8, 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([panel, strip])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint for the photo panel")
    parser.add_argument("--synthetic", metavar="MODEL", help="checkpoint for a synthetic-face panel on the right")
    parser.add_argument("--image", default=str(ROOT.parent / "shared" / "fixtures" / "images" / "image_sportsfan.jpg"))
    parser.add_argument("--photo-label", default="model: see README", help="caption naming the photo's model")
    parser.add_argument("--synthetic-label", default="model trained on synthetic faces")
    parser.add_argument("--out", default=str(ROOT / "docs" / "drawing.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    aligner = spiga.load(args.model, device="cpu", detector=None)
    panels = [caption(photo_panel(aligner, read_image(args.image)),
                      ["grey: BlazeFace box, yellow: its keypoints", "white: SPIGA box (mapped), id 0",
                       args.photo_label])]
    if args.synthetic:
        synthetic = spiga.load(args.synthetic, device="cpu", detector=None)
        panels.append(caption(synthetic_panel(synthetic),
                              ["synthetic test face and its true box", "landmarks, mean-face mesh, pose axes",
                               args.synthetic_label]))
    height = max(p.shape[0] for p in panels)
    panels = [np.vstack([p, np.full((height - p.shape[0], p.shape[1], 3), 255, np.uint8)]) for p in panels]
    figure = np.hstack([np.hstack([p, np.full((height, 6, 3), 255, np.uint8)]) for p in panels])[:, :-6]
    # a 256-colour palette keeps the PNG small (the photo and the synthetic noise compress badly)
    from PIL import Image
    palette = Image.fromarray(figure[:, :, ::-1]).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    write_output(args.out, buffer.getvalue())
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
