"""The original SPIGA annotation JSON (`spiga-json` on the command line).

A list of entries `{imgpath, bbox, headpose, ids, landmarks, visible}`:
`imgpath` relative to the image folder, `bbox` x, y, w, h (or null: the points' box),
`headpose` yaw, pitch, roll, tx, ty, tz (or null), `ids` the mean-face ids of the listed
points, `landmarks` their x, y, `visible` 1 / 0 per point. Points are placed by id, so
an entry may list fewer points than the set (MERL-RAV profiles): the missing ones are
not annotated.

Images are relative to the JSON file's folder, or to ROOT (`spiga-json:FILE:ROOT`).
Without a landmark set, entries with 98 ids use WFLW's, others 300W's (68).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ...io import parse_json
from ...landmarks import IBUG_68, WFLW_98, LandmarkSet
from ..sample import BadEntries, EntryError, Sample, make_sample
from .common import image_inside

NAME = "spiga-json"


def _guess_set(entries: list, path: Path) -> LandmarkSet:
    for entry in entries:
        ids = entry.get("ids") if isinstance(entry, dict) else None
        if isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            if len(ids) == WFLW_98.num_landmarks:
                return WFLW_98
            if set(ids) <= set(IBUG_68.ids):
                return IBUG_68
            if set(ids) <= set(WFLW_98.ids):
                return WFLW_98
            break
    raise DatasetError(f"{path}: cannot tell the landmark set from the ids; give one "
                       "(--landmark-set wflw98, ibug68 or a file)")


def parse_entry(entry: dict, landmark_set: LandmarkSet, image_root: Path, source: str,
                allow_outside_root: bool = False) -> Sample:
    """One JSON entry -> `Sample`; raises EntryError naming `source`."""
    def fail(problem: str) -> EntryError:
        return EntryError(source, problem)

    if not isinstance(entry, dict):
        raise fail("expected an object {imgpath, bbox, headpose, ids, landmarks, visible}")
    missing = [k for k in ("imgpath", "landmarks") if k not in entry]
    if missing:
        raise fail(f"missing {', '.join(missing)}")
    try:
        listed = np.asarray(entry["landmarks"], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise fail("`landmarks` must be a list of [x, y] pairs") from None
    if listed.ndim != 2 or listed.shape[1] != 2:
        raise fail(f"`landmarks` must be a list of [x, y] pairs, found shape {listed.shape}")
    ids = entry.get("ids")
    if ids is None:
        if len(listed) != landmark_set.num_landmarks:
            raise fail(f"{len(listed)} points without `ids`, but landmark set {landmark_set.name!r} "
                       f"has {landmark_set.num_landmarks}")
        ids = list(landmark_set.ids)
    if not isinstance(ids, list) or len(ids) != len(listed):
        raise fail(f"`ids` must list one id per point ({len(listed)} points)")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise fail("`ids` must be integers")
    flags = entry.get("visible")
    if flags is None:
        flags = [1] * len(listed)
    if not isinstance(flags, list) or len(flags) != len(listed):
        raise fail(f"`visible` must have one flag per point ({len(listed)} points)")
    position = {point_id: row for row, point_id in enumerate(landmark_set.ids)}
    unknown = [i for i in ids if i not in position]
    if unknown:
        raise fail(f"ids {unknown[:8]} are not in landmark set {landmark_set.name!r}")
    if len(set(ids)) != len(ids):
        raise fail("an id is listed twice")
    count = landmark_set.num_landmarks
    landmarks = np.full((count, 2), np.nan)
    visible = np.zeros(count, bool)
    rows = [position[i] for i in ids]
    landmarks[rows] = listed
    try:
        visible[rows] = np.asarray(flags, dtype=np.float64) > 0.5
    except (TypeError, ValueError, OverflowError):
        raise fail("`visible` must be numbers (1 visible, 0 hidden)") from None
    box = entry.get("bbox")
    headpose = entry.get("headpose")
    try:
        box = None if box is None else np.asarray(box, dtype=np.float64).reshape(4)
        headpose = None if headpose is None else np.asarray(headpose, dtype=np.float64).reshape(6)
    except (TypeError, ValueError, OverflowError):
        raise fail("`bbox` must be 4 numbers and `headpose` 6 numbers (or null)") from None
    if not isinstance(entry["imgpath"], str):
        raise fail("`imgpath` must be a string")
    image = image_inside(image_root, entry["imgpath"], source, allow_outside_root)
    return make_sample(image, landmarks, box=box, visible=visible,
                       headpose=headpose, source=source)


def read(path: Path, root: Path | None, landmark_set: LandmarkSet | None,
         bad: BadEntries) -> tuple[LandmarkSet, list[Sample]]:
    """Read a SPIGA annotation JSON; see the module docstring."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a text JSON file") from None
    entries = parse_json(text, str(path))
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a JSON list of annotation entries")
    landmark_set = landmark_set or _guess_set(entries, path)
    root = path.parent if root is None else root
    samples = []
    for number, entry in enumerate(entries):
        source = f"{path}, entry {number}"
        try:
            sample = parse_entry(entry, landmark_set, root, source, bad.allow_outside_root)
        except EntryError as exc:
            bad.report(exc.source, exc.problem)
            continue
        if not bad.image_ok(sample.image_path, source):
            continue
        samples.append(sample)
    return landmark_set, samples
