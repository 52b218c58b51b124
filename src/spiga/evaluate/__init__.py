"""Evaluation: benchmark metrics (NME, AUC, FR, head-pose MAE), file formats, CED plots.

`metrics` holds pure numpy functions, the one metric of the project (`spiga evaluate`,
`spiga benchmark`, training's validation and the speed scripts use it); `formats` reads
and writes the original SPIGA JSON (through the one reader of the format, training's),
its db_info.json and `spiga align` JSON; `report` ties them together; `benchmark` runs an
aligner over a test set; `plots` draws CED curves (matplotlib, imported on use).
"""

from .benchmark import CropPredictor, TestSet, load_test_set, predict_test_set, run_benchmark
from .formats import (Annotations, DbInfo, annotations_from_samples, read_align_json, read_annotations, read_db_info,
                      read_predictions, read_spiga_json, write_spiga_json)
from .metrics import (DATASET_DEFAULTS, HEADPOSE_THRESHOLDS, NORMS, HeadposeReport, LandmarkReport, NMESummary,
                      auc, ced, failure_rate, headpose_errors, headpose_report, image_nme, landmark_errors,
                      lacking_norm_points, landmark_report, nme_percentiles, norm_points, normalisation_distances,
                      per_landmark_error, summarize_nme)
from .report import (EvaluationReport, Scoring, benchmark_of, check_norm_applies, evaluate, evaluate_files,
                     format_report, resolve_scoring, scoring_for)


def plot_ced(*args, **kwargs):
    """Draw CED curves; see `spiga.evaluate.plots.plot_ced` (needs matplotlib)."""
    from .plots import plot_ced as _plot_ced
    return _plot_ced(*args, **kwargs)


__all__ = [
    "Annotations", "CropPredictor", "DATASET_DEFAULTS", "DbInfo", "EvaluationReport", "HEADPOSE_THRESHOLDS",
    "HeadposeReport", "LandmarkReport", "NMESummary", "NORMS", "Scoring", "TestSet", "annotations_from_samples",
    "auc", "benchmark_of", "ced", "check_norm_applies", "evaluate", "evaluate_files", "failure_rate",
    "format_report", "headpose_errors", "headpose_report", "image_nme", "lacking_norm_points", "landmark_errors",
    "landmark_report", "load_test_set", "nme_percentiles", "norm_points", "normalisation_distances",
    "per_landmark_error", "plot_ced", "predict_test_set", "read_align_json", "read_annotations", "read_db_info",
    "read_predictions", "read_spiga_json", "resolve_scoring", "run_benchmark", "scoring_for", "summarize_nme",
    "write_spiga_json",
]
