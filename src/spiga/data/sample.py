"""The in-memory annotation types: one `Sample` per annotated face, a `Dataset` of them.

Every reader (one module per source format in `spiga.data.formats`) turns its files
into the same `Sample`, so augmentation, targets and evaluation never see a format.

Per point a sample keeps two flags:
- `annotated`: the point has a position (False for MERL-RAV's `-1 -1` points, for
  SPIGA-JSON ids that an entry leaves out or lists as `[null, null]`, for empty cells of
  the generic format); its landmark row is NaN so that code forgetting the mask fails
  loudly. Training masks such points out of losses and targets, and every metric
  (`spiga.evaluate`, which reads its files through these same readers) leaves them out;
- `visible`: the point is annotated and not hidden (COFW's occlusion flag, MERL-RAV's
  negative coordinates, SPIGA-JSON's `visible`, random occlusion in augmentation).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DatasetError, ImageError
from ..io import is_file
from ..landmarks import LandmarkSet

log = logging.getLogger(__name__)


class EntryError(DatasetError):
    """A bad annotation entry: `source` (file:line or file, entry N) and the problem."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


@dataclass(frozen=True, eq=False)
class Sample:
    """One annotated face.

    Attributes:
        image_path: the image file.
        box: (4,) float64 face box (x, y, w, h) in image pixels.
        landmarks: (L, 2) float64 image pixels; NaN where not annotated.
        visible: (L,) bool, annotated and not occluded.
        annotated: (L,) bool, the point has a position.
        headpose: optional (6,) float64 yaw, pitch, roll (degrees), tx, ty, tz as the
            source gives it (SPIGA-JSON); training recomputes pose labels from landmarks.
        tags: subset names (`train`, `common`, `pose`, ...).
        source: where the annotation is, `file:line` or `file, entry N`, for messages.
        imgpath: the image path as the annotation file writes it (SPIGA JSON), which
            evaluation matches predictions by; empty where the format has none.
    """

    image_path: Path
    box: np.ndarray
    landmarks: np.ndarray
    visible: np.ndarray
    annotated: np.ndarray
    headpose: np.ndarray | None = None
    tags: frozenset[str] = frozenset()
    source: str = ""
    imgpath: str = ""

    def __post_init__(self) -> None:
        n = len(self.landmarks)
        if self.landmarks.shape != (n, 2) or self.visible.shape != (n,) or self.annotated.shape != (n,):
            raise EntryError(self.source, f"landmarks {self.landmarks.shape}, visible {self.visible.shape} "
                             f"and annotated {self.annotated.shape} do not agree")
        if self.box.shape != (4,) or not np.all(np.isfinite(self.box)) or self.box[2] <= 0 or self.box[3] <= 0:
            raise EntryError(self.source, f"face box {self.box.tolist()} must be 4 finite numbers "
                             "(x, y, w, h) with w, h > 0")
        if np.any(self.visible & ~self.annotated):
            raise EntryError(self.source, "a point is visible but not annotated")
        if not np.all(np.isfinite(self.landmarks[self.annotated])):
            raise EntryError(self.source, "an annotated point has a non-finite coordinate")

    @property
    def num_landmarks(self) -> int:
        return len(self.landmarks)


def make_sample(image_path: Path, landmarks: np.ndarray, *, source: str,
                box: np.ndarray | None = None, visible: np.ndarray | None = None,
                annotated: np.ndarray | None = None, headpose: np.ndarray | None = None,
                tags: frozenset[str] | set[str] = frozenset(), imgpath: str = "") -> Sample:
    """Build a `Sample`, filling the optional parts.

    Args:
        landmarks: (L, 2) image pixels; a row with a NaN (a `null` in the file) is not
            annotated; an infinite coordinate is an error.
        box: (4,) x, y, w, h; default: the bounding box of the annotated points.
        visible: (L,) bool; default: every annotated point.
        annotated: (L,) bool; default: the rows without NaN.
    Raises:
        DatasetError: no annotated point (and no box), an infinite coordinate, or
            inconsistent shapes.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    infinite = np.flatnonzero(np.isinf(landmarks).any(axis=-1)) if landmarks.ndim == 2 else []
    if len(infinite):  # missing is NaN or null; infinity is a broken value, not a gap
        raise EntryError(source, f"point {int(infinite[0])} has an infinite coordinate")
    finite = np.all(np.isfinite(landmarks), axis=1)
    annotated = finite if annotated is None else np.asarray(annotated, dtype=bool) & finite
    landmarks = np.where(annotated[:, None], landmarks, np.nan)
    visible = annotated.copy() if visible is None else np.asarray(visible, dtype=bool) & annotated
    if box is None:
        box = box_of_points(landmarks[annotated], source)
    headpose = None if headpose is None else np.asarray(headpose, dtype=np.float64).reshape(6)
    return Sample(Path(image_path), np.asarray(box, dtype=np.float64).reshape(-1), landmarks,
                  visible, annotated, headpose, frozenset(tags), source, imgpath)


def box_of_points(points: np.ndarray, source: str = "") -> np.ndarray:
    """(N, 2) points -> (4,) their bounding box (x, y, w, h), at least 1 px wide and high."""
    if len(points) == 0:
        raise EntryError(source, "no annotated point to make a face box from")
    low, high = points.min(axis=0), points.max(axis=0)
    size = np.maximum(high - low, 1.0)
    return np.array([low[0], low[1], size[0], size[1]])


@dataclass(frozen=True)
class Skipped:
    """An annotation entry left out under `--skip-bad`."""

    source: str
    problem: str
    kind: str  # "annotation" or "image"


class BadEntries:
    """What a reader does with a bad entry: stop, or (with `skip_bad`) warn and count.

    Errors name the file and line (or entry) through `source`. `allow_outside_root`
    lets image paths in annotation files leave the image folder (absolute paths, `..`);
    by default such an entry is bad (`spiga.data.formats.common.image_inside`).
    """

    def __init__(self, skip_bad: bool = False, require_images: bool = True,
                 allow_outside_root: bool = False) -> None:
        self.skip_bad = skip_bad
        self.require_images = require_images
        self.allow_outside_root = allow_outside_root
        self.skipped: list[Skipped] = []

    def image_ok(self, image: Path | None, source: str, hint: str = "") -> bool:
        """Whether an entry's image exists (always True when images are not required);
        a missing one is reported."""
        if not self.require_images:
            return True
        if image is not None and is_file(image):
            return True
        self.report(source, hint or f"image {image} not found", kind="image")
        return False

    def report(self, source: str, problem: str, kind: str = "annotation") -> None:
        """Raise `DatasetError` (`ImageError` for images), or record and warn under skip_bad."""
        if not self.skip_bad:
            error = ImageError if kind == "image" else DatasetError
            raise error(f"{source}: {problem}")
        log.warning("skipping %s: %s", source, problem)
        self.skipped.append(Skipped(source, problem, kind))


@dataclass
class Dataset:
    """The samples of one annotation source, in file order.

    Attributes:
        name: the spec it was read from (`wflw:list.txt`).
        landmark_set: the layout of every sample's landmarks.
        samples: the faces.
        skipped: entries left out under `--skip-bad`.
    """

    name: str
    landmark_set: LandmarkSet
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def tag_counts(self) -> Counter:
        """How many samples carry each tag."""
        return Counter(tag for sample in self.samples for tag in sample.tags)

    def select(self, tag: str) -> "Dataset":
        """The samples tagged `tag` (a split or test subset), same order."""
        chosen = [s for s in self.samples if tag in s.tags]
        if not chosen:
            known = ", ".join(sorted(self.tag_counts())) or "none"
            raise DatasetError(f"{self.name}: no sample is tagged {tag!r}; tags present: {known}")
        return replace(self, name=f"{self.name}/{tag}", samples=chosen)

    def summary(self) -> str:
        """One line: samples read and what was skipped, by kind."""
        text = f"{self.name}: {len(self.samples)} samples ({self.landmark_set.name}, " \
               f"{self.landmark_set.num_landmarks} points)"
        if self.skipped:
            kinds = Counter(s.kind for s in self.skipped)
            detail = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
            text += f"; skipped {len(self.skipped)} bad entries ({detail})"
        return text
