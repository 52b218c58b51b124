"""Benchmark metrics of face alignment and head pose: pure functions on arrays.

Shapes used throughout (N images, L landmarks of the layout):
    gt, pred   (N, L, 2) float, image pixels
    annotated  (N, L) bool: which ground-truth landmarks exist (MERLRAV leaves some out)
    boxes      (N, 4) float, annotation boxes (x, y, w, h)
    errors     (N, L) float, normalised errors in percent, NaN where not annotated
    nme        (N,) float, normalised mean error of each image in percent

The dataset figures follow the published SPIGA benchmark numbers: NME is the mean of the
per-image NMEs, the failure rate FR@t is the percentage of images whose NME exceeds t, and
AUC@t is the area under the cumulative error distribution (CED) between 0 and t divided by t.
We integrate the CED exactly: for a step curve the area is the mean of max(0, t - nme_i),
so AUC@t = 100 * mean(clip(1 - nme / t, 0, 1)). (The original evaluator integrated a
10000-bin histogram with Simpson's rule; the two agree to a few hundredths of a percent.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .. import choices
from ..errors import InputError
from ..landmarks import LandmarkSet

#: The normalisations an NME can use.
NORMS = choices.NORMS
#: NME percentiles reported for every dataset.
PERCENTILES = (90, 95, 99)
#: Angles (degrees) at which the head-pose success rate is reported.
HEADPOSE_THRESHOLDS = (2.5, 5.0, 10.0, 15.0, 30.0)
ANGLE_NAMES = ("yaw", "pitch", "roll")


@dataclass(frozen=True)
class DatasetDefaults:
    """How a benchmark is scored by default.

    Attributes:
        norm: the NME normalisation (one of `NORMS`).
        threshold: the FR/AUC threshold, in percent of the normalisation distance.
        merlrav_convention: divide each image's error sum by the layout size (68) instead
            of by the number of annotated landmarks, as LUVLI did on MERLRAV.
    """

    norm: str
    threshold: float
    merlrav_convention: bool = False


#: Default scoring of the official benchmarks (the figures the SPIGA paper reports).
DATASET_DEFAULTS: dict[str, DatasetDefaults] = {
    "wflw": DatasetDefaults("corners", 10.0),
    "300wpublic": DatasetDefaults("corners", 8.0),
    "300wprivate": DatasetDefaults("lnd_bbox", 7.0),
    "cofw68": DatasetDefaults("lnd_bbox", 7.0),
    "merlrav": DatasetDefaults("lnd_bbox", 7.0, merlrav_convention=True),
}


# --------------------------------------------------------------------------- per image


def norm_points(norm: str, landmark_set: LandmarkSet) -> tuple[int, ...]:
    """The landmark rows a normalisation measures (empty for the box-based ones).

    Raises:
        InputError: the layout lacks the points the norm needs.
    """
    if norm == "corners":
        if landmark_set.eye_corners is None:
            raise InputError(f"layout {landmark_set.name!r} defines no eye corners for the 'corners' norm")
        return tuple(landmark_set.eye_corners)
    if norm == "pupils":
        eyes = landmark_set.eyes
        if eyes is None or any(len(eye) != 6 for eye in eyes):
            raise InputError(f"the 'pupils' norm uses six points per eye (68-point layouts); "
                             f"layout {landmark_set.name!r} has none such")
        return (*eyes[0], *eyes[1])
    return ()


def lacking_norm_points(annotated: np.ndarray, norm: str, landmark_set: LandmarkSet) -> np.ndarray:
    """(N,) bool: the faces that do not annotate every point `norm` measures."""
    rows = list(norm_points(norm, landmark_set))
    annotated = np.asarray(annotated, bool)
    return ~annotated[:, rows].all(axis=1) if rows else np.zeros(len(annotated), bool)


def _require_annotated(annotated: np.ndarray, norm: str, landmark_set: LandmarkSet) -> None:
    missing = lacking_norm_points(annotated, norm, landmark_set)
    if missing.any():
        shown = ", ".join(str(int(i)) for i in np.flatnonzero(missing)[:5])
        ids = [landmark_set.ids[k] for k in norm_points(norm, landmark_set)]
        raise InputError(f"the {norm!r} normalisation needs landmark ids {ids}, which {int(missing.sum())} of "
                         f"{len(missing)} entries do not all annotate (entr{'y' if missing.sum() == 1 else 'ies'} {shown}"
                         f"{', ...' if missing.sum() > 5 else ''})")


def normalisation_distances(gt: np.ndarray, annotated: np.ndarray, boxes: np.ndarray, norm: str,
                            landmark_set: LandmarkSet) -> np.ndarray:
    """The distance d each image's errors are divided by, shape (N,).

    Args:
        gt: (N, L, 2) ground-truth landmarks.
        annotated: (N, L) which ground-truth landmarks exist.
        boxes: (N, 4) annotation boxes (x, y, w, h).
        norm: `corners` (outer eye corners), `pupils` (centroids of the two six-point
            eyes; 68-point layouts), `lnd_bbox` (sqrt(w*h) of the annotated landmarks'
            bounding box), `bbox` (sqrt(w*h) of the box), `height` (box height),
            `diagonal` (box diagonal).
        landmark_set: the layout, which says where the eye corners and eyes are.

    Raises:
        InputError: an unknown norm, landmarks the norm needs that are not annotated,
            or a zero distance (the message names the first bad entry).
    """
    gt = np.asarray(gt, np.float64)
    boxes = np.asarray(boxes, np.float64)
    annotated = np.asarray(annotated, bool)
    if norm in ("corners", "pupils"):
        _require_annotated(annotated, norm, landmark_set)
        if norm == "corners":
            right, left = norm_points(norm, landmark_set)
            dist = np.linalg.norm(gt[:, right] - gt[:, left], axis=-1)
        else:
            centres = [gt[:, list(eye)].mean(axis=1) for eye in landmark_set.eyes]
            dist = np.linalg.norm(centres[0] - centres[1], axis=-1)
    elif norm == "lnd_bbox":
        # Only the annotated points span the box: masked-out points must not widen it.
        masked = np.where(annotated[..., None], gt, np.nan)
        with warnings.catch_warnings():
            # An entry with nothing annotated gives an all-NaN slice; it is reported below.
            warnings.simplefilter("ignore", RuntimeWarning)
            size = np.nanmax(masked, axis=1) - np.nanmin(masked, axis=1)
        dist = np.sqrt(size[:, 0] * size[:, 1])
    elif norm == "bbox":
        dist = np.sqrt(boxes[:, 2] * boxes[:, 3])
    elif norm == "height":
        dist = boxes[:, 3].copy()
    elif norm == "diagonal":
        dist = np.hypot(boxes[:, 2], boxes[:, 3])
    else:
        raise InputError(f"unknown normalisation {norm!r}; known: {', '.join(NORMS)}")
    bad = ~(np.isfinite(dist) & (dist > 0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(f"entry {first}: the {norm!r} normalisation distance is {dist[first]:g}; "
                         "it must be positive")
    return dist


def landmark_errors(gt: np.ndarray, pred: np.ndarray, annotated: np.ndarray,
                    distances: np.ndarray) -> np.ndarray:
    """Normalised point errors ||pred_i - gt_i|| / d * 100, shape (N, L), NaN where not annotated."""
    err = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)
    err = err / np.asarray(distances, np.float64)[:, None] * 100.0
    return np.where(np.asarray(annotated, bool), err, np.nan)


def image_nme(errors: np.ndarray, divide_by: int | None = None) -> np.ndarray:
    """NME of each image, shape (N,), from errors (N, L) that are NaN where not annotated.

    With `divide_by=None` the mean over the annotated landmarks; with an integer, the sum
    divided by it whatever the number annotated (the MERLRAV convention divides by 68).
    """
    errors = np.asarray(errors, np.float64)
    counts = np.isfinite(errors).sum(axis=1)
    if (counts == 0).any():
        first = int(np.flatnonzero(counts == 0)[0])
        raise InputError(f"entry {first}: no annotated landmarks to score")
    total = np.nansum(errors, axis=1)
    return total / (counts if divide_by is None else float(divide_by))


# --------------------------------------------------------------------------- dataset figures


def _as_nme(nme: np.ndarray) -> np.ndarray:
    nme = np.asarray(nme, np.float64).reshape(-1)
    if nme.size == 0:
        raise InputError("no images to score")
    return nme


def failure_rate(nme: np.ndarray, threshold: float) -> float:
    """FR@t: percentage of images whose NME is above `threshold`."""
    return float(np.mean(_as_nme(nme) > threshold) * 100.0)


def auc(nme: np.ndarray, threshold: float) -> float:
    """AUC@t: area under the CED from 0 to `threshold`, divided by `threshold`, in percent.

    The CED is the step function F(e) = fraction of images with NME <= e, whose exact area
    on [0, t] is mean(max(0, t - nme_i)).
    """
    if threshold <= 0:
        raise InputError(f"the AUC threshold must be positive, not {threshold}")
    return float(np.mean(np.clip(1.0 - _as_nme(nme) / threshold, 0.0, 1.0)) * 100.0)


def ced(nme: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative error distribution as a step curve, for plotting.

    Returns:
        errors (M,) and fractions (M,): F(errors[k]) = fractions[k], starting at (0, 0) and
        rising at each sorted image NME (plot with `drawstyle="steps-post"`).
    """
    sorted_nme = np.sort(_as_nme(nme))
    fractions = np.arange(1, sorted_nme.size + 1) / sorted_nme.size
    return np.concatenate([[0.0], sorted_nme]), np.concatenate([[0.0], fractions])


def nme_percentiles(nme: np.ndarray, percentiles: Sequence[float] = PERCENTILES) -> dict[float, float]:
    """Percentiles of the image NMEs (linear interpolation, as numpy's default)."""
    values = np.percentile(_as_nme(nme), list(percentiles))
    return {p: float(v) for p, v in zip(percentiles, values)}


def per_landmark_error(errors: np.ndarray) -> np.ndarray:
    """Mean normalised error of each landmark over the images annotating it, (L,); NaN if none."""
    errors = np.asarray(errors, np.float64)
    counts = np.isfinite(errors).sum(axis=0)
    sums = np.nansum(errors, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@dataclass(frozen=True)
class NMESummary:
    """Figures of a set of image NMEs at one threshold (all in percent)."""

    num_images: int
    nme: float
    percentiles: dict[float, float]
    auc: float
    fr: float


def summarize_nme(nme: np.ndarray, threshold: float,
                  percentiles: Sequence[float] = PERCENTILES) -> NMESummary:
    """NME, its percentiles, AUC@threshold and FR@threshold of image NMEs (N,)."""
    nme = _as_nme(nme)
    return NMESummary(num_images=int(nme.size), nme=float(nme.mean()),
                      percentiles=nme_percentiles(nme, percentiles),
                      auc=auc(nme, threshold), fr=failure_rate(nme, threshold))


@dataclass
class LandmarkReport:
    """Landmark figures of a dataset.

    Attributes:
        norm, threshold: the scoring used.
        overall: figures over all images.
        subsets: figures per named subset of image indices.
        per_landmark: (L,) mean normalised error of each landmark (NaN where never annotated).
        nme_per_image: (N,) image NMEs (for CED plots).
        subset_indices: the image indices of each subset.
    """

    norm: str
    threshold: float
    overall: NMESummary
    subsets: dict[str, NMESummary] = field(default_factory=dict)
    per_landmark: np.ndarray | None = None
    nme_per_image: np.ndarray | None = None
    subset_indices: dict[str, np.ndarray] = field(default_factory=dict)

    def curves(self) -> dict[str, np.ndarray]:
        """Image NMEs of all images and of each subset, for CED plots."""
        curves = {"all": self.nme_per_image}
        curves.update({name: self.nme_per_image[idx] for name, idx in self.subset_indices.items()})
        return curves


def landmark_report(gt: np.ndarray, pred: np.ndarray, annotated: np.ndarray, boxes: np.ndarray,
                    landmark_set: LandmarkSet, norm: str, threshold: float,
                    subsets: Mapping[str, Sequence[int]] | None = None,
                    merlrav_convention: bool = False) -> LandmarkReport:
    """All landmark figures of a dataset.

    Args:
        gt: (N, L, 2) ground-truth landmarks (see the module docstring).
        pred: (N, L, 2) predicted landmarks.
        annotated: (N, L) which ground-truth points exist.
        boxes: (N, 4) annotation boxes.
        landmark_set: the layout (its normalisation landmarks).
        norm: the normalisation.
        threshold: the FR/AUC threshold in percent.
        subsets: name -> image indices (the test subsets of a db_info.json).
        merlrav_convention: divide each image's error sum by L instead of the annotated count.
    """
    distances = normalisation_distances(gt, annotated, boxes, norm, landmark_set)
    errors = landmark_errors(gt, pred, annotated, distances)
    nme = image_nme(errors, landmark_set.num_landmarks if merlrav_convention else None)
    report = LandmarkReport(norm=norm, threshold=float(threshold),
                            overall=summarize_nme(nme, threshold),
                            per_landmark=per_landmark_error(errors), nme_per_image=nme)
    for name, indices in (subsets or {}).items():
        indices = np.asarray(list(indices), dtype=np.int64)
        if indices.size == 0:
            continue
        if indices.min() < 0 or indices.max() >= nme.size:
            raise InputError(f"subset {name!r} refers to image {int(indices.max())}, "
                             f"but there are {nme.size} images")
        report.subsets[name] = summarize_nme(nme[indices], threshold)
        report.subset_indices[name] = indices
    return report


# --------------------------------------------------------------------------- head pose


def headpose_errors(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Absolute angle errors (N, 3) in degrees of (yaw, pitch, roll) arrays (N, >=3)."""
    gt = np.asarray(gt, np.float64)[:, :3]
    pred = np.asarray(pred, np.float64)[:, :3]
    return np.abs(pred - gt)


@dataclass(frozen=True)
class HeadposeReport:
    """Head-pose figures: per-angle mean absolute error (degrees) and success rates.

    `success_rates[angle][t]` is the fraction (0..1) of images whose error of that angle
    is at most t degrees.
    """

    mae: dict[str, float]
    mae_mean: float
    success_rates: dict[str, dict[float, float]]


def headpose_report(gt: np.ndarray, pred: np.ndarray,
                    thresholds: Sequence[float] = HEADPOSE_THRESHOLDS) -> HeadposeReport:
    """MAE of yaw, pitch, roll, their mean, and success rates, from (N, >=3) pose arrays."""
    errors = headpose_errors(gt, pred)
    if errors.shape[0] == 0:
        raise InputError("no head poses to score")
    mae = errors.mean(axis=0)
    return HeadposeReport(
        mae={name: float(v) for name, v in zip(ANGLE_NAMES, mae)},
        mae_mean=float(mae.mean()),
        success_rates={name: {float(t): float(np.mean(errors[:, k] <= t)) for t in thresholds}
                       for k, name in enumerate(ANGLE_NAMES)},
    )
