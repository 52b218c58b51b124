"""Drawings: landmarks coloured by facial part, boxes with the face id, head-pose axes,
and the model's 3D mean face projected with the estimated pose (a mesh)."""

from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

from .face import Face
from .geometry.camera import intrinsics, project_points
from .geometry.crop import invert_affine, transform_points
from .landmarks import LandmarkSet

# BGR colours per part keyword, first match wins.
_PART_COLOURS = [
    ("jaw", (200, 200, 200)), ("brow", (0, 200, 255)), ("nose", (0, 255, 0)), ("eye", (255, 128, 0)),
    ("lip", (60, 60, 255)), ("mouth", (60, 60, 255)),
]
_OTHER = (255, 0, 255)

# Head axes in SPIGA's world frame ([z, -x, -y] of the face frame): the subject's
# left (image right when frontal), down, and out of the face towards the camera.
AXES_WORLD = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
AXES_COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]


def part_colours(landmarks: LandmarkSet) -> list[tuple[int, int, int]]:
    colours = []
    for part in landmarks.part_of_point():
        colours.append(next((c for key, c in _PART_COLOURS if key in part), _OTHER))
    return colours


def project_with_pose(face: Face, points_world: np.ndarray) -> np.ndarray:
    """(N, 3) points in SPIGA's world frame -> (N, 2) image pixels, through the face's
    estimated pose and the model's own crop camera (then the crop's affine, inverted)."""
    if face.crop_matrix is None:
        raise ValueError("face has no crop matrix")
    pose = face.headpose
    camera = intrinsics(face.crop_size, face.focal_ratio)
    crop_xy = project_points(np.asarray(points_world, np.float64), pose.rotation_matrix(),
                             np.array([pose.tx, pose.ty, pose.tz]), camera)
    return transform_points(crop_xy[None], invert_affine(face.crop_matrix[None]))[0]


def pose_axes(face: Face, length: float = 0.6) -> np.ndarray:
    """(4, 2) image points: the head origin and the ends of its three axes, projected
    with the model's own crop camera and pose, so the drawing agrees with the angles."""
    return project_with_pose(face, np.vstack([np.zeros((1, 3)), AXES_WORLD * length]))


def draw_mesh(canvas: np.ndarray, face: Face, mean_face_world: np.ndarray, landmarks: LandmarkSet,
              colour: tuple[int, int, int] = (160, 230, 230), thickness: int = 1) -> None:
    """Draw, in place, the edge groups of `landmarks` through the (L, 3) mean face
    projected with the face's estimated pose: where it sits on the face, the pose is right."""
    points = project_with_pose(face, mean_face_world)
    if not np.all(np.isfinite(points)):
        return  # a pose with the face behind the camera: nothing sensible to draw
    for group in landmarks.edge_groups:
        polyline = np.round(points[list(group)]).astype(np.int32)
        cv2.polylines(canvas, [polyline], False, colour, thickness, cv2.LINE_AA)


def draw_faces(image_bgr: np.ndarray, faces: list[Face], landmarks: LandmarkSet,
               draw_box: bool = True, draw_axes: bool = True,
               mesh_points: np.ndarray | None = None) -> np.ndarray:
    """A copy of `image_bgr` with each face's box and label (its `id`, else its index),
    landmarks coloured by facial part, pose axes (red: the subject's left, green: down,
    blue: out of the face) and, given the model's (L, 3) world mean face as
    `mesh_points`, that face projected with the estimated pose as a mesh."""
    canvas = image_bgr.copy()
    scale = max(1.0, max(canvas.shape[:2]) / 640)
    radius = max(1, int(round(1.5 * scale)))
    thickness = max(1, int(round(scale)))
    colours = part_colours(landmarks)
    for index, face in enumerate(faces):
        if mesh_points is not None and face.crop_matrix is not None:
            draw_mesh(canvas, face, mesh_points, landmarks, thickness=thickness)
        if draw_box:
            x, y, w, h = face.box
            cv2.rectangle(canvas, (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h))),
                          (255, 255, 255), thickness, cv2.LINE_AA)
            label = f"{face.id if face.id is not None else index}"
            cv2.putText(canvas, label, (int(x), max(0, int(y) - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale,
                        (255, 255, 255), thickness, cv2.LINE_AA)
        for (px, py), colour in zip(face.landmarks, colours):
            cv2.circle(canvas, (int(round(px)), int(round(py))), radius, colour, -1, cv2.LINE_AA)
        if draw_axes and face.crop_matrix is not None:
            axes = pose_axes(face)
            origin = tuple(int(round(v)) for v in axes[0])
            for end, colour in zip(axes[1:], AXES_COLOURS):
                cv2.line(canvas, origin, tuple(int(round(v)) for v in end), colour, thickness + 1, cv2.LINE_AA)
    return canvas


def face_drawer(landmarks: LandmarkSet, mesh_points: np.ndarray | None = None
                ) -> Callable[[np.ndarray, Sequence[Face]], np.ndarray]:
    """`draw_faces` with the landmark set (and mesh) fixed: the drawing function of
    `spiga.io.ResultSink`."""
    def drawing(image_bgr: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        return draw_faces(image_bgr, list(faces), landmarks, mesh_points=mesh_points)
    return drawing
