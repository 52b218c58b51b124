"""COFW68: the 68-point re-annotation of COFW's test set (Ghiasi and Fowlkes).

PATH is the folder of per-face MATLAB files `<n>_points.mat` (`COFW68_Data/test_annotations`),
each holding `Points` (68 x 2, image pixels) and `Occ` (68 flags, 1 = occluded). Images
are files named `<n>.jpg` (or .png, ...) in ROOT; without ROOT they are looked for in PATH
and in an `images` folder beside PATH. Face boxes come from `cofw68_test_bboxes.mat`
(`bboxes`, one x, y, w, h row per face, row n-1 for face n) when it is in PATH or its
parent folder, else from the bounding box of the points.

COFW's images ship inside a MATLAB file; extract them to files first. The original SPIGA
annotation of COFW68 (`cofw68/test.json`) is read by the `spiga-json` format instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ...landmarks import IBUG_68, LandmarkSet
from ..sample import BadEntries, EntryError, Sample, make_sample
from .common import IMAGE_SUFFIXES, count_problem, require_set
from .matlab import MatFileError, read_mat

NAME = "cofw68"
_BOXES_FILE = "cofw68_test_bboxes.mat"
_NUMBERED = re.compile(r"^([0-9]+)_points\.mat$", re.IGNORECASE)


def _load_mat(path: Path) -> dict:
    try:
        return read_mat(path)
    except MatFileError as exc:
        raise EntryError(str(path), f"not a readable MATLAB file: {exc}") from None
    except OSError as exc:
        raise EntryError(str(path), f"cannot read ({exc.strerror or exc})") from None


def _variable(data: dict, name: str) -> np.ndarray | None:
    for key, value in data.items():
        if key.lower() == name.lower():
            return np.asarray(value, dtype=np.float64)
    return None


def _boxes(path: Path) -> np.ndarray | None:
    for folder in (path, path.parent):
        candidate = folder / _BOXES_FILE
        if candidate.is_file():
            boxes = _variable(_load_mat(candidate), "bboxes")
            if boxes is None or boxes.ndim != 2 or boxes.shape[1] != 4:
                raise DatasetError(f"{candidate}: expected a `bboxes` variable of shape (N, 4)")
            return boxes
    return None


def _image(number: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for suffix in IMAGE_SUFFIXES:
            candidate = folder / f"{number}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def read(path: Path, root: Path | None, landmark_set: LandmarkSet | None,
         bad: BadEntries) -> tuple[LandmarkSet, list[Sample]]:
    """Read a folder of COFW68 `<n>_points.mat` files; see the module docstring."""
    landmark_set = require_set(landmark_set, IBUG_68, NAME)
    if not path.is_dir():
        raise DatasetError(f"{path}: not a folder (expected COFW68's test_annotations folder)")
    files = sorted((int(m.group(1)), f) for f in path.iterdir() if (m := _NUMBERED.match(f.name)))
    if not files:
        raise DatasetError(f"{path}: no `<n>_points.mat` files in this folder")
    boxes = _boxes(path)
    folders = [root] if root is not None else [path, path.parent / "images"]
    samples = []
    for number, file in files:
        source = str(file)
        try:
            data = _load_mat(file)
        except EntryError as exc:
            bad.report(exc.source, exc.problem)
            continue
        points = _variable(data, "Points")
        if points is None or points.ndim != 2 or points.shape[1] != 2:
            bad.report(source, "expected a `Points` variable of shape (68, 2)")
            continue
        problem = count_problem(len(points), landmark_set)
        if problem:
            bad.report(source, problem)
            continue
        occluded = _variable(data, "Occ")
        if occluded is not None and occluded.size != len(points):
            bad.report(source, f"`Occ` has {occluded.size} flags for {len(points)} points")
            continue
        visible = None if occluded is None else occluded.reshape(-1) == 0
        image = _image(str(number), folders)
        if image is None:
            if bad.require_images:
                bad.report(source, f"no image {number}.jpg/.png/... in {', '.join(map(str, folders))}",
                           kind="image")
                continue
            image = folders[0] / f"{number}.jpg"
        box = None
        if boxes is not None:
            if number > len(boxes):
                bad.report(source, f"{_BOXES_FILE} has {len(boxes)} rows, none for face {number}")
                continue
            box = boxes[number - 1]
        try:
            samples.append(make_sample(image, points, box=box, visible=visible, source=source))
        except EntryError as exc:
            bad.report(exc.source, exc.problem)
    return landmark_set, samples
