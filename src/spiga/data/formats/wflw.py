"""WFLW: `list_98pt_rect_attr_{train,test}.txt`.

One face per line, whitespace-separated: 196 coordinates (x0 y0 x1 y1 ... x97 y97),
the face box as x_min y_min x_max y_max, 6 attribute flags (pose, expression,
illumination, make-up, occlusion, blur; 1 = the face has it) and the image name
relative to `WFLW_images/`. The flags become tags, so `wflw/pose:...` selects the
large-pose test subset.

Images: ROOT when given; otherwise the file's folder, or `WFLW_images` beside
`WFLW_annotations` when the file sits in the official layout
(`WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_test.txt`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ...landmarks import WFLW_98, LandmarkSet
from ..sample import BadEntries, EntryError, Sample, make_sample
from .common import image_inside, require_set

NAME = "wflw"
ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
_POINTS = 98
_FIELDS = 2 * _POINTS + 4 + len(ATTRIBUTES) + 1


def default_root(path: Path) -> Path:
    """Where WFLW images are when no ROOT is given."""
    official = path.parent.parent.parent / "WFLW_images"
    return official if official.is_dir() else path.parent


def read(path: Path, root: Path | None, landmark_set: LandmarkSet | None,
         bad: BadEntries) -> tuple[LandmarkSet, list[Sample]]:
    """Read a WFLW list file; see the module docstring."""
    landmark_set = require_set(landmark_set, WFLW_98, NAME)
    root = default_root(path) if root is None else root
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read WFLW list ({exc})") from None
    samples = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        source = f"{path}:{number}"
        if len(fields) != _FIELDS:
            bad.report(source, f"expected {_FIELDS} fields (196 coordinates, 4 box, 6 attributes, "
                               f"image name), found {len(fields)}"
                               + (f" (that is {(len(fields) - 11) / 2:g} points)" if len(fields) > 11 else ""))
            continue
        try:
            numbers = np.array([float(f) for f in fields[:-1]])
        except ValueError as exc:
            bad.report(source, f"not a number: {exc}")
            continue
        landmarks = numbers[:2 * _POINTS].reshape(_POINTS, 2)
        x0, y0, x1, y1 = numbers[2 * _POINTS:2 * _POINTS + 4]
        flags = numbers[2 * _POINTS + 4:]
        if x1 <= x0 or y1 <= y0:
            bad.report(source, f"face box {[x0, y0, x1, y1]} has x_max <= x_min or y_max <= y_min")
            continue
        if not np.isin(flags, (0, 1)).all():
            bad.report(source, f"attribute flags must be 0 or 1, found {flags.tolist()}")
            continue
        try:
            image = image_inside(root, fields[-1], source, bad.allow_outside_root)
        except EntryError as exc:
            bad.report(exc.source, exc.problem)
            continue
        if not bad.image_ok(image, source):
            continue
        tags = {name for name, flag in zip(ATTRIBUTES, flags) if flag == 1}
        try:
            samples.append(make_sample(image, landmarks, box=np.array([x0, y0, x1 - x0, y1 - y0]),
                                       tags=tags, source=source))
        except EntryError as exc:
            bad.report(exc.source, exc.problem)
    return landmark_set, samples
