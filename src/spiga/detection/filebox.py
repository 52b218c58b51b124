"""Face boxes read from a file, behind the `Detector` interface.

Formats (boxes are x, y, w, h in image pixels, optionally followed by a score):

- JSON: `{"bbox": [x, y, w, h]}` (one face), `{"boxes": [[x, y, w, h], ...]}`,
  `[[x, y, w, h], ...]`, a list of `{"bbox": [...], "score": s}` objects, or a mapping from
  image names to any of these (`{"a.jpg": [[...], ...], "b.jpg": {"bbox": [...]}}`).
- Text (any other suffix): one box per line, numbers separated by commas or blanks,
  `x y w h [score]` or `image x y w h [score]`; blank lines and `#` comments are skipped.

Boxes from a file are taken as the face boxes SPIGA expects (no mapping).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from ..errors import DatasetError, InputError
from . import Detection, Detector, as_bgr

_RESERVED_KEYS = ("bbox", "boxes")


def _finite_number(value) -> float | None:
    """`value` as a finite float, or None (for bools, strings, NaN, infinities, huge integers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _parse_box(values, where: str) -> Detection:
    """A Detection from [x, y, w, h] or [x, y, w, h, score]; `where` names the entry for errors."""
    if not isinstance(values, (list, tuple)) or len(values) not in (4, 5):
        raise DatasetError(f"{where}: a box is 4 numbers x, y, w, h (and an optional score), got {values!r}")
    numbers = []
    for value in values:
        number = _finite_number(value)
        if number is None:
            raise DatasetError(f"{where}: {repr(value)[:40]} is not a finite number in box {repr(values)[:120]}")
        numbers.append(number)
    if numbers[2] <= 0 or numbers[3] <= 0:
        raise DatasetError(f"{where}: box {values!r} has a non-positive width or height")
    score = numbers[4] if len(numbers) == 5 else 1.0
    return Detection(tuple(numbers[:4]), score, None, "file")


def _parse_faces(entry, where: str) -> list[Detection]:
    """Boxes of one image from a JSON value: a box dict, a list of boxes or box dicts."""
    if isinstance(entry, dict):
        if "bbox" in entry:
            box = list(entry["bbox"]) if isinstance(entry["bbox"], (list, tuple)) else entry["bbox"]
            if "score" in entry and isinstance(box, list) and len(box) == 4:
                box = box + [entry["score"]]
            return [_parse_box(box, f"{where}.bbox")]
        if "boxes" in entry:
            return _parse_faces(entry["boxes"], f"{where}.boxes")
        raise DatasetError(f"{where}: expected a 'bbox' or 'boxes' entry, found keys {sorted(entry)}")
    if isinstance(entry, list) and entry and not any(isinstance(item, (list, dict)) for item in entry):
        return [_parse_box(entry, where)]  # a single box
    if isinstance(entry, list):
        faces = []
        for index, item in enumerate(entry):
            item_where = f"{where}[{index}]"
            faces.extend(_parse_faces(item, item_where) if isinstance(item, dict) else [_parse_box(item, item_where)])
        return faces
    raise DatasetError(f"{where}: expected boxes, found {type(entry).__name__}")


def _read_json(path: Path, text: str) -> dict[str | None, list[Detection]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError):
        raise DatasetError(f"{path}: JSON that cannot be read (too deeply nested, or a number too long)") from None
    if isinstance(data, dict) and not any(key in data for key in _RESERVED_KEYS):
        if not data:
            raise DatasetError(f"{path}: no boxes")
        return {str(name): _parse_faces(entry, f"{path}: entry {name!r}") for name, entry in data.items()}
    return {None: _parse_faces(data, f"{path}: top level")}


def _read_text(path: Path, text: str) -> dict[str | None, list[Detection]]:
    boxes: dict[str | None, list[Detection]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f for f in re.split(r"[,\s]+", line) if f]
        if not fields:
            raise DatasetError(f"{path}: line {number}: expected x, y, w, h [score], got {line!r}")
        name = None
        try:
            float(fields[0])
        except ValueError:
            name, fields = fields[0], fields[1:]
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise DatasetError(f"{path}: line {number}: expected numbers x, y, w, h [score], got {line!r}") from None
        boxes.setdefault(name, []).append(_parse_box(values, f"{path}: line {number}"))
    if not boxes:
        raise DatasetError(f"{path}: no boxes")
    if None in boxes and len(boxes) > 1:
        raise DatasetError(f"{path}: some lines name an image and some do not")
    return boxes


def read_box_file(path: str | Path) -> dict[str | None, list[Detection]]:
    """Boxes per image name (None for a file without names) from a JSON or text file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such box file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read box file ({exc})") from None
    return _read_json(path, text) if path.suffix.lower() == ".json" else _read_text(path, text)


class FileBoxDetector(Detector):
    """Returns the boxes a file lists (see the module docstring for the formats).

    Args:
        path: the box file.
        image: which image's boxes to return when the file names images (exact name or
            file name without folders); not needed when the file names one image or none.
    """

    name = "file"

    def __init__(self, path: str | Path, image: str | None = None) -> None:
        self.path = Path(path)
        self.boxes = read_box_file(self.path)
        self.image = image

    def faces_for(self, image: str | None) -> list[Detection]:
        """The boxes listed for `image` (a name or path), or the file's only set of boxes."""
        if None in self.boxes:
            return list(self.boxes[None])
        if image is None:
            if len(self.boxes) == 1:
                return list(next(iter(self.boxes.values())))
            raise InputError(f"{self.path}: lists boxes for {len(self.boxes)} images; say which one (image=NAME)")
        if image in self.boxes:
            return list(self.boxes[image])
        by_file_name = {Path(name).name: faces for name, faces in self.boxes.items()}
        if Path(image).name in by_file_name:
            return list(by_file_name[Path(image).name])
        raise InputError(f"{self.path}: no boxes for image {image!r}")

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        height, width = as_bgr(image_bgr).shape[:2]
        faces = self.faces_for(self.image)
        for face in faces:
            x, y, w, h = face.box
            if x >= width or y >= height or x + w <= 0 or y + h <= 0:
                raise InputError(f"{self.path}: box {face.box} lies outside the {width}x{height} image")
        return faces
