#!/usr/bin/env python3
"""Draw the README's figures: the 98- and 68-point layouts (index numbers, coloured by
facial part) and the head-pose sign convention.

The points are the official 3D mean faces seen through SPIGA's own camera and pose
convention, so the figures show exactly what the code does.

    python tools/draw_docs_figures.py --out docs

(the official mean faces, from $SPIGA_HOME/models3D, fetched there on first use; `--mean-face-98` / `--mean-face-68` draw others)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spiga.draw import part_colours  # noqa: E402
from spiga.geometry import euler_to_rotation, intrinsics, project_points  # noqa: E402
from spiga.io import write_image  # noqa: E402
from spiga.preprocess import OFFICIAL_FOCAL_RATIO  # noqa: E402
from spiga.hub import official_mean_face  # noqa: E402
from spiga.landmarks import IBUG_68, WFLW_98, read_mean_face  # noqa: E402


def draw_layout(mean_face_path: str, landmarks, size: int = 900) -> np.ndarray:
    world = read_mean_face(mean_face_path, landmarks)
    points = project_points(world, euler_to_rotation(np.zeros(3)), np.array([0.0, 0.0, 2.6]),
                            intrinsics(size, OFFICIAL_FOCAL_RATIO))
    canvas = np.full((size, size, 3), 255, np.uint8)
    colours = part_colours(landmarks)
    for group in landmarks.edge_groups:
        polyline = np.round(points[list(group)]).astype(np.int32)
        cv2.polylines(canvas, [polyline], False, (210, 210, 210), 1, cv2.LINE_AA)
    for index, ((x, y), colour) in enumerate(zip(points, colours)):
        centre = (int(round(x)), int(round(y)))
        cv2.circle(canvas, centre, 5, tuple(int(c * 0.8) for c in colour), -1, cv2.LINE_AA)
        cv2.putText(canvas, str(index), (centre[0] + 5, centre[1] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (40, 40, 40), 1, cv2.LINE_AA)
    title = f"{landmarks.name}: {landmarks.num_landmarks} points, {landmarks.num_edges} edge groups"
    cv2.putText(canvas, title, (20, 35), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2, cv2.LINE_AA)
    return canvas


def draw_pose_signs(mean_face_path: str, size: int = 300) -> np.ndarray:
    """Four panels: frontal, then +30 degrees of yaw, pitch and roll, with the head axes."""
    from spiga.draw import AXES_COLOURS, AXES_WORLD

    world = read_mean_face(mean_face_path, IBUG_68)
    colours = part_colours(IBUG_68)
    panels = []
    for label, angles in [("0, 0, 0", (0, 0, 0)), ("yaw +30", (30, 0, 0)), ("pitch +30", (0, 30, 0)),
                          ("roll +30", (0, 0, 30))]:
        rotation = euler_to_rotation(np.array(angles, float))
        translation = np.array([0.0, 0.0, 3.2])
        camera = intrinsics(size, OFFICIAL_FOCAL_RATIO)
        points = project_points(world, rotation, translation, camera)
        axes = project_points(np.vstack([np.zeros((1, 3)), AXES_WORLD * 0.8]), rotation, translation, camera)
        panel = np.full((size, size, 3), 255, np.uint8)
        for (x, y), colour in zip(points, colours):
            cv2.circle(panel, (int(round(x)), int(round(y))), 3, tuple(int(c * 0.8) for c in colour), -1, cv2.LINE_AA)
        origin = tuple(int(round(v)) for v in axes[0])
        for end, colour in zip(axes[1:], AXES_COLOURS):
            cv2.line(panel, origin, tuple(int(round(v)) for v in end), colour, 2, cv2.LINE_AA)
        cv2.putText(panel, f"yaw, pitch, roll = {label}" if label == "0, 0, 0" else label, (10, 25),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.rectangle(panel, (0, 0), (size - 1, size - 1), (180, 180, 180), 1)
        panels.append(panel)
    return np.hstack(panels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mean-face-98", help="default: the official one ($SPIGA_HOME/models3D, fetched on first use)")
    parser.add_argument("--mean-face-68", help="default: the official one")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    args.mean_face_98 = args.mean_face_98 or official_mean_face(98)
    args.mean_face_68 = args.mean_face_68 or official_mean_face(68)
    write_image(Path(args.out) / "landmarks_98.png", draw_layout(args.mean_face_98, WFLW_98))
    write_image(Path(args.out) / "landmarks_68.png", draw_layout(args.mean_face_68, IBUG_68))
    write_image(Path(args.out) / "pose_signs.png", draw_pose_signs(args.mean_face_68))


if __name__ == "__main__":
    main()
