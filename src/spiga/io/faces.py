"""Faces to the files users of this field exchange: iBUG `.pts` and CSV.

- `.pts` (iBUG, the 300W format): one file per face,

      version: 1
      n_points: 68
      {
      x0 y0
      ...
      }

  in spiga's coordinates (image pixels, origin at the top-left corner of the top-left
  pixel), the convention `spiga`'s own `300w` reader reads them back in.
- CSV: one row per face: `image, face, box_x, box_y, box_w, box_h, score, yaw, pitch,
  roll, tx, ty, tz, x0, y0, x1, y1, ...` (score empty for given boxes).

Both are written through `spiga.io.files.write_output` (CSV may go to standard output).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..face import POSE_FIELDS
from .files import write_output


def pts_text(landmarks: np.ndarray) -> str:
    """(L, 2) landmarks -> the text of an iBUG .pts file."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    rows = "".join(f"{x:.4f} {y:.4f}\n" for x, y in points)
    return f"version: 1\nn_points: {len(points)}\n{{\n{rows}}}\n"


def write_pts_files(folder: str | os.PathLike, image: str | os.PathLike, faces: Sequence[Any],
                    stem: str | None = None) -> list[Path]:
    """One `.pts` per face of `image` in `folder`: `<stem>_<k>.pts`, k = 0, 1, ... in face
    order (`stem`: the image's file name without its suffix, unless given); `faces` are
    `Face`s or their `to_dict()` records."""
    folder = Path(folder)
    stem = Path(image).stem if stem is None else stem
    written = []
    for k, face in enumerate(faces):
        path = folder / f"{stem}_{k}.pts"
        write_output(path, pts_text(face["landmarks"] if isinstance(face, dict) else face.landmarks), option="--pts")
        written.append(path)
    return written


def csv_header(num_landmarks: int) -> list[str]:
    points = [f"{axis}{i}" for i in range(num_landmarks) for axis in ("x", "y")]
    return ["image", "face", "box_x", "box_y", "box_w", "box_h", "score", *POSE_FIELDS, *points]


def csv_rows(image: str | os.PathLike, faces: Sequence[Any]) -> list[list[Any]]:
    """Rows of `faces`: `Face`s or their `to_dict()` records (a resumed JSON Lines file's)."""
    rows = []
    for k, face in enumerate(faces):
        record = face if isinstance(face, dict) else face.to_dict()
        score = record.get("score")
        pose = record["headpose"]
        rows.append([str(image), k, *(float(v) for v in record["box"]), "" if score is None else float(score),
                     *(float(pose[name]) for name in POSE_FIELDS),
                     *np.asarray(record["landmarks"], np.float64).ravel().tolist()])
    return rows


class FaceCsvWriter:
    """CSV output of faces, one row per face, for one or many images; the file appears
    (atomically, complete) when the writer is closed.

    Args:
        path: the CSV file, or `-` for standard output.
        num_landmarks: L, for the header's x0, y0, ... x{L-1}, y{L-1} columns.
    """

    def __init__(self, path: str | os.PathLike, num_landmarks: int):
        self.path = Path(path)
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")
        self._writer.writerow(csv_header(num_landmarks))
        self.rows = 0

    def write(self, image: str | os.PathLike, faces: Sequence[Any]) -> None:
        for row in csv_rows(image, faces):
            self._writer.writerow(row)
            self.rows += 1

    def close(self) -> None:
        if self._buffer is not None:
            write_output(self.path, self._buffer.getvalue(), stream_ok=True, option="--csv")
            self._buffer = None

    def __enter__(self) -> "FaceCsvWriter":
        return self

    def __exit__(self, kind, *rest) -> None:
        if kind is None:
            self.close()
