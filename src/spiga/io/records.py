"""The result of aligning one image, and the one writer of every output of a run.

`image_record` builds the per-image record that `spiga align` (one image or many), the
HTTP server and the JSON Lines output all share:

    {"path": "photo.jpg", "width": 640, "height": 480, "faces": [face, ...]}
    {"path": "broken.jpg", "error": "broken.jpg: not an image file"}

with each face `Face.to_dict()` (box, landmarks, headpose named by `spiga.face.POSE_FIELDS`,
score, id). `ResultSink` takes each image's faces once and feeds the outputs a run asked
for: JSON (`{"images": [record, ...]}`), JSON Lines, CSV, `.pts` files and drawings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import OutputError, SpigaError
from .faces import FaceCsvWriter, write_pts_files
from .files import check_folder, check_outputs_apart, output_folder, output_target, write_output
from .images import check_image_name, write_image
from .jsonl import JsonlWriter


def face_records(faces: Sequence[Any]) -> list[dict]:
    """`Face.to_dict()` of each face (records that are already dicts are kept as they are)."""
    return [face if isinstance(face, dict) else face.to_dict() for face in faces]


def image_record(path: str | os.PathLike, width: int | None = None, height: int | None = None,
                 faces: Sequence[Any] = (), error: str | None = None) -> dict:
    """The record of one image: `{"path", "width", "height", "faces"}`, or `{"path", "error"}`
    when `error` is given. `faces`: `Face`s or their dicts (the server adds `pose_axes`)."""
    if error is not None:
        return {"path": os.fspath(path), "error": error}
    return {"path": os.fspath(path), "width": int(width), "height": int(height), "faces": face_records(faces)}


#: A drawing function: (BGR image, faces) -> BGR image with the faces drawn.
Drawing = Callable[[np.ndarray, Sequence[Any]], np.ndarray]


class ResultSink:
    """Every output of an alignment run, fed one image at a time.

    Args:
        num_landmarks: L (the CSV's columns).
        json: JSON file (`{"images": [record, ...]}`, written when the run ends), `-` for
            standard output, or None.
        jsonl: JSON Lines file, one line per image as it finishes; `-` for standard output.
        csv: CSV file (one row per face, written when the run ends), `-`, or None.
        pts_dir: folder for one `.pts` per face (`<stem>_<k>.pts`), or None.
        draw: the drawing's file (one image), or None.
        draw_dir: folder for drawings (`<stem>.png`), or None.
        drawing: draws the faces on an image (needed with `draw` or `draw_dir`).
        stems: input path -> the stem of its `.pts` files and drawings (default: its stem).
        resume: keep `jsonl`'s complete lines (see `JsonlWriter`); `existing` holds them.
    Attributes:
        existing: the records already in `jsonl` (with `resume`).
    """

    def __init__(self, num_landmarks: int, *, json: str | os.PathLike | None = None,
                 jsonl: str | os.PathLike | None = None, csv: str | os.PathLike | None = None,
                 pts_dir: str | os.PathLike | None = None, draw: str | os.PathLike | None = None,
                 draw_dir: str | os.PathLike | None = None, drawing: Drawing | None = None,
                 stems: Mapping[str, str] | None = None, resume: bool = False) -> None:
        if draw is not None:
            check_image_name(draw, "--draw")
        self.pts_dir = None if pts_dir is None else output_folder(pts_dir, "--pts")
        self.draw_dir = None if draw_dir is None else output_folder(draw_dir, "--draw-dir")
        self.draw = None if draw is None else Path(draw)
        if (self.draw or self.draw_dir) and drawing is None:
            raise ValueError("drawing outputs need a drawing function")
        self.drawing = drawing
        self.stems = dict(stems or {})
        self.json = json
        self._images: list[dict] = []
        self.table = FaceCsvWriter(csv, num_landmarks) if csv is not None else None
        self.lines = JsonlWriter(jsonl, resume=resume) if jsonl is not None else None
        self.existing: list[dict] = self.lines.existing if self.lines else []

    def stem(self, path: str | os.PathLike) -> str:
        return self.stems.get(os.fspath(path), Path(path).stem)

    def drawing_path(self, path: str | os.PathLike) -> Path | None:
        """Where the drawing of the input `path` goes (None: no drawing)."""
        if self.draw is not None:
            return self.draw
        return None if self.draw_dir is None else self.draw_dir / f"{self.stem(path)}.png"

    def write(self, path: str | os.PathLike, image: np.ndarray, faces: Sequence[Any]) -> dict:
        """Write the faces of the image at `path` to every output; returns its record.

        Raises `OutputError` ("drawing: ...", "pts: ...") when its drawing or `.pts` cannot
        be written; the image then gets no record (the caller writes an error instead).
        """
        target = self.drawing_path(path)
        if target is not None:
            try:
                write_image(target, self.drawing(image, faces), "--draw" if self.draw else "--draw-dir")
            except (SpigaError, OSError) as exc:
                raise OutputError(f"drawing: {exc}") from None
        if self.pts_dir is not None:
            try:
                write_pts_files(self.pts_dir, path, faces, stem=self.stem(path))
            except (SpigaError, OSError) as exc:
                raise OutputError(f"pts: {exc}") from None
        record = image_record(path, image.shape[1], image.shape[0], faces)
        if self.table is not None:
            self.table.write(path, record["faces"])
        self._emit(record)
        return record

    def fail(self, path: str | os.PathLike, message: str) -> dict:
        """Record that the image at `path` failed with `message`."""
        record = image_record(path, error=message)
        self._emit(record)
        return record

    def _emit(self, record: dict) -> None:
        if self.lines is not None:
            self.lines.write(record)
        if self.json is not None:
            self._images.append(record)

    def close(self, complete: bool = True) -> None:
        """Close the JSON Lines output; write the CSV and JSON when the run is `complete`."""
        if self.lines is not None:
            self.lines.close()
        if not complete:
            return
        if self.table is not None:
            self.table.close()
        if self.json is not None:
            write_output(self.json, json.dumps({"images": self._images}) + "\n", stream_ok=True, option="--json")

    def __enter__(self) -> "ResultSink":
        return self

    def __exit__(self, kind, *rest) -> None:
        self.close(complete=kind is None)


def check_run_outputs(inputs: Sequence[str | os.PathLike], *, json: str | os.PathLike | None = None,
                      jsonl: str | os.PathLike | None = None, csv: str | os.PathLike | None = None,
                      draw: str | os.PathLike | None = None, draw_dir: str | os.PathLike | None = None,
                      pts_dir: str | os.PathLike | None = None, stems: Mapping[str, str] | None = None) -> None:
    """Refuse, before the run, any output of an alignment run that would overwrite an input
    (`check_outputs_apart`), the drawings and `.pts` files of folder outputs included, a
    folder where a file is expected (or the reverse), `-` where no stream can go, and a
    drawing name no image writer knows."""
    for option, path in (("--json", json), ("--jsonl", jsonl), ("--csv", csv), ("--draw", draw)):
        if path is not None:
            output_target(path, option, stream_ok=option != "--draw")
    for option, path in (("--draw-dir", draw_dir), ("--pts", pts_dir)):
        if path is not None:
            check_folder(path, option)
    if draw is not None:
        check_image_name(draw, "--draw")
    stems = dict(stems or {})
    stem_of = [stems.get(os.fspath(p), Path(p).stem) for p in inputs]
    outputs: dict[str, Any] = {"--json": json, "--jsonl": jsonl, "--csv": csv, "--draw": draw}
    if draw_dir is not None:
        outputs["--draw-dir"] = [Path(draw_dir) / f"{stem}.png" for stem in stem_of]
    if pts_dir is not None:
        # a face count is not known before the run: every name <stem>_<k>.pts an input has
        outputs["--pts"] = [Path(p) for p in inputs if Path(p).suffix.lower() == ".pts"
                            and _is_pts_name(Path(p).name, stem_of)
                            and Path(os.path.realpath(Path(p).parent)) == Path(os.path.realpath(pts_dir))]
    check_outputs_apart(inputs, outputs)


def _is_pts_name(name: str, stems: Sequence[str]) -> bool:
    base, _, k = name[:-4].rpartition("_")
    return k.isdigit() and base in stems
