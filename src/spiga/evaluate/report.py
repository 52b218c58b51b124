"""Evaluation of predictions against ground truth: scoring choice, figures, JSON and table."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import DatasetError, InputError
from ..landmarks import LandmarkSet, landmark_set_for
from .formats import Annotations, DbInfo, read_annotations, read_db_info, read_predictions
from .metrics import (ANGLE_NAMES, DATASET_DEFAULTS, NORMS, PERCENTILES, HeadposeReport, LandmarkReport,
                      NMESummary, headpose_report, lacking_norm_points, landmark_report, norm_points)


@dataclass(frozen=True)
class Scoring:
    """How a dataset is scored: normalisation, threshold, and the MERLRAV convention."""

    norm: str
    threshold: float
    merlrav_convention: bool = False


def resolve_scoring(config: str, norm: str | None = None, threshold: float | None = None,
                    db_info: DbInfo | None = None, threshold_option: str = "--threshold") -> Scoring:
    """The scoring of `config`, with the user's norm and threshold where given.

    Without a norm: the first one `db_info` lists (as the original evaluator chose), else
    the config's. Without a threshold: the one `db_info` lists for the norm, else the
    config's when the norm is its default.

    Raises:
        InputError: an unknown config or norm, a non-positive threshold, or a norm with no
            known threshold.
    """
    if config not in DATASET_DEFAULTS:
        raise InputError(f"unknown configuration {config!r}; known: {', '.join(sorted(DATASET_DEFAULTS))}")
    defaults = DATASET_DEFAULTS[config]
    listed = db_info.norms if db_info is not None else {}
    norm = norm or next(iter(listed), None) or defaults.norm
    if norm not in NORMS:
        source = f"{db_info.source}: " if db_info is not None and norm in listed else ""
        raise InputError(f"{source}unknown normalisation {norm!r}; known: {', '.join(NORMS)}")
    eyes = landmark_set_for(config).eyes
    if norm == "pupils" and (eyes is None or any(len(eye) != 6 for eye in eyes)):
        raise InputError(f"the 'pupils' norm is defined for 68-point layouts only, not for {config!r}")
    if threshold is None:
        if norm in listed:
            threshold = listed[norm]
        elif norm == defaults.norm:
            threshold = defaults.threshold
        else:
            raise InputError(f"no default threshold for norm {norm!r} on {config!r}; give one ({threshold_option})")
    if not (math.isfinite(threshold) and threshold > 0):
        raise InputError(f"the threshold must be a positive number, not {threshold}")
    return Scoring(norm=norm, threshold=float(threshold), merlrav_convention=defaults.merlrav_convention)


#: The benchmark whose scoring a training format's validation set takes by default.
FORMAT_BENCHMARKS = {"wflw": "wflw", "300w": "300wpublic", "cofw68": "cofw68", "merlrav": "merlrav"}
#: The benchmark of a layout read from a format that names none (SPIGA JSON, custom):
#: 68-point files are scored as 300W private (the landmark box, which faces without
#: eye corners allow), 98-point ones as WFLW.
LAYOUT_BENCHMARKS = ("300wprivate", "wflw")
#: The scoring of a layout no benchmark uses: the landmark box at 7 %, which every face
#: with two annotated points allows (as 300W private, COFW68 and MERLRAV are scored).
LAYOUT_FREE_SCORING = Scoring("lnd_bbox", 7.0)


def benchmark_of(fmt: str, landmark_set: LandmarkSet) -> str | None:
    """The benchmark (`DATASET_DEFAULTS` key) a data set of format `fmt` is scored as, or None."""
    if fmt in FORMAT_BENCHMARKS:
        return FORMAT_BENCHMARKS[fmt]
    for config in LAYOUT_BENCHMARKS:
        if tuple(landmark_set.ids) == tuple(landmark_set_for(config).ids):
            return config
    return None


def scoring_for(config: str | None, norm: str | None = None, threshold: float | None = None,
                threshold_option: str = "--threshold") -> Scoring:
    """`resolve_scoring` for a benchmark config, or for none (`LAYOUT_FREE_SCORING`)."""
    if config is not None:
        return resolve_scoring(config, norm, threshold, threshold_option=threshold_option)
    norm = norm or LAYOUT_FREE_SCORING.norm
    if norm not in NORMS:
        raise InputError(f"unknown normalisation {norm!r}; known: {', '.join(NORMS)}")
    if threshold is None and norm != LAYOUT_FREE_SCORING.norm:
        raise InputError(f"no default threshold for norm {norm!r} on a layout of no benchmark; "
                         f"give one ({threshold_option})")
    threshold = LAYOUT_FREE_SCORING.threshold if threshold is None else threshold
    if not (math.isfinite(threshold) and threshold > 0):
        raise InputError(f"the threshold must be a positive number, not {threshold}")
    return Scoring(norm, float(threshold))


def check_norm_applies(gt: Annotations, norm: str, hint: str = "--norm") -> None:
    """Refuse, in one line naming the faces, a norm that needs points some faces lack.

    Raises:
        DatasetError: naming the file (or data set), the first faces and how many.
    """
    try:
        lacking = np.flatnonzero(lacking_norm_points(gt.annotated, norm, gt.landmark_set))
    except InputError as exc:
        raise DatasetError(f"{gt.source}: {exc}") from None
    if lacking.size:
        ids = [gt.landmark_set.ids[k] for k in norm_points(norm, gt.landmark_set)]
        shown = "; ".join(gt.label(int(i)) for i in lacking[:3])
        raise DatasetError(f"{gt.source}: the {norm!r} normalisation needs landmark ids {ids}, which "
                           f"{lacking.size} of {len(gt)} faces do not annotate ({shown}"
                           f"{'; ...' if lacking.size > 3 else ''}); choose another with {hint}")


@dataclass
class EvaluationReport:
    """Figures of one set of predictions; `headpose` is None when either file lacks poses."""

    config: str
    landmark_set: LandmarkSet
    landmarks: LandmarkReport
    headpose: HeadposeReport | None = None

    def to_dict(self) -> dict:
        """The JSON written by `spiga evaluate --json` (see the documentation: Evaluation)."""
        report = self.landmarks
        landmarks = {"norm": report.norm, "threshold": report.threshold, **_summary_dict(report.overall)}
        if report.subsets:
            landmarks["subsets"] = {name: _summary_dict(s) for name, s in report.subsets.items()}
        if report.per_landmark is not None:
            landmarks["nme_per_landmark"] = {str(point_id): _float_or_none(v)
                                             for point_id, v in zip(self.landmark_set.ids, report.per_landmark)}
        out = {"landmarks": landmarks}
        if self.headpose is not None:
            pose = self.headpose
            out["headpose"] = {**{f"mae_{name}": pose.mae[name] for name in ANGLE_NAMES},
                               "mae_mean": pose.mae_mean,
                               "success_rate": {name: {f"{t:g}": v for t, v in rates.items()}
                                                for name, rates in pose.success_rates.items()}}
        return out


def _float_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _summary_dict(summary: NMESummary) -> dict:
    return {"nme": summary.nme,
            **{f"nme_p{p:g}": v for p, v in summary.percentiles.items()},
            "auc": summary.auc, "fr": summary.fr, "num_images": summary.num_images}


def evaluate(gt: Annotations, pred: Annotations, config: str, scoring: Scoring,
             subsets: dict[str, list[int]] | None = None) -> EvaluationReport:
    """Score `pred` against `gt` (same faces, same order).

    Raises:
        DatasetError: a problem of the data (a norm's points not annotated, a zero
            normalisation distance, a subset index past the end), naming the file.
    """
    check_norm_applies(gt, scoring.norm)
    try:
        landmarks = landmark_report(gt.landmarks, pred.landmarks, gt.annotated, gt.boxes, gt.landmark_set,
                                    scoring.norm, scoring.threshold, subsets=subsets,
                                    merlrav_convention=scoring.merlrav_convention)
    except InputError as exc:
        raise DatasetError(f"{gt.source}: {exc}") from None
    headpose = None
    if gt.headposes is not None and pred.headposes is not None:
        headpose = headpose_report(gt.headposes, pred.headposes)
    return EvaluationReport(config=config, landmark_set=gt.landmark_set, landmarks=landmarks, headpose=headpose)


def evaluate_files(annotations: str | os.PathLike, predictions: str | os.PathLike, config: str,
                   db_info: str | os.PathLike | None = None, norm: str | None = None,
                   threshold: float | None = None) -> EvaluationReport:
    """Read ground truth, predictions (SPIGA or `spiga align` JSON) and db_info, and score."""
    landmark_set = landmark_set_for(config)
    info = read_db_info(db_info) if db_info is not None else None
    scoring = resolve_scoring(config, norm, threshold, info)
    gt = read_annotations(annotations, landmark_set)
    pred = read_predictions(predictions, gt)
    subsets = info.test_subsets if info is not None else None
    if info is not None:
        for name, indices in info.test_subsets.items():
            if indices and max(indices) >= len(gt):
                raise DatasetError(f"{info.source}: test subset {name!r} refers to image {max(indices)}, "
                                   f"but {gt.source} has {len(gt)} entries")
    return evaluate(gt, pred, config, scoring, subsets)


def format_report(report: EvaluationReport) -> str:
    """A readable table of the figures (what `spiga evaluate` prints)."""
    lm = report.landmarks
    t = f"{lm.threshold:g}"
    lines = [f"Landmarks: {report.config}, {lm.overall.num_images} faces, "
             f"norm {lm.norm}, threshold {t}"]
    header = (f"  {'subset':<14}{'faces':>7}{'NME':>9}"
              + "".join(f"{f'P{p}':>9}" for p in PERCENTILES) + f"{f'AUC@{t}':>10}{f'FR@{t}':>9}")
    lines.append(header)
    for name, summary in [("all", lm.overall), *lm.subsets.items()]:
        lines.append(f"  {name:<14}{summary.num_images:>7}{summary.nme:>9.4f}"
                     + "".join(f"{summary.percentiles[p]:>9.4f}" for p in PERCENTILES)
                     + f"{summary.auc:>10.4f}{summary.fr:>9.4f}")
    if report.headpose is not None:
        pose = report.headpose
        thresholds = list(next(iter(pose.success_rates.values())))
        lines.append("Head pose (degrees; success rate in % of faces within each error)")
        lines.append(f"  {'angle':<8}{'MAE':>9}" + "".join(f"{f'<={a:g}':>8}" for a in thresholds))
        for name in ANGLE_NAMES:
            lines.append(f"  {name:<8}{pose.mae[name]:>9.4f}"
                         + "".join(f"{pose.success_rates[name][a] * 100:>8.2f}" for a in thresholds))
        lines.append(f"  {'mean':<8}{pose.mae_mean:>9.4f}")
    return "\n".join(lines)
