"""3D mean faces: the rigid shape that SPIGA's pose head projects into the crop.

The original release ships them as text, one `id|x|y|z` line per point, in a face
frame (x to the subject's left, y up, z out of the face). SPIGA's world frame is
[z, -x, -y] of that: we convert once, when the file is read. Reading, ordering and
writing live here; estimating a mean face from a dataset is `spiga.data.mean_face`.

The two official mean faces are fetched on first use, like the weights:
`spiga.hub.official_mean_face(68)` is the path of the 68-point one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import SpigaError
from ..io import write_output
from .sets import LandmarkSet

def parse_mean_face_text(text: str, source: str = "<text>") -> tuple[list[int], np.ndarray]:
    """Parse `id|x|y|z` lines into (ids, points (N, 3) float64) in file order."""
    ids: list[int] = []
    points: list[tuple[float, float, float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split("|")
        try:
            if len(fields) != 4:
                raise ValueError(f"expected 4 fields id|x|y|z, found {len(fields)}")
            ids.append(int(fields[0]))
            xyz = tuple(float(f) for f in fields[1:])
            if not np.all(np.isfinite(xyz)):
                raise ValueError("non-finite coordinate")
            points.append(xyz)  # type: ignore[arg-type]
        except ValueError as exc:
            raise SpigaError(f"{source}, line {number}: {exc}") from None
    if not ids:
        raise SpigaError(f"{source}: no mean-face points found (expected `id|x|y|z` lines)")
    if len(set(ids)) != len(ids):
        raise SpigaError(f"{source}: duplicate point ids")
    return ids, np.asarray(points, dtype=np.float64)


def mean_face_to_world(points_face: np.ndarray) -> np.ndarray:
    """Face-frame points (N, 3) -> SPIGA world frame [z, -x, -y]."""
    points_face = np.asarray(points_face, dtype=np.float64)
    return np.stack([points_face[:, 2], -points_face[:, 0], -points_face[:, 1]], axis=1)


def read_mean_face(path: str | os.PathLike, landmarks: LandmarkSet) -> np.ndarray:
    """Read an `id|x|y|z` mean face and return it in world frame, in `landmarks` order.

    Returns:
        (L, 3) float64 world coordinates, row i for landmark i of `landmarks`.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpigaError(f"{path}: cannot read mean face ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise SpigaError(f"{path}: not a text mean-face file (expected `id|x|y|z` lines)") from None
    ids, points = parse_mean_face_text(text, str(path))
    return order_mean_face(ids, points, landmarks, str(path))


def order_mean_face(ids: list[int], points_face: np.ndarray, landmarks: LandmarkSet,
                    source: str = "<mean face>") -> np.ndarray:
    """Reorder face-frame points given by id into `landmarks` order, in world frame."""
    row_of = {point_id: row for row, point_id in enumerate(ids)}
    missing = [i for i in landmarks.ids if i not in row_of]
    if missing:
        raise SpigaError(
            f"{source}: mean face has {len(ids)} points but lacks ids {missing[:10]} of landmark set "
            f"{landmarks.name!r} ({landmarks.num_landmarks} points)")
    ordered = points_face[[row_of[i] for i in landmarks.ids]]
    return mean_face_to_world(ordered)


def mean_face_text(points: np.ndarray, landmark_set: LandmarkSet, comment: str = "") -> str:
    """(L, 3) face-frame points -> `id|x|y|z` text, one line per point, ids of the set."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"{point_id}|{x:.9g}|{y:.9g}|{z:.9g}"
              for point_id, (x, y, z) in zip(landmark_set.ids, points)]
    return "\n".join(lines) + "\n"


def write_mean_face(path: str | os.PathLike, points: np.ndarray, landmark_set: LandmarkSet,
                    comment: str = "") -> None:
    """Write (L, 3) face-frame points as an `id|x|y|z` file, atomically (`read_mean_face`
    reads it back)."""
    write_output(path, mean_face_text(points, landmark_set, comment))
