"""Helpers shared by the readers: `.pts` files, images beside annotations, point counts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ..sample import EntryError
from ...landmarks import LandmarkSet

#: Image extensions looked for beside an annotation file, in this order.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".JPG", ".JPEG", ".PNG")


def parse_pts(path: Path) -> np.ndarray:
    """Read an iBUG `.pts` file: `version`, `n_points: N`, `{`, N lines `x y`, `}`.

    Returns:
        (N, 2) float64 coordinates as written.
    Raises:
        EntryError: naming the file and line of the first problem.
    """
    try:
        lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
    except OSError as exc:
        raise EntryError(str(path), f"cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise EntryError(str(path), "not a text .pts file") from None
    declared = None
    start = None
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if text.startswith("n_points"):
            try:
                declared = int(text.split(":", 1)[1])
            except (IndexError, ValueError):
                raise EntryError(f"{path}:{number}", f"cannot read the point count from {text!r}") from None
        elif text == "{":
            start = number
            break
    if declared is None or start is None:
        raise EntryError(str(path), "not a .pts file (expected `n_points: N` then `{`)")
    points = []
    for number, line in enumerate(lines[start:], start=start + 1):
        text = line.strip()
        if text == "}":
            break
        if not text:
            continue
        fields = text.split()
        try:
            if len(fields) != 2:
                raise ValueError
            points.append((float(fields[0]), float(fields[1])))
        except ValueError:
            raise EntryError(f"{path}:{number}", f"expected `x y`, found {text!r}") from None
    else:
        raise EntryError(str(path), "missing the closing `}`")
    if len(points) != declared:
        raise EntryError(str(path), f"declares n_points: {declared} but lists {len(points)} points")
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def image_inside(root: Path, name: str, source: str, allow_outside_root: bool = False) -> Path:
    """`root / name` for an image path written in an annotation file.

    A path that leaves `root` (absolute, or climbing above it with `..`) is refused
    unless `allow_outside_root`: an annotation file must not make spiga read arbitrary
    files. The check is lexical: symbolic links inside `root` are the dataset's own
    business (image folders are often links to another disk).

    Raises:
        EntryError: naming `source` (file and line or entry) and the path.
    """
    if "\x00" in name:
        raise EntryError(source, "image path contains a NUL character")
    if allow_outside_root:
        return root / name
    normal = os.path.normpath(name) if name else name
    if os.path.isabs(name) or normal == ".." or normal.startswith(".." + os.sep):
        raise EntryError(source, f"image path {name!r} leads outside the image folder {root} (absolute, or "
                                 "`..` above it); allow it with --allow-outside-root")
    return root / name


def image_beside(annotation: Path) -> Path | None:
    """The image with the annotation file's stem in the same folder, or None."""
    for suffix in IMAGE_SUFFIXES:
        candidate = annotation.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def count_problem(found: int, landmark_set: LandmarkSet) -> str | None:
    """A message when `found` points do not fit the landmark set, else None."""
    if found == landmark_set.num_landmarks:
        return None
    return (f"{found} points, but landmark set {landmark_set.name!r} has "
            f"{landmark_set.num_landmarks}")


def require_set(landmark_set: LandmarkSet | None, default: LandmarkSet, fmt: str) -> LandmarkSet:
    """The given landmark set if it has the format's point count, else the default."""
    if landmark_set is None:
        return default
    if landmark_set.num_landmarks != default.num_landmarks:
        raise DatasetError(f"format {fmt!r} has {default.num_landmarks} points; landmark set "
                           f"{landmark_set.name!r} has {landmark_set.num_landmarks}")
    return landmark_set


def walk_files(root: Path, suffix: str) -> list[Path]:
    """Every file under `root` ending in `suffix` (case-insensitive), sorted, following
    no symlinked folders twice."""
    found = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.lower().endswith(suffix):
                found.append(Path(folder) / name)
    return sorted(found)


def relative_parts(path: Path, root: Path) -> tuple[str, ...]:
    """Lower-cased folder names of `path` below `root`."""
    try:
        rel = path.parent.relative_to(root)
    except ValueError:
        rel = path.parent
    return tuple(part.lower() for part in rel.parts)
