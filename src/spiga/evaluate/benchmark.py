"""Run an aligner over a test set with the annotation boxes and score its predictions.

The aligner is any object with `.landmark_set` and `.align(image, boxes) -> list[face]`,
each face with `.landmarks` (L, 2) and, optionally, `.headpose` (`.yaw .pitch .roll .tx
.ty .tz`) -- `spiga.load(...)` returns one; tests pass a fake.

Test sets are named `FORMAT:PATH`; `spiga-json:FILE` reads the original SPIGA JSON with
image paths relative to the file's folder, `spiga-json:FILE:ROOT` relative to ROOT. The
training readers' formats (`wflw`, `300w`, `cofw68`, `merlrav`, `custom`, with a
`/SUBSET` where they have subsets) work too (see `spiga.data.read_dataset`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import DatasetError, InputError, SpigaError
from ..face import POSE_FIELDS
from ..io import is_file
from ..landmarks import LandmarkSet
from .formats import Annotations, read_spiga_json, write_spiga_json

log = logging.getLogger(__name__)


class Aligner(Protocol):
    landmark_set: LandmarkSet

    def align(self, image: Any, boxes: Sequence[Sequence[float]] | None = None) -> list: ...


@dataclass(frozen=True)
class TestSet:
    """Annotations of a test set and the folder its image paths are relative to.

    Image paths that leave `image_root` (absolute, or `..` above it) are refused unless
    `allow_outside_root`.
    """

    annotations: Annotations
    image_root: Path
    allow_outside_root: bool = False

    def image_path(self, index: int) -> Path:
        from ..data.formats.common import image_inside

        return image_inside(self.image_root, self.annotations.paths[index],
                            f"{self.annotations.source}, entry {index}", self.allow_outside_root)


def _read_spiga_json_set(location: str, landmark_set: LandmarkSet) -> TestSet:
    file, _, root = location.partition(":")
    annotations = read_spiga_json(file, landmark_set)
    return TestSet(annotations, Path(root) if root else Path(file).parent)


def _read_training_format(fmt: str) -> Callable[[str, LandmarkSet], TestSet]:
    """A test set in one of the training readers' formats (`spiga.data`), as annotations."""

    def read(location: str, landmark_set: LandmarkSet) -> TestSet:
        from ..data import read_dataset

        data = read_dataset(f"{fmt}:{location}", landmark_set)
        samples = data.samples
        nan = np.full((data.landmark_set.num_landmarks, 2), np.nan)
        poses = [s.headpose for s in samples]
        return TestSet(Annotations(
            source=f"{fmt}:{location}", landmark_set=data.landmark_set,
            paths=[str(Path(s.image_path).resolve()) for s in samples],
            boxes=np.array([s.box for s in samples], dtype=np.float64).reshape(-1, 4),
            landmarks=np.array([np.where(s.annotated[:, None], s.landmarks, nan) for s in samples]),
            annotated=np.array([s.annotated for s in samples]), visible=np.array([s.visible for s in samples]),
            headposes=np.array(poses, dtype=np.float64) if all(p is not None for p in poses) else None,
        ), Path(""), allow_outside_root=True)  # the reader has already kept its paths inside its root

    return read


#: Test-set formats: name -> reader(location after "NAME:", landmark set).
DATASET_FORMATS: dict[str, Callable[[str, LandmarkSet], TestSet]] = {
    "spiga-json": _read_spiga_json_set,
    **{fmt: _read_training_format(fmt) for fmt in ("wflw", "300w", "cofw68", "merlrav", "custom")},
}


def load_test_set(spec: str, landmark_set: LandmarkSet, allow_outside_root: bool = False) -> TestSet:
    """Read a test set named `FORMAT:PATH` (e.g. `spiga-json:data/cofw68/test.json`).

    allow_outside_root: accept image paths that leave the image folder.
    """
    fmt, sep, location = spec.partition(":")
    if not sep or not location:
        raise InputError(f"dataset {spec!r}: expected FORMAT:PATH, e.g. spiga-json:test.json "
                         f"(formats: {', '.join(sorted(DATASET_FORMATS))})")
    base = fmt.partition("/")[0]
    if fmt not in DATASET_FORMATS and base in DATASET_FORMATS and base != "spiga-json":
        return _read_training_format(fmt)(location, landmark_set)
    if fmt not in DATASET_FORMATS:
        raise InputError(f"dataset {spec!r}: unknown format {fmt!r}; known: {', '.join(sorted(DATASET_FORMATS))}")
    test_set = DATASET_FORMATS[fmt](location, landmark_set)
    if allow_outside_root:
        test_set = replace(test_set, allow_outside_root=True)
    for index in range(len(test_set.annotations)):
        test_set.image_path(index)  # refuse an escaping path now, naming its entry
    return test_set


def _check_images_exist(test_set: TestSet) -> None:
    """Fail before a long run, not in its middle, when images are missing."""
    missing = [i for i in range(len(test_set.annotations)) if not is_file(test_set.image_path(i))]
    if missing:
        shown = ", ".join(str(test_set.image_path(i)) for i in missing[:3])
        raise DatasetError(f"{test_set.annotations.source}: {len(missing)} of {len(test_set.annotations)} "
                           f"images are missing under {test_set.image_root} (entry {missing[0]}: {shown}"
                           f"{', ...' if len(missing) > 3 else ''})")


def predict_test_set(aligner: Aligner, test_set: TestSet, progress: bool = True) -> Annotations:
    """Predictions of `aligner` for every face of `test_set`, from the annotation boxes.

    All faces of an image go to the aligner in one call (one batch); the result follows
    the annotations' order. Predicted points are all marked visible (the model does not
    predict visibility).
    """
    gt = test_set.annotations
    landmark_set = aligner.landmark_set
    if tuple(landmark_set.ids) != tuple(gt.landmark_set.ids):
        raise InputError(f"the model predicts layout {landmark_set.name!r}, but the test set is "
                         f"read as {gt.landmark_set.name!r}")
    _check_images_exist(test_set)
    by_image: OrderedDict[str, list[int]] = OrderedDict()
    for i, path in enumerate(gt.paths):
        by_image.setdefault(path, []).append(i)
    n, num_points = len(gt), landmark_set.num_landmarks
    landmarks = np.zeros((n, num_points, 2))
    poses = np.full((n, 6), np.nan)
    has_pose = np.zeros(n, bool)
    with tqdm(total=n, unit="face", desc="benchmark", disable=not progress) as bar:
        for path, indices in by_image.items():
            image_path = test_set.image_path(indices[0])
            boxes = [tuple(float(v) for v in gt.boxes[i]) for i in indices]
            faces = aligner.align(str(image_path), boxes)
            if len(faces) != len(boxes):
                raise SpigaError(f"{image_path}: the aligner returned {len(faces)} faces for {len(boxes)} boxes")
            for i, face in zip(indices, faces):
                points = np.asarray(face.landmarks, np.float64)
                if points.shape != (num_points, 2):
                    raise SpigaError(f"{image_path}: the aligner returned landmarks of shape {points.shape}, "
                                     f"expected ({num_points}, 2)")
                landmarks[i] = points
                pose = getattr(face, "headpose", None)
                if pose is not None:
                    poses[i] = [float(getattr(pose, key, np.nan)) for key in POSE_FIELDS]
                    has_pose[i] = True
            bar.update(len(indices))
    return Annotations(source="<predictions>", landmark_set=gt.landmark_set, paths=list(gt.paths),
                       boxes=gt.boxes.copy(), landmarks=landmarks,
                       annotated=np.ones((n, num_points), bool), visible=np.ones((n, num_points), bool),
                       headposes=poses if has_pose.all() else None)


def run_benchmark(aligner: Aligner, test_set: TestSet, predictions_path: str | os.PathLike,
                  progress: bool = True) -> Annotations:
    """Predict every face of `test_set` and write the predictions as SPIGA JSON (atomically)."""
    pred = predict_test_set(aligner, test_set, progress=progress)
    pred.source = str(predictions_path)
    write_spiga_json(predictions_path, pred)
    log.info("wrote %d predictions to %s", len(pred), predictions_path)
    return pred
