"""300W: iBUG `.pts` files beside their images, 68 points.

PATH is the folder that holds the usual sub-folders (`afw`, `helen/trainset`,
`helen/testset`, `lfpw/trainset`, `lfpw/testset`, `ibug`, `300W/01_Indoor`,
`300W/02_Outdoor`); every `.pts` below it is read. Each sample is tagged with its
split and its source folder:

- `train`: afw, helen/trainset, lfpw/trainset (3148 faces);
- `common`: helen/testset, lfpw/testset (554); `challenge`: ibug (135);
  `full`: common + challenge (689);
- `private`: 300W/01_Indoor and 300W/02_Outdoor (600), also tagged `indoor`/`outdoor`.

The files give no face box: the box is the bounding box of the 68 points.
Coordinates are used as written.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DatasetError
from ...landmarks import IBUG_68, LandmarkSet
from ..sample import BadEntries, EntryError, Sample, make_sample
from .common import count_problem, image_beside, parse_pts, relative_parts, require_set, walk_files

NAME = "300w"


def split_tags(parts: tuple[str, ...]) -> set[str]:
    """Tags of a file from its lower-cased folder names below PATH."""
    tags: set[str] = set()
    names = set(parts)
    for source in ("afw", "helen", "lfpw", "ibug"):
        if source in names:
            tags.add(source)
    if "afw" in names or ({"helen", "lfpw"} & names and "trainset" in names):
        tags.add("train")
    elif {"helen", "lfpw"} & names and "testset" in names:
        tags |= {"common", "full"}
    elif "ibug" in names:
        tags |= {"challenge", "full"}
    for folder, tag in (("01_indoor", "indoor"), ("02_outdoor", "outdoor")):
        if folder in names:
            tags |= {"private", tag}
    return tags


def read_pts_folder(root: Path, image_root: Path | None, landmark_set: LandmarkSet, bad: BadEntries,
                    tags_of, convert=None) -> list[Sample]:
    """Read every `.pts` under `root`, with its image beside it (or at the same relative
    path under `image_root`).

    Args:
        tags_of: folder names below `root` -> set of tags.
        convert: optional (points (N, 2)) -> (landmarks, visible, annotated), for formats
            that code occlusion in the coordinates (MERL-RAV).
    """
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected the dataset folder holding .pts files)")
    files = walk_files(root, ".pts")
    if not files:
        raise DatasetError(f"{root}: no .pts annotation files found below this folder")
    samples = []
    for pts in files:
        source = str(pts)
        try:
            points = parse_pts(pts)
        except EntryError as exc:
            bad.report(exc.source, exc.problem)
            continue
        problem = count_problem(len(points), landmark_set)
        if problem:
            bad.report(source, problem)
            continue
        if image_root is None:
            image = image_beside(pts)
        else:
            image = image_beside(image_root / pts.relative_to(root))
        if image is None:
            if bad.require_images:
                bad.report(source, f"no image named {pts.stem}.jpg/.png/... beside it", kind="image")
                continue
            image = pts.with_suffix(".jpg")
        visible = annotated = None
        if convert is not None:
            points, visible, annotated = convert(points)
        try:
            samples.append(make_sample(image, points, visible=visible, annotated=annotated,
                                       tags=tags_of(relative_parts(pts, root)), source=source))
        except EntryError as exc:
            bad.report(exc.source, exc.problem)
    return samples


def read(path: Path, root: Path | None, landmark_set: LandmarkSet | None,
         bad: BadEntries) -> tuple[LandmarkSet, list[Sample]]:
    """Read a 300W folder; see the module docstring."""
    landmark_set = require_set(landmark_set, IBUG_68, NAME)
    return landmark_set, read_pts_folder(path, root, landmark_set, bad, split_tags)
