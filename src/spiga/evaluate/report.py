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
                      NMESummary, headpose_report, landmark_report)


@dataclass(frozen=True)
class Scoring:
    """How a dataset is scored: normalisation, threshold, and the MERLRAV convention."""

    norm: str
    threshold: float
    merlrav_convention: bool = False


def resolve_scoring(config: str, norm: str | None = None, threshold: float | None = None,
                    db_info: DbInfo | None = None) -> Scoring:
    """The scoring of `config`, with the user's norm and threshold where given.

    Without a threshold: the config's default when the norm is its default, else the one
    `db_info` lists for that norm.

    Raises:
        InputError: an unknown config or norm, a non-positive threshold, or a norm with no
            known threshold.
    """
    if config not in DATASET_DEFAULTS:
        raise InputError(f"unknown configuration {config!r}; known: {', '.join(sorted(DATASET_DEFAULTS))}")
    defaults = DATASET_DEFAULTS[config]
    norm = norm or defaults.norm
    if norm not in NORMS:
        raise InputError(f"unknown normalisation {norm!r}; known: {', '.join(NORMS)}")
    eyes = landmark_set_for(config).eyes
    if norm == "pupils" and (eyes is None or any(len(eye) != 6 for eye in eyes)):
        raise InputError(f"the 'pupils' norm is defined for 68-point layouts only, not for {config!r}")
    if threshold is None:
        if norm == defaults.norm:
            threshold = defaults.threshold
        elif db_info is not None and norm in db_info.norms:
            threshold = db_info.norms[norm]
        else:
            raise InputError(f"no default threshold for norm {norm!r} on {config!r}; give one (--threshold)")
    if not (math.isfinite(threshold) and threshold > 0):
        raise InputError(f"the threshold must be a positive number, not {threshold}")
    return Scoring(norm=norm, threshold=float(threshold), merlrav_convention=defaults.merlrav_convention)


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
