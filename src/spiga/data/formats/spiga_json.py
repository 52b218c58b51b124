"""The original SPIGA annotation JSON (`spiga-json` on the command line).

The format and its one parser are in `spiga.io.spiga_json`; this is its one reader, for
training, `spiga evaluate` and `spiga benchmark` alike: a point listed as `[null, null]`
(or with a NaN) is not annotated, `bbox` may be null (the annotated points' box is used),
a head pose is 3 to 6 numbers (yaw, pitch, roll, then tx, ty, tz when given), and the
image must lie inside the image folder.

Images are relative to the JSON file's folder, or to ROOT (`spiga-json:FILE:ROOT`).
Without a landmark set, entries with 98 ids use WFLW's, others 300W's (68).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DatasetError
from ...io import read_json_file
from ...io.spiga_json import integral, parse_entry
from ...landmarks import IBUG_68, WFLW_98, LandmarkSet
from ..sample import BadEntries, EntryError, Sample, make_sample
from .common import image_inside

NAME = "spiga-json"


def guess_landmark_set(entries: list) -> LandmarkSet | None:
    """WFLW's 98 points or 300W's 68, from the first entry with integer ids; None if unclear."""
    for entry in entries:
        ids = entry.get("ids") if isinstance(entry, dict) else None
        if isinstance(ids, list) and ids and all(integral(i) for i in ids):
            ids = [int(i) for i in ids]
            if len(ids) == WFLW_98.num_landmarks:
                return WFLW_98
            if set(ids) <= set(IBUG_68.ids):
                return IBUG_68
            if set(ids) <= set(WFLW_98.ids):
                return WFLW_98
            return None
    return None


def parse_sample(raw: dict, landmark_set: LandmarkSet, image_root: Path, source: str,
                 allow_outside_root: bool = False) -> Sample:
    """One JSON entry (`spiga.io.spiga_json.parse_entry`) -> `Sample`; the numbers a head
    pose gives must be finite. Raises EntryError naming `source`."""
    try:
        entry = parse_entry(raw, landmark_set)
        if entry.headpose is not None and not np.isfinite(np.asarray(raw["headpose"], np.float64)).all():
            raise ValueError("'headpose' has a NaN, infinite or missing value "
                             "(give [yaw, pitch, roll, tx, ty, tz], or null)")
    except ValueError as exc:
        raise EntryError(source, str(exc)) from None
    image = image_inside(image_root, entry.imgpath, source, allow_outside_root)
    return make_sample(image, entry.landmarks, box=entry.bbox, visible=entry.visible & entry.annotated,
                       headpose=entry.headpose, source=source, imgpath=entry.imgpath)


def read(path: Path, root: Path | None, landmark_set: LandmarkSet | None,
         bad: BadEntries) -> tuple[LandmarkSet, list[Sample]]:
    """Read a SPIGA annotation JSON; see the module docstring."""
    return parse_entries(read_json_file(path, DatasetError), path, root, landmark_set, bad)


def parse_entries(entries: Any, path: Path, root: Path | None, landmark_set: LandmarkSet | None,
                  bad: BadEntries) -> tuple[LandmarkSet, list[Sample]]:
    """The samples of a parsed SPIGA JSON list read from `path` (named in messages)."""
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a list of entries (SPIGA JSON), found a JSON {type(entries).__name__}")
    if not entries:
        raise DatasetError(f"{path}: the file has no entries")
    landmark_set = landmark_set or guess_landmark_set(entries)
    if landmark_set is None:
        raise DatasetError(f"{path}: cannot tell the landmark set from the ids; give one "
                           "(--landmark-set wflw98, ibug68 or a file)")
    root = path.parent if root is None else root
    samples = []
    for number, entry in enumerate(entries):
        source = f"{path}, entry {number}"
        try:
            sample = parse_sample(entry, landmark_set, root, source, bad.allow_outside_root)
        except EntryError as exc:
            bad.report(exc.source, exc.problem)
            continue
        if not bad.image_ok(sample.image_path, source):
            continue
        samples.append(sample)
    return landmark_set, samples
