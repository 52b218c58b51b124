"""The generic format for custom landmark sets (thermal sets, new annotations).

Always read with a landmark set (`--landmark-set FILE`, see `spiga.landmarks.set_files`),
which fixes the point count L and order. Two spellings, chosen by the file extension:

JSON Lines (`.jsonl`, one face per line; a `.json` file holding a list of the same
objects also works):

    {"image": "img/0001.png", "landmarks": [[x, y], [x, y], null, ...],
     "box": [x, y, w, h], "visible": [1, 1, 0, ...], "tags": ["train"]}

`landmarks` is required (L entries; `null` = not annotated); `box` (default: the points'
bounding box), `visible` (default: all annotated points), `headpose` (6 numbers) and
`tags` are optional.

CSV (`.csv`, a header line, then one face per line):

    image,x0,y0,x1,y1,...,x53,y53[,v0,...,v53][,box_x,box_y,box_w,box_h][,tags]

An empty x or y cell means not annotated; `v` cells are 1 / 0; `tags` are separated by
spaces or semicolons. Column order is free. A cell may hold up to Python's CSV limit,
`csv.field_size_limit()` (131,072 characters by default); a longer one is refused naming
the file and line.

Image paths are relative to the file's folder, or to ROOT.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ...io import parse_json
from ...landmarks import LandmarkSet
from ..sample import BadEntries, EntryError, Sample, make_sample
from .common import image_inside

NAME = "custom"
_BOX_COLUMNS = ("box_x", "box_y", "box_w", "box_h")


def _entry_to_sample(entry, landmark_set: LandmarkSet, root: Path, source: str,
                     allow_outside_root: bool = False) -> Sample:
    def fail(problem: str) -> EntryError:
        return EntryError(source, problem)

    if not isinstance(entry, dict):
        raise fail("expected a JSON object with `image` and `landmarks`")
    image, points = entry.get("image"), entry.get("landmarks")
    if not isinstance(image, str) or not isinstance(points, list):
        raise fail("`image` (a path) and `landmarks` (a list of [x, y] or null) are required")
    count = landmark_set.num_landmarks
    if len(points) != count:
        raise fail(f"{len(points)} points, but landmark set {landmark_set.name!r} has {count}")
    landmarks = np.full((count, 2), np.nan)
    for i, point in enumerate(points):
        if point is None:
            continue
        try:
            landmarks[i] = np.asarray(point, dtype=np.float64).reshape(2)
        except (TypeError, ValueError, OverflowError):
            raise fail(f"point {i} must be [x, y] or null, found {point!r}") from None
    try:
        visible = entry.get("visible")
        visible = None if visible is None else np.asarray(visible, dtype=np.float64).reshape(count) > 0.5
        box = entry.get("box")
        box = None if box is None else np.asarray(box, dtype=np.float64).reshape(4)
        headpose = entry.get("headpose")
        headpose = None if headpose is None else np.asarray(headpose, dtype=np.float64).reshape(6)
    except (TypeError, ValueError, OverflowError):
        raise fail(f"`visible` must be {count} flags, `box` 4 numbers, `headpose` 6 numbers") from None
    tags = entry.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise fail("`tags` must be a list of strings")
    return make_sample(image_inside(root, image, source, allow_outside_root), landmarks, box=box, visible=visible, headpose=headpose,
                       tags=set(tags), source=source)


def _json_entries(path: Path) -> list[tuple[str, object]]:
    """(source, parsed object, or a string saying what is wrong) per entry."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        entries = parse_json(text, str(path))
        if not isinstance(entries, list):
            raise DatasetError(f"{path}: expected a JSON list of entries (or use .jsonl)")
        return [(f"{path}, entry {i}", e) for i, e in enumerate(entries)]
    result: list[tuple[str, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            result.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            result.append((f"{path}:{number}", f"invalid JSON ({exc.msg})"))
        except (ValueError, RecursionError):
            result.append((f"{path}:{number}", "JSON that cannot be read (too deeply nested, or a number too long)"))
    return result


def _csv_layout(header: list[str], count: int, path: Path) -> dict:
    """Column positions of the CSV header; raises naming line 1."""
    column = {name.strip(): i for i, name in enumerate(header)}
    if "image" not in column:
        raise DatasetError(f"{path}:1: the header needs an `image` column")
    numbered = {}
    for name in column:
        # canonical ASCII numbers only: "x00" or "x٠" would otherwise stand for x0
        match = re.fullmatch(r"([xyv])(0|[1-9][0-9]*)", name)
        if match:
            numbered.setdefault(match.group(1), set()).add(int(match.group(2)))
    xs, ys = numbered.get("x", set()), numbered.get("y", set())
    if xs != ys or xs != set(range(len(xs))):
        raise DatasetError(f"{path}:1: the header needs columns x0, y0, ..., x{{L-1}}, y{{L-1}}")
    if len(xs) != count:
        raise DatasetError(f"{path}:1: the header has {len(xs)} points (x0..x{len(xs) - 1}), "
                           f"but the landmark set has {count}")
    vs = numbered.get("v", set())
    if vs and vs != xs:
        raise DatasetError(f"{path}:1: visibility columns must be v0..v{count - 1}, all or none")
    boxes = [c in column for c in _BOX_COLUMNS]
    if any(boxes) and not all(boxes):
        raise DatasetError(f"{path}:1: give all of {', '.join(_BOX_COLUMNS)} or none")
    return {
        "image": column["image"],
        "x": [column[f"x{i}"] for i in range(count)], "y": [column[f"y{i}"] for i in range(count)],
        "v": [column[f"v{i}"] for i in range(count)] if vs else None,
        "box": [column[c] for c in _BOX_COLUMNS] if all(boxes) else None,
        "tags": column.get("tags"), "width": len(header),
    }


def _csv_rows(path: Path) -> list[list[str]]:
    """Every row of a CSV file; a cell over the CSV limit, a NUL byte or a broken quote is
    one `DatasetError` naming the file and line. The limit is Python's per-cell limit,
    `csv.field_size_limit()` (131,072 characters unless the application changed it),
    read, never set: it is one value for the whole process."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            return list(reader)
        except csv.Error as exc:
            line = f"{path}:{reader.line_num}"
            if "field larger than field limit" in str(exc):
                raise DatasetError(f"{line}: a cell longer than {csv.field_size_limit()} characters, the CSV limit "
                                   "per cell") from None
            raise DatasetError(f"{line}: malformed CSV ({str(exc).strip()})") from None


def _csv_entries(path: Path, count: int) -> list[tuple[str, object]]:
    rows = _csv_rows(path)
    if not rows:
        raise DatasetError(f"{path}: empty CSV file (expected a header line)")
    layout = _csv_layout(rows[0], count, path)
    result: list[tuple[str, object]] = []
    for number, row in enumerate(rows[1:], start=2):
        source = f"{path}:{number}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != layout["width"]:
            result.append((source, f"{len(row)} cells, the header has {layout['width']}"))
            continue

        def number_or_none(cell: str):
            cell = cell.strip()
            return None if cell == "" else float(cell)

        try:
            xs = [number_or_none(row[i]) for i in layout["x"]]
            ys = [number_or_none(row[i]) for i in layout["y"]]
            entry: dict = {
                "image": row[layout["image"]].strip(),
                "landmarks": [None if x is None or y is None else [x, y] for x, y in zip(xs, ys)],
            }
            if layout["v"]:
                entry["visible"] = [float(row[i]) for i in layout["v"]]
            if layout["box"]:
                entry["box"] = [float(row[i]) for i in layout["box"]]
        except ValueError as exc:
            result.append((source, f"not a number: {exc}"))
            continue
        if layout["tags"] is not None:
            entry["tags"] = [t for t in re.split(r"[;\s]+", row[layout["tags"]]) if t]
        result.append((source, entry))
    return result


def read(path: Path, root: Path | None, landmark_set: LandmarkSet | None,
         bad: BadEntries) -> tuple[LandmarkSet, list[Sample]]:
    """Read a custom JSON Lines / JSON / CSV file; see the module docstring."""
    if landmark_set is None:
        raise DatasetError(f"{path}: the custom format needs a landmark set "
                           "(--landmark-set FILE, or wflw98 / ibug68)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson", ".json"):
            entries = _json_entries(path)
        elif suffix == ".csv":
            entries = _csv_entries(path, landmark_set.num_landmarks)
        else:
            raise DatasetError(f"{path}: unknown extension {path.suffix!r} for the custom format "
                               "(use .jsonl, .json or .csv)")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file") from None
    root = path.parent if root is None else root
    samples = []
    for source, entry in entries:
        try:
            if isinstance(entry, str):  # a problem found while parsing the line
                raise EntryError(source, entry)
            sample = _entry_to_sample(entry, landmark_set, root, source, bad.allow_outside_root)
        except EntryError as exc:
            bad.report(exc.source, exc.problem)
            continue
        if not bad.image_ok(sample.image_path, source):
            continue
        samples.append(sample)
    return landmark_set, samples
