"""Landmark-set files: describe a custom layout (thermal sets, new annotations) in JSON.

    {
      "name": "sf-tl54",
      "points": ["jaw_0", "jaw_1", ...],      # names, one per point (or "num_points": 54)
      "ids": [0, 1, ...],                     # optional: mean-face ids, default 0..L-1
      "mirror_pairs": [[0, 16], [1, 15], ...],# left-right pairs; unpaired points mirror to themselves
      "edges": {"jaw": [0, 1, ..., 16],       # ordered contours, in drawing order
                "right_eye_upper": [36, 37, 38, 39], ...},
      "eye_corners": [36, 45],                # optional: outer corners (subject's right, left)
      "eyes": [[36, ..., 41], [42, ..., 47]]  # optional: eye contours (subject's right, left)
    }

Indices are 0-based positions in the annotation files' point order.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SpigaError
from ..io import read_json_file
from .sets import DATASET_LANDMARKS, IBUG_68, WFLW_98, LandmarkSet

#: Most points in a landmark set (a bound against files that declare billions).
MAX_POINTS = 10_000

#: Built-in layouts by name, as `--landmark-set` accepts them.
BUILTIN_SETS: dict[str, LandmarkSet] = {WFLW_98.name: WFLW_98, IBUG_68.name: IBUG_68}


def landmark_set_from_description(data: dict, source: str = "<landmark set>") -> LandmarkSet:
    """Build a `LandmarkSet` from the JSON description above.

    Raises:
        SpigaError: naming `source` and the problem (missing field, index out of range,
            a point in two mirror pairs, ...).
    """
    def fail(problem: str) -> SpigaError:
        return SpigaError(f"{source}: {problem}")

    if not isinstance(data, dict):
        raise fail("expected a JSON object with name, points, mirror_pairs and edges")
    names = data.get("points")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise fail("`points` must be a list of point names")
    count = data.get("num_points", len(names) if names is not None else None)
    if not isinstance(count, int) or isinstance(count, bool) or count < 2:
        raise fail("give `points` (a list of names) or `num_points` (an integer >= 2)")
    if count > MAX_POINTS:
        raise fail(f"{count} points; a landmark set has at most {MAX_POINTS}")
    if names is not None and len(names) != count:
        raise fail(f"`points` has {len(names)} names but `num_points` is {count}")

    def index(value, what: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
            raise fail(f"{what}: {value!r} is not a point index in 0..{count - 1}")
        return value

    ids = data.get("ids", list(range(count)))
    if not isinstance(ids, list) or len(ids) != count or not all(isinstance(i, int) for i in ids):
        raise fail(f"`ids` must be {count} integers")
    if len(set(ids)) != count:
        raise fail("`ids` are not unique")

    flip = list(range(count))
    for number, pair in enumerate(data.get("mirror_pairs", [])):
        if not isinstance(pair, list) or len(pair) != 2:
            raise fail(f"mirror_pairs[{number}] must be a pair [i, j]")
        a, b = (index(v, f"mirror_pairs[{number}]") for v in pair)
        if a == b or flip[a] != a or flip[b] != b:
            raise fail(f"mirror_pairs[{number}] {pair}: a point may appear in one pair only, "
                       "and not twice in the same pair")
        flip[a], flip[b] = b, a

    edges = data.get("edges")
    if not isinstance(edges, dict) or not edges:
        raise fail("`edges` must map at least one group name to an ordered list of point indices "
                   "(SPIGA's boundary attention needs one edge group or more)")
    groups = []
    for name, members in edges.items():
        if not isinstance(members, list) or not members:
            raise fail(f"edge group {name!r} must be a non-empty list of point indices")
        groups.append(tuple(index(v, f"edge group {name!r}") for v in members))

    eye_corners = data.get("eye_corners")
    if eye_corners is not None:
        if not isinstance(eye_corners, list) or len(eye_corners) != 2:
            raise fail("`eye_corners` must be a pair [right, left]")
        eye_corners = tuple(index(v, "eye_corners") for v in eye_corners)
    eyes = data.get("eyes")
    if eyes is not None:
        if not isinstance(eyes, list) or len(eyes) != 2 or not all(isinstance(e, list) and e for e in eyes):
            raise fail("`eyes` must be two non-empty lists [right eye, left eye]")
        eyes = tuple(tuple(index(v, "eyes") for v in eye) for eye in eyes)

    try:
        return LandmarkSet(
            name=str(data.get("name") or Path(source).stem),
            ids=tuple(ids), flip_order=tuple(flip), edge_groups=tuple(groups),
            group_names=tuple(str(n) for n in edges), eye_corners=eye_corners, eyes=eyes,
            point_names=tuple(names) if names is not None else None)
    except SpigaError as exc:
        raise fail(str(exc)) from None


def read_landmark_set(path: str | os.PathLike) -> LandmarkSet:
    """Read a landmark-set JSON file (see the module docstring)."""
    path = Path(path)
    return landmark_set_from_description(read_json_file(path, SpigaError), str(path))


def resolve_landmark_set(value: LandmarkSet | str | os.PathLike | None) -> LandmarkSet | None:
    """A `LandmarkSet`, a built-in name (`wflw98`, `ibug68`, or a configuration name such
    as `wflw` or `300wpublic`), or the path of a landmark-set file."""
    if value is None or isinstance(value, LandmarkSet):
        return value
    text = str(value)
    if text in BUILTIN_SETS:
        return BUILTIN_SETS[text]
    if text in DATASET_LANDMARKS and not Path(text).exists():
        return DATASET_LANDMARKS[text]
    return read_landmark_set(text)
