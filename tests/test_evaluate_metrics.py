"""Benchmark metrics on hand-made cases whose figures follow from the definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spiga.errors import InputError
from spiga.evaluate import metrics as M
from spiga.landmarks import IBUG_68, WFLW_98


def _face(num_points: int, seed: int = 0) -> np.ndarray:
    """A (num_points, 2) set of points inside a 100 x 100 square."""
    return np.random.default_rng(seed).uniform(0, 100, (num_points, 2))


def _one(points: np.ndarray) -> np.ndarray:
    return points[None]


ALL_68 = np.ones((1, 68), bool)
BOX = np.array([[0.0, 0.0, 30.0, 40.0]])


# --------------------------------------------------------------------------- normalisations


def test_corners_68_uses_outer_eye_corners_36_and_45():
    gt = _face(68)
    gt[36], gt[45] = (10, 20), (40, 60)  # 50 px apart
    assert M.normalisation_distances(_one(gt), ALL_68, BOX, "corners", IBUG_68)[0] == pytest.approx(50.0)


def test_corners_wflw_uses_points_60_and_72():
    gt = _face(98)
    gt[60], gt[72] = (0, 0), (0, 25)
    d = M.normalisation_distances(_one(gt), np.ones((1, 98), bool), BOX, "corners", WFLW_98)
    assert d[0] == pytest.approx(25.0)


def test_pupils_is_the_distance_between_the_six_point_eye_centroids():
    gt = _face(68)
    ring = np.array([[-3, 0], [-1, -2], [1, -2], [3, 0], [1, 2], [-1, 2]], float)  # centred on 0
    gt[36:42] = ring + (20, 30)
    gt[42:48] = ring + (50, 70)
    d = M.normalisation_distances(_one(gt), ALL_68, BOX, "pupils", IBUG_68)
    assert d[0] == pytest.approx(50.0)


def test_pupils_is_for_68_point_layouts_only():
    with pytest.raises(InputError, match="six points per eye"):
        M.normalisation_distances(_one(_face(98)), np.ones((1, 98), bool), BOX, "pupils", WFLW_98)


def test_lnd_bbox_spans_only_the_annotated_points():
    gt = np.tile([50.0, 50.0], (68, 1))
    gt[0], gt[1] = (40, 10), (60, 90)  # annotated box 20 x 80 -> sqrt = 40
    gt[2] = (1000, 1000)               # not annotated: must not widen the box
    annotated = ALL_68.copy()
    annotated[0, 2] = False
    d = M.normalisation_distances(_one(gt), annotated, BOX, "lnd_bbox", IBUG_68)
    assert d[0] == pytest.approx(40.0)


@pytest.mark.parametrize("norm, expected", [("bbox", np.sqrt(16 * 25)), ("height", 25.0),
                                            ("diagonal", np.hypot(16, 25))])
def test_box_norms(norm, expected):
    box = np.array([[5.0, 7.0, 16.0, 25.0]])
    assert M.normalisation_distances(_one(_face(68)), ALL_68, box, norm, IBUG_68)[0] == pytest.approx(expected)


def test_zero_distance_names_the_entry():
    gt = np.stack([_face(68, 1), _face(68, 2)])
    gt[1, 45] = gt[1, 36]
    with pytest.raises(InputError, match="entry 1"):
        M.normalisation_distances(gt, np.ones((2, 68), bool), np.repeat(BOX, 2, 0), "corners", IBUG_68)


def test_corners_not_annotated_names_the_entry():
    annotated = np.ones((3, 68), bool)
    annotated[2, 45] = False
    with pytest.raises(InputError, match="entry 2"):
        M.normalisation_distances(np.stack([_face(68)] * 3), annotated, np.repeat(BOX, 3, 0), "corners", IBUG_68)


def test_unknown_norm():
    with pytest.raises(InputError, match="unknown normalisation"):
        M.normalisation_distances(_one(_face(68)), ALL_68, BOX, "ears", IBUG_68)


# --------------------------------------------------------------------------- per image


def test_shift_of_a_tenth_of_the_corner_distance_gives_nme_10():
    gt = _face(68)
    gt[36], gt[45] = (0, 0), (30, 40)  # d = 50
    pred = gt + (3.0, 4.0)             # every point 5 px off
    d = M.normalisation_distances(_one(gt), ALL_68, BOX, "corners", IBUG_68)
    errors = M.landmark_errors(_one(gt), _one(pred), ALL_68, d)
    np.testing.assert_allclose(errors, 10.0)
    assert M.image_nme(errors)[0] == pytest.approx(10.0)


def test_unannotated_points_are_nan_and_left_out_of_the_mean():
    gt = np.zeros((1, 68, 2))
    pred = np.zeros((1, 68, 2))
    pred[0, :34] = (1.0, 0.0)    # annotated, error 1 px
    pred[0, 34:] = (99.0, 0.0)   # not annotated: whatever is predicted does not count
    annotated = np.zeros((1, 68), bool)
    annotated[0, :34] = True
    errors = M.landmark_errors(gt, pred, annotated, np.array([10.0]))
    assert np.isnan(errors[0, 34:]).all()
    assert M.image_nme(errors)[0] == pytest.approx(10.0)


def test_merlrav_convention_divides_the_sum_by_68():
    errors = np.full((1, 68), np.nan)
    errors[0, :34] = 10.0  # half the points annotated, each 10 %
    assert M.image_nme(errors)[0] == pytest.approx(10.0)
    assert M.image_nme(errors, divide_by=68)[0] == pytest.approx(5.0)


def test_merlrav_convention_in_the_report():
    gt = np.zeros((1, 68, 2))
    gt[0, :, 0] = np.arange(68.0)
    gt[0, :, 1] = np.arange(68.0)
    annotated = np.zeros((1, 68), bool)
    annotated[0, ::2] = True  # 34 points, spanning 66 x 66 -> lnd_bbox 66
    pred = gt + (6.6, 0.0)    # each 10 % off
    args = (gt, pred, annotated, BOX, IBUG_68, "lnd_bbox", 7.0)
    assert M.landmark_report(*args).overall.nme == pytest.approx(10.0)
    assert M.landmark_report(*args, merlrav_convention=True).overall.nme == pytest.approx(5.0)


def test_image_with_nothing_annotated_is_an_error():
    errors = np.full((2, 68), np.nan)
    errors[0] = 1.0
    with pytest.raises(InputError, match="entry 1"):
        M.image_nme(errors)


# --------------------------------------------------------------------------- dataset figures


def test_failure_rate_counts_images_strictly_above_the_threshold():
    assert M.failure_rate(np.array([1.0, 2.0, 8.0, 9.0]), 8.0) == pytest.approx(25.0)


def test_all_perfect_set():
    nme = np.zeros(10)
    assert M.failure_rate(nme, 8) == 0.0
    assert M.auc(nme, 8) == pytest.approx(100.0)


def test_all_failed_set():
    nme = np.array([8.5, 12.0, 40.0])
    assert M.failure_rate(nme, 8) == 100.0
    assert M.auc(nme, 8) == 0.0


def test_auc_of_a_two_step_ced():
    # Half the images at 0, half at t/2: the CED is 0.5 on [0, t/2) and 1 on [t/2, t],
    # so the area is 0.5 * t/2 + t/2 = 0.75 t.
    assert M.auc(np.array([0.0, 0.0, 4.0, 4.0]), 8.0) == pytest.approx(75.0)


def test_auc_matches_a_numeric_integral_of_the_ced():
    nme = np.random.default_rng(3).gamma(3.0, 1.2, 200)
    threshold = 7.0
    errors, fractions = M.ced(nme)
    grid = np.linspace(0, threshold, 200_001)
    curve = fractions[np.searchsorted(errors, grid, side="right") - 1]
    numeric = np.trapezoid(curve, grid) / threshold * 100
    assert M.auc(nme, threshold) == pytest.approx(numeric, abs=1e-2)


def test_ced_is_a_step_curve_from_zero_to_one():
    errors, fractions = M.ced(np.array([3.0, 1.0, 2.0]))
    np.testing.assert_allclose(errors, [0, 1, 2, 3])
    np.testing.assert_allclose(fractions, [0, 1 / 3, 2 / 3, 1])


def test_percentiles_interpolate_linearly():
    p = M.nme_percentiles(np.arange(1.0, 102.0))  # 1 .. 101
    assert p == {90: pytest.approx(91.0), 95: pytest.approx(96.0), 99: pytest.approx(100.0)}


def test_empty_set_is_an_error():
    with pytest.raises(InputError):
        M.summarize_nme(np.array([]), 8)


def test_per_landmark_error_ignores_unannotated_and_marks_never_annotated():
    errors = np.array([[1.0, np.nan, np.nan], [3.0, 5.0, np.nan]])
    out = M.per_landmark_error(errors)
    np.testing.assert_allclose(out[:2], [2.0, 5.0])
    assert np.isnan(out[2])


def test_subsets_are_scored_on_their_images():
    gt = np.stack([_face(68, k) for k in range(4)])
    for k in range(4):
        gt[k, 36], gt[k, 45] = (0, 0), (0, 10)
    shifts = np.array([0.1, 0.2, 0.9, 1.2])  # NME 1, 2, 9, 12 %
    pred = gt + np.stack([shifts, np.zeros(4)], 1)[:, None, :]
    report = M.landmark_report(gt, pred, np.ones((4, 68), bool), np.repeat(BOX, 4, 0), IBUG_68, "corners", 8.0,
                               subsets={"easy": [0, 1], "hard": [2, 3]})
    np.testing.assert_allclose(report.nme_per_image, [1, 2, 9, 12])
    assert report.overall.fr == pytest.approx(50.0)
    assert report.subsets["easy"].nme == pytest.approx(1.5) and report.subsets["easy"].fr == 0.0
    assert report.subsets["hard"].fr == 100.0 and report.subsets["hard"].auc == 0.0
    assert set(report.curves()) == {"all", "easy", "hard"}
    with pytest.raises(InputError, match="subset 'bad'"):
        M.landmark_report(gt, pred, np.ones((4, 68), bool), np.repeat(BOX, 4, 0), IBUG_68, "corners", 8.0,
                          subsets={"bad": [4]})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 50), min_size=1, max_size=30), st.floats(0.5, 20))
def test_auc_and_fr_bounds(values, threshold):
    nme = np.array(values)
    a, fr = M.auc(nme, threshold), M.failure_rate(nme, threshold)
    assert 0.0 <= a <= 100.0 and 0.0 <= fr <= 100.0
    # Failed images contribute nothing to the area, so AUC <= the share that did not fail.
    assert a <= 100.0 - fr + 1e-9
    assert M.auc(nme, threshold * 2) >= a - 1e-9


# --------------------------------------------------------------------------- head pose


def test_headpose_mae_and_success_rates():
    gt = np.zeros((4, 6))
    pred = np.zeros((4, 6))
    pred[:, 0] = [1.0, -3.0, 6.0, 20.0]   # yaw errors 1, 3, 6, 20
    pred[:, 1] = [2.5, 2.5, 2.5, 2.5]     # pitch errors all exactly 2.5
    pred[:, 3:] = 99.0                    # translations are not angles
    report = M.headpose_report(gt, pred)
    assert report.mae == {"yaw": pytest.approx(7.5), "pitch": pytest.approx(2.5), "roll": 0.0}
    assert report.mae_mean == pytest.approx(10.0 / 3)
    assert report.success_rates["yaw"] == {2.5: 0.25, 5.0: 0.5, 10.0: 0.75, 15.0: 0.75, 30.0: 1.0}
    assert report.success_rates["pitch"][2.5] == 1.0  # "at most" the threshold
    assert report.success_rates["roll"][2.5] == 1.0
