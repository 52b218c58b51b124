"""Run an aligner over a test set with the annotation boxes and score its predictions.

The aligner is any object with `.landmark_set` and `.align(image, boxes) -> list[face]`,
each face with `.landmarks` (L, 2) and, optionally, `.headpose` (`.yaw .pitch .roll .tx
.ty .tz`) -- `spiga.load(...)` returns one; tests pass a fake.

Test sets are named `FORMAT[/SUBSET]:PATH[:ROOT]` and read by the one reader of each format
(`spiga.data.read_dataset`, training's too): `spiga-json:FILE` reads the original SPIGA JSON
with image paths relative to the file's folder, `spiga-json:FILE:ROOT` relative to ROOT;
`wflw`, `300w`, `cofw68`, `merlrav` and `custom` work too. Points a file does not annotate
(`[null, null]` in SPIGA JSON) are left out of the figures.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import DatasetError, InputError, SpigaError
from ..face import POSE_FIELDS
from ..io import is_file
from ..landmarks import LandmarkSet
from .formats import Annotations, annotations_from_samples, write_spiga_json

log = logging.getLogger(__name__)


class CropPredictor(Protocol):
    """What the benchmark needs of a model: its layout and landmarks from given face boxes
    (`spiga.Aligner` is one; tests pass a fake)."""

    landmark_set: LandmarkSet

    def align(self, image: Any, boxes: Sequence[Sequence[float]] | None = None) -> list: ...


@dataclass(frozen=True)
class TestSet:
    """Annotations of a test set and the image file of each face (in the same order)."""

    annotations: Annotations
    image_paths: list[Path]

    def image_path(self, index: int) -> Path:
        return self.image_paths[index]


def load_test_set(spec: str, landmark_set: LandmarkSet, allow_outside_root: bool = False) -> TestSet:
    """Read a test set named `FORMAT[/SUBSET]:PATH[:ROOT]` (e.g. `spiga-json:data/cofw68/test.json`)
    with the format's one reader (`spiga.data.read_dataset`, training's too).

    allow_outside_root: accept image paths that leave the image folder.
    """
    from ..data import read_dataset

    data = read_dataset(spec, landmark_set, require_images=False, allow_outside_root=allow_outside_root)
    annotations = annotations_from_samples(data.samples, data.landmark_set, spec)
    return TestSet(annotations, [Path(s.image_path) for s in data.samples])


def _check_images_exist(test_set: TestSet) -> None:
    """Fail before a long run, not in its middle, when images are missing."""
    missing = [i for i in range(len(test_set.annotations)) if not is_file(test_set.image_path(i))]
    if missing:
        shown = ", ".join(str(test_set.image_path(i)) for i in missing[:3])
        raise DatasetError(f"{test_set.annotations.source}: {len(missing)} of {len(test_set.annotations)} "
                           f"images are missing ({test_set.annotations.label(missing[0])}: {shown}"
                           f"{', ...' if len(missing) > 3 else ''})")


def predict_test_set(aligner: CropPredictor, test_set: TestSet, progress: bool = True) -> Annotations:
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


def run_benchmark(aligner: CropPredictor, test_set: TestSet, predictions_path: str | os.PathLike,
                  progress: bool = True) -> Annotations:
    """Predict every face of `test_set` and write the predictions as SPIGA JSON (atomically)."""
    pred = predict_test_set(aligner, test_set, progress=progress)
    pred.source = str(predictions_path)
    write_spiga_json(predictions_path, pred)
    log.info("wrote %d predictions to %s", len(pred), predictions_path)
    return pred
