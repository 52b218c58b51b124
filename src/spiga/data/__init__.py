"""Training data: dataset readers, the `Sample` type, images, augmentation, targets.

`read_dataset("FORMAT[/SUBSET]:PATH[:ROOT]")` reads any supported source into a
`Dataset` of `Sample`s. Formats: `wflw`, `300w`, `cofw68`, `merlrav`, `spiga-json`,
`custom` (see `spiga.data.formats`). SUBSET keeps the samples with that tag (a split
such as `300w/common`, a WFLW test subset such as `wflw/pose`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from ..errors import DatasetError, ImageError
from ..landmarks import LandmarkSet, resolve_landmark_set
from .formats import READERS
from .images import DEFAULT_SCALING, DepthScaling, read_image_float
from .sample import BadEntries, Dataset, Sample, Skipped, make_sample

log = logging.getLogger(__name__)

__all__ = [
    "BadEntries", "Dataset", "DepthScaling", "FORMATS", "Sample", "Skipped", "make_sample",
    "parse_spec", "read_dataset", "read_image_float", "verify_images",
]

FORMATS = tuple(READERS)


def parse_spec(spec: str) -> tuple[str, str | None, Path, Path | None]:
    """`FORMAT[/SUBSET]:PATH[:ROOT]` -> (format, subset, path, root).

    PATH may itself contain `:` when it names an existing file or folder.
    """
    head, sep, rest = spec.partition(":")
    fmt, _, subset = head.partition("/")
    if not sep or not rest:
        raise DatasetError(f"dataset {spec!r}: expected FORMAT:PATH[:ROOT] with FORMAT one of "
                           f"{', '.join(FORMATS)}")
    if fmt not in READERS:
        raise DatasetError(f"dataset {spec!r}: unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    path, root = rest, None
    if not Path(rest).exists() and ":" in rest:
        path, root = rest.rsplit(":", 1)
    if not Path(path).exists():
        raise DatasetError(f"dataset {spec!r}: {path} not found")
    if root is not None and not Path(root).is_dir():
        raise DatasetError(f"dataset {spec!r}: image folder {root} not found")
    return fmt, subset or None, Path(path), None if root is None else Path(root)


def read_dataset(spec: str, landmark_set: LandmarkSet | str | os.PathLike | None = None,
                 skip_bad: bool = False, check_images: bool = False,
                 scaling: DepthScaling = DEFAULT_SCALING, require_images: bool = True,
                 allow_outside_root: bool = False) -> Dataset:
    """Read an annotation source into memory.

    Args:
        spec: `FORMAT[/SUBSET]:PATH[:ROOT]`, e.g. `wflw:list_98pt_rect_attr_train.txt`,
            `300w/common:/data/300W`, `spiga-json:test.json:/data/images`.
        landmark_set: a `LandmarkSet`, a built-in name (`wflw98`, `ibug68`) or a
            landmark-set file; required by `custom`, optional elsewhere.
        skip_bad: leave out bad entries with a warning instead of stopping; the
            `Dataset.skipped` list and `Dataset.summary()` count them.
        check_images: decode every image now (slow), so that a corrupt one is found
            before training rather than during it.
        scaling: the rule for images deeper than 8 bits (used by `check_images`).
        require_images: False reads annotations only (mean-face estimation): missing
            images are not looked for.
        allow_outside_root: accept image paths that leave the image folder (absolute,
            or `..` above it); by default such an entry is bad.
    Raises:
        DatasetError / ImageError: naming the file and line (or entry) of the first bad
            entry, when `skip_bad` is False.
    """
    fmt, subset, path, root = parse_spec(spec)
    bad = BadEntries(skip_bad, require_images, allow_outside_root)
    landmarks, samples = READERS[fmt].read(path, root, resolve_landmark_set(landmark_set), bad)
    dataset = Dataset(spec, landmarks, samples, bad.skipped)
    if check_images:
        dataset = verify_images(dataset, bad, scaling)
    if subset:
        dataset = replace(dataset.select(subset), name=spec)
    if not dataset.samples:
        raise DatasetError(f"dataset {spec!r}: no usable sample ({dataset.summary()})")
    log.info("%s", dataset.summary())
    return dataset


def verify_images(dataset: Dataset, bad: BadEntries | None = None,
                  scaling: DepthScaling = DEFAULT_SCALING) -> Dataset:
    """Decode every image once; bad ones stop (or are skipped under `bad.skip_bad`)."""
    bad = bad or BadEntries(False)
    kept: list[Sample] = []
    for sample in tqdm(dataset.samples, desc="checking images", unit="image", leave=False):
        try:
            read_image_float(sample.image_path, scaling)
        except ImageError as exc:
            bad.report(sample.source, str(exc), kind="image")
            continue
        kept.append(sample)
    return Dataset(dataset.name, dataset.landmark_set, kept, bad.skipped)
