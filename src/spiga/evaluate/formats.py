"""Files of the evaluation: the original SPIGA JSON, its db_info.json, and `spiga align` JSON.

SPIGA JSON (ground truth and predictions of the original release) is a list, one entry per
face, in a fixed order:

    [{"imgpath": "images/01345.jpg",          # relative to the dataset folder
      "bbox": [x, y, w, h],                   # annotation box, pixels
      "headpose": [yaw, pitch, roll, tx, ty, tz],   # optional (null or absent)
      "ids": [101, 102, ...],                 # landmark ids, as in LandmarkSet.ids
      "landmarks": [[x, y], ...],             # one per id, pixels
      "visible": [1.0, 0.0, ...]}, ...]       # optional, one per id

Only the annotated landmarks are listed (MERLRAV leaves out self-occluded ones); `ids` says
which they are. Without `ids`, an entry must list every point of the layout in its order.
A point written `[null, null]` (as the fork's Charlotte-ThermalFace, FaceDB and SF-TL54
files do) is not annotated either: it is left out of every metric. The format has one
reader, `spiga.data.formats.spiga_json`, shared with training and `spiga benchmark`.

db_info.json (one per dataset in the original release) holds `norm` (normalisation ->
default threshold) and `test_subsets` (subset name -> image indices into the test list).

`spiga align` JSON holds the faces found in each image:

    {"images": [{"path": "...", "width": W, "height": H,
                 "faces": [{"box": [x, y, w, h], "landmarks": [[x, y], ...],
                            "headpose": {"yaw": .., "pitch": .., "roll": .., "tx": .., "ty": .., "tz": ..}}]}]}

Every error names the file and the entry (0-based index into the file's list).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..io import read_json_file, write_json
from ..io.spiga_json import entry_record
from ..errors import DatasetError
from ..face import POSE_FIELDS
from ..geometry.boxes import box_iou
from ..landmarks import LandmarkSet

if TYPE_CHECKING:
    from ..data.sample import Sample

HEADPOSE_KEYS = POSE_FIELDS


@dataclass
class Annotations:
    """The faces of one file, in file order, over one landmark layout (N faces, L points).

    Attributes:
        source: the file they were read from (for messages).
        landmark_set: the layout; point k has id `landmark_set.ids[k]`.
        paths: (N,) image paths as written in the file.
        boxes: (N, 4) float64 boxes (x, y, w, h).
        landmarks: (N, L, 2) float64 pixels; NaN where not annotated.
        annotated: (N, L) bool, which points the file gives.
        visible: (N, L) bool visibility flags (True where the file has none).
        headposes: (N, 6) float64 (yaw, pitch, roll, tx, ty, tz), NaN for a missing
            translation; None when the file has no head poses.
        labels: (N,) how messages name each face (`file, entry 3`); None: by index.
    """

    source: str
    landmark_set: LandmarkSet
    paths: list[str]
    boxes: np.ndarray
    landmarks: np.ndarray
    annotated: np.ndarray
    visible: np.ndarray
    headposes: np.ndarray | None = None
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def label(self, index: int) -> str:
        """How messages name face `index`."""
        if self.labels is not None:
            return self.labels[index]
        return f"{self.source}, entry {index}" + (f" ({self.paths[index]})" if self.paths[index] else "")


@dataclass(frozen=True)
class DbInfo:
    """The facts of an original `db_info.json`: default thresholds per norm and test subsets."""

    source: str
    norms: dict[str, float]
    test_subsets: dict[str, list[int]]


# --------------------------------------------------------------------------- JSON helpers


def load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file, with errors that name the file (missing, empty, not JSON)."""
    return read_json_file(path, DatasetError)


def _finite_array(value: Any, shape_tail: tuple[int, ...], what: str) -> np.ndarray:
    """`value` as a float64 array of shape (*, *shape_tail) with finite values, or ValueError."""
    expected = "a list of [x, y] pairs of numbers" if shape_tail == (2,) else f"of shape (*, {shape_tail})"
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{what} must be {expected}") from None
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        raise ValueError(f"{what} must be {expected}")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).reshape(array.shape[0], -1).all(axis=1))[0])
        raise ValueError(f"{what} has a NaN, infinite or missing coordinate at position {bad}")
    return array


def _finite_vector(value: Any, length: int | None, what: str, min_length: int = 0) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{what} must be a list of numbers") from None
    if array.ndim != 1 or (length is not None and array.size != length) or array.size < min_length:
        size = f"{length}" if length is not None else f"at least {min_length}"
        raise ValueError(f"{what} must be a list of {size} numbers")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} has a NaN, infinite or missing value")
    return array


def _check_box(box: np.ndarray, what: str = "bbox") -> None:
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"{what} [x, y, w, h] must have a positive width and height, got {box.tolist()}")


# --------------------------------------------------------------------------- SPIGA JSON


def read_spiga_json(path: str | os.PathLike, landmark_set: LandmarkSet) -> Annotations:
    """Read a SPIGA JSON file (ground truth or predictions) onto `landmark_set`, with the
    one reader of the format (`spiga.data.formats.spiga_json`, training's too).

    Raises:
        DatasetError: naming the file and the entry, for a missing or empty file, a
            malformed entry, an unknown or repeated landmark id, or an infinite value.
    """
    return parse_spiga_entries(load_json(path), landmark_set, str(path))


def parse_spiga_entries(data: Any, landmark_set: LandmarkSet, source: str) -> Annotations:
    """The annotations of a parsed SPIGA JSON list. Points listed as `[null, null]` (or
    with a NaN) are not annotated; an entry without `bbox` gets its annotated points' box;
    head poses are given for all entries or none."""
    from ..data.formats import spiga_json
    from ..data.sample import BadEntries

    # evaluation opens no image: paths only name faces, wherever they point
    bad = BadEntries(skip_bad=False, require_images=False, allow_outside_root=True)
    _, samples = spiga_json.parse_entries(data, Path(source), None, landmark_set, bad)
    return annotations_from_samples(samples, landmark_set, source)


def annotations_from_samples(samples: Sequence[Sample], landmark_set: LandmarkSet, source: str,
                             headposes: bool = True) -> Annotations:
    """The evaluation's arrays of faces read by a `spiga.data` reader (any format).

    `paths` are the image paths as the file writes them where the format has them
    (SPIGA JSON), else the image files. `headposes=False` leaves poses out (training's
    validation scores landmarks only).
    """
    if not samples:
        raise DatasetError(f"{source}: no faces to score")
    has_pose = np.array([headposes and s.headpose is not None for s in samples])
    if has_pose.any() and not has_pose.all():
        first = samples[int(np.flatnonzero(~has_pose)[0])]
        raise DatasetError(f"{first.source}: no 'headpose', though other entries have one (give all or none)")
    return Annotations(source=source, landmark_set=landmark_set,
                       paths=[s.imgpath or str(s.image_path) for s in samples],
                       boxes=np.stack([s.box for s in samples]), landmarks=np.stack([s.landmarks for s in samples]),
                       annotated=np.stack([s.annotated for s in samples]),
                       visible=np.stack([s.visible for s in samples]),
                       headposes=np.stack([s.headpose for s in samples]) if has_pose.all() else None,
                       labels=[s.source for s in samples])


def spiga_entries(annotations: Annotations) -> list[dict]:
    """The SPIGA JSON entries of `annotations` (only annotated points are listed)."""
    return [entry_record(annotations.landmark_set, path, annotations.landmarks[i], annotations.annotated[i],
                         annotations.visible[i], annotations.boxes[i],
                         None if annotations.headposes is None else annotations.headposes[i])
            for i, path in enumerate(annotations.paths)]


def write_spiga_json(path: str | os.PathLike, annotations: Annotations) -> None:
    """Write `annotations` as SPIGA JSON, atomically."""
    write_json(path, spiga_entries(annotations), indent=None)


# --------------------------------------------------------------------------- db_info.json


def read_db_info(path: str | os.PathLike) -> DbInfo:
    """Read an original `db_info.json`: `norm` (name -> threshold) and `test_subsets`."""
    source = str(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{source}: expected a JSON object with 'norm' and 'test_subsets'")
    norms_raw = data.get("norm") or {}
    subsets_raw = data.get("test_subsets") or {}
    if not isinstance(norms_raw, dict) or not isinstance(subsets_raw, dict):
        raise DatasetError(f"{source}: 'norm' and 'test_subsets' must be objects")
    norms = {}
    for name, threshold in norms_raw.items():
        try:
            value = float(threshold) if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) \
                else float("nan")
        except OverflowError:
            value = float("inf")
        if not (0 < value < float("inf")):
            raise DatasetError(f"{source}: norm {name!r}: the threshold must be a positive number, "
                               f"not {str(threshold)[:40]}")
        norms[str(name)] = value
    subsets = {}
    for name, indices in subsets_raw.items():
        if not isinstance(indices, list) or not all(
                isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in indices):
            raise DatasetError(f"{source}: test subset {name!r} must be a list of image indices (integers >= 0)")
        subsets[str(name)] = list(indices)
    return DbInfo(source=source, norms=norms, test_subsets=subsets)


# --------------------------------------------------------------------------- spiga align JSON


@dataclass(frozen=True)
class AlignFace:
    """One face of `spiga align` output: box (4,), landmarks (L, 2), headpose (6,) or None."""

    box: np.ndarray
    landmarks: np.ndarray
    headpose: np.ndarray | None


@dataclass(frozen=True)
class AlignImage:
    path: str
    faces: list[AlignFace]


def read_align_json(path: str | os.PathLike, landmark_set: LandmarkSet) -> list[AlignImage]:
    """Read `spiga align` JSON; every face must give the layout's L points in its order."""
    return parse_align_images(load_json(path), landmark_set, str(path))


def parse_align_images(data: Any, landmark_set: LandmarkSet, source: str) -> list[AlignImage]:
    """Validate parsed `spiga align` JSON; see `read_align_json`."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{source}: expected an object with an 'images' list (spiga align JSON)")
    if not data["images"]:
        raise DatasetError(f"{source}: the file has no images")
    num_points = landmark_set.num_landmarks
    images = []
    for i, image in enumerate(data["images"]):
        label = f"image {i}" + (f" ({image['path']})" if isinstance(image, dict)
                                and isinstance(image.get("path"), str) else "")
        try:
            if not isinstance(image, dict) or not isinstance(image.get("path"), str):
                raise ValueError("must be an object with a 'path' string")
            if not isinstance(image.get("faces"), list):
                raise ValueError("'faces' must be a list")
            faces = []
            for j, face in enumerate(image["faces"]):
                try:
                    if not isinstance(face, dict):
                        raise ValueError("must be an object")
                    missing = [key for key in ("box", "landmarks") if key not in face]
                    if missing:
                        raise ValueError(f"missing {', '.join(repr(k) for k in missing)}")
                    box = _finite_vector(face["box"], 4, "'box'")
                    _check_box(box, "'box'")
                    points = _finite_array(face["landmarks"], (2,), "'landmarks'")
                    if len(points) != num_points:
                        raise ValueError(f"has {len(points)} landmarks; layout {landmark_set.name!r} "
                                         f"has {num_points}")
                    pose = None
                    if face.get("headpose") is not None:
                        raw = face["headpose"]
                        if not isinstance(raw, dict) or any(k not in raw for k in HEADPOSE_KEYS[:3]):
                            raise ValueError("'headpose' must be an object with yaw, pitch, roll (tx, ty, tz)")
                        pose = _finite_vector([raw.get(k, np.nan) for k in HEADPOSE_KEYS[:3]], 3, "'headpose'")
                        pose = np.concatenate([pose, [float(raw[k]) if raw.get(k) is not None else np.nan
                                                      for k in HEADPOSE_KEYS[3:]]])
                    faces.append(AlignFace(box=box, landmarks=points, headpose=pose))
                except (ValueError, TypeError, OverflowError) as exc:
                    raise ValueError(f"face {j}: {exc}") from None
            images.append(AlignImage(path=image["path"], faces=faces))
        except ValueError as exc:
            raise DatasetError(f"{source}: {label}: {exc}") from None
    return images


def _path_parts(path: str) -> tuple[str, ...]:
    return PurePath(os.path.normpath(path.replace("\\", "/"))).parts


def _common_suffix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    count = 0
    while count < min(len(a), len(b)) and a[-1 - count] == b[-1 - count]:
        count += 1
    return count


def align_to_predictions(images: list[AlignImage], gt: Annotations, source: str) -> Annotations:
    """Pick, for each ground-truth face, its prediction in `spiga align` output.

    The image is the one whose path ends like the annotation's `imgpath` (the longest
    shared tail of path components wins); the face is the one whose box overlaps the
    annotation box most.
    """
    by_name: dict[str, list[tuple[tuple[str, ...], AlignImage]]] = {}
    for image in images:
        parts = _path_parts(image.path)
        by_name.setdefault(parts[-1] if parts else "", []).append((parts, image))
    num_points = gt.landmark_set.num_landmarks
    n = len(gt)
    landmarks = np.zeros((n, num_points, 2))
    poses = np.full((n, 6), np.nan)
    has_pose = np.zeros(n, bool)
    for i, gt_path in enumerate(gt.paths):
        label = f"entry {i} ({gt_path}) of {gt.source}"
        parts = _path_parts(gt_path)
        candidates = by_name.get(parts[-1] if parts else "", [])
        scored = sorted(((_common_suffix(parts, p), image) for p, image in candidates), key=lambda s: -s[0])
        if not scored:
            raise DatasetError(f"{source}: no image matches {label}")
        if len(scored) > 1 and scored[0][0] == scored[1][0]:
            raise DatasetError(f"{source}: several images match {label}: "
                               f"{scored[0][1].path!r} and {scored[1][1].path!r}")
        image = scored[0][1]
        if not image.faces:
            raise DatasetError(f"{source}: image {image.path!r} has no face for {label}")
        overlaps = box_iou(gt.boxes[i][None], np.stack([face.box for face in image.faces]))[0]
        best = int(np.argmax(overlaps))
        if overlaps[best] <= 0:
            raise DatasetError(f"{source}: no face of image {image.path!r} overlaps the box of {label}")
        face = image.faces[best]
        landmarks[i] = face.landmarks
        if face.headpose is not None:
            poses[i] = face.headpose
            has_pose[i] = True
    return Annotations(source=source, landmark_set=gt.landmark_set, paths=list(gt.paths),
                       boxes=gt.boxes.copy(), landmarks=landmarks,
                       annotated=np.ones((n, num_points), bool), visible=np.ones((n, num_points), bool),
                       headposes=poses if has_pose.all() else None)


# --------------------------------------------------------------------------- either format


def read_annotations(path: str | os.PathLike, landmark_set: LandmarkSet) -> Annotations:
    """Ground truth from SPIGA JSON (a list) or `spiga align` JSON (one entry per face)."""
    data = load_json(path)
    source = str(path)
    if isinstance(data, dict) and "images" in data:
        images = parse_align_images(data, landmark_set, source)
        faces = [(image.path, face) for image in images for face in image.faces]
        if not faces:
            raise DatasetError(f"{source}: the file has no faces")
        num_points = landmark_set.num_landmarks
        poses = [face.headpose for _, face in faces]
        return Annotations(
            source=source, landmark_set=landmark_set, paths=[p for p, _ in faces],
            boxes=np.stack([face.box for _, face in faces]),
            landmarks=np.stack([face.landmarks for _, face in faces]),
            annotated=np.ones((len(faces), num_points), bool), visible=np.ones((len(faces), num_points), bool),
            headposes=np.stack(poses) if all(p is not None for p in poses) else None)
    return parse_spiga_entries(data, landmark_set, source)


def read_predictions(path: str | os.PathLike, gt: Annotations) -> Annotations:
    """Predictions for the faces of `gt`, from SPIGA JSON (same order) or `spiga align` JSON.

    Raises:
        DatasetError: a different number of entries, an entry whose image differs from the
            annotation's, or a landmark annotated in `gt` but not predicted.
    """
    data = load_json(path)
    source = str(path)
    if isinstance(data, dict) and "images" in data:
        pred = align_to_predictions(parse_align_images(data, gt.landmark_set, source), gt, source)
    else:
        pred = parse_spiga_entries(data, gt.landmark_set, source)
        check_matches(gt, pred)
    return pred


def check_matches(gt: Annotations, pred: Annotations) -> None:
    """Check that `pred` follows `gt` entry for entry and predicts every annotated point."""
    if len(pred) != len(gt):
        raise DatasetError(f"{pred.source}: has {len(pred)} entries but {gt.source} has {len(gt)}; "
                           "predictions must follow the annotations one for one")
    for i, (gt_path, pred_path) in enumerate(zip(gt.paths, pred.paths)):
        if gt_path and pred_path and _path_parts(gt_path) != _path_parts(pred_path):
            raise DatasetError(f"{pred.source}: entry {i} is {pred_path!r} but entry {i} of {gt.source} "
                               f"is {gt_path!r}; predictions must be in the annotations' order")
    lacking = gt.annotated & ~pred.annotated
    if lacking.any():
        i, k = (int(v) for v in np.argwhere(lacking)[0])
        raise DatasetError(f"{pred.source}: entry {i} ({pred.paths[i]}): no prediction for landmark id "
                           f"{gt.landmark_set.ids[k]}, which {gt.source} annotates")
