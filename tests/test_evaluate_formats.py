"""Readers and writers of SPIGA JSON, db_info.json and `spiga align` JSON; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spiga.errors import DatasetError
from spiga.evaluate import formats as F
from spiga.landmarks import IBUG_68, WFLW_98

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)} (the project's shared fixtures), absent here")
    return path


def _entry(seed: int = 0, path: str = "images/a.jpg", headpose=True) -> dict:
    points = np.random.default_rng(seed).uniform(10, 90, (68, 2))
    entry = {"imgpath": path, "bbox": [5.0, 6.0, 90.0, 95.0], "ids": list(IBUG_68.ids),
             "landmarks": points.tolist(), "visible": [1.0] * 68}
    if headpose:
        entry["headpose"] = [1.0, -2.0, 3.0, 0.1, 0.2, 3.0]
    return entry


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- SPIGA JSON


def test_round_trip(tmp_path):
    entries = [_entry(0), _entry(1, "images/b.jpg")]
    entries[1]["visible"][3] = 0.0
    ann = F.read_spiga_json(_write(tmp_path / "gt.json", entries), IBUG_68)
    assert len(ann) == 2 and ann.paths == ["images/a.jpg", "images/b.jpg"]
    np.testing.assert_allclose(ann.landmarks[1], entries[1]["landmarks"])
    assert ann.annotated.all() and not ann.visible[1, 3] and ann.visible[0].all()
    np.testing.assert_allclose(ann.headposes[0], [1, -2, 3, 0.1, 0.2, 3])
    F.write_spiga_json(tmp_path / "out.json", ann)
    again = F.read_spiga_json(tmp_path / "out.json", IBUG_68)
    np.testing.assert_array_equal(again.landmarks, ann.landmarks)
    np.testing.assert_array_equal(again.visible, ann.visible)
    np.testing.assert_array_equal(again.boxes, ann.boxes)


def test_ids_place_points_in_the_layout(tmp_path):
    entry = _entry()
    # Only three points annotated, listed in an arbitrary order (as MERLRAV does).
    chosen = [45, 0, 36]
    entry["ids"] = [IBUG_68.ids[k] for k in chosen]
    entry["landmarks"] = [[float(k), 2.0 * k] for k in chosen]
    del entry["visible"]
    ann = F.read_spiga_json(_write(tmp_path / "gt.json", [entry]), IBUG_68)
    assert np.flatnonzero(ann.annotated[0]).tolist() == [0, 36, 45]
    np.testing.assert_allclose(ann.landmarks[0, 45], [45, 90])
    assert np.isnan(ann.landmarks[0, 1]).all()


def test_without_ids_an_entry_lists_the_whole_layout(tmp_path):
    entry = _entry()
    del entry["ids"]
    ann = F.read_spiga_json(_write(tmp_path / "gt.json", [entry]), IBUG_68)
    np.testing.assert_allclose(ann.landmarks[0], entry["landmarks"])
    entry["landmarks"] = entry["landmarks"][:60]
    entry["visible"] = entry["visible"][:60]
    with pytest.raises(DatasetError, match=r"entry 0: .*no 'ids'"):
        F.read_spiga_json(_write(tmp_path / "gt.json", [entry]), IBUG_68)


def test_null_points_are_not_annotated(tmp_path):
    """The fork's files write `[null, null]` for points a data set does not annotate; a NaN
    coordinate means the same. Both read as "not annotated", as training reads them."""
    entry = _entry()
    entry["landmarks"][7] = [None, None]
    entry["landmarks"][9][0] = float("nan")
    entry.pop("bbox")  # the annotated points' box, as in training
    ann = F.read_spiga_json(_write(tmp_path / "gt.json", [entry]), IBUG_68)
    assert np.flatnonzero(~ann.annotated[0]).tolist() == [7, 9]
    assert np.isnan(ann.landmarks[0, [7, 9]]).all() and not ann.visible[0, [7, 9]].any()
    points = np.delete(np.array(entry["landmarks"], dtype=float), [7, 9], axis=0)
    np.testing.assert_allclose(ann.boxes[0, :2], points.min(axis=0))


def test_no_headposes_anywhere_is_fine(tmp_path):
    ann = F.read_spiga_json(_write(tmp_path / "gt.json", [_entry(headpose=False)]), IBUG_68)
    assert ann.headposes is None


def _bad(mutate):
    entries = [_entry(0), _entry(1, "images/b.jpg"), _entry(2, "images/c.jpg")]
    mutate(entries[2])
    return entries


def _set(key, value):
    return lambda e: e.__setitem__(key, value)


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.pop("landmarks"), "missing 'landmarks'"),
    (_set("landmarks", []), "no landmarks"),
    (lambda e: e["ids"].__setitem__(5, 999), "unknown landmark id 999"),
    (lambda e: e["ids"].__setitem__(5, e["ids"][4]), "appears twice"),
    (lambda e: e["ids"].pop(), "one id per landmark"),
    (lambda e: e["landmarks"][7].__setitem__(0, float("inf")), "point 7 has an infinite coordinate"),
    (lambda e: e["landmarks"].__setitem__(7, [1.0]), r"\[x, y\] pairs"),
    (_set("bbox", [0, 0, 0, 10]), r"w, h > 0"),
    (_set("bbox", [0, 0, 10]), "'bbox' must be a list of 4 numbers"),
    (lambda e: e.pop("headpose"), "no 'headpose'"),
    (_set("headpose", [1.0, 2.0]), "headpose"),
    (_set("imgpath", 7), "'imgpath' must be a string"),
    (_set("visible", [1.0]), "visible"),
])
def test_bad_entries_name_the_file_and_the_entry(tmp_path, mutate, message):
    path = _write(tmp_path / "gt.json", _bad(mutate))
    with pytest.raises(DatasetError, match=message) as info:
        F.read_spiga_json(path, IBUG_68)
    assert str(path) in str(info.value)
    assert "entry 2" in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("", "the file is empty"),
    ("  \n", "the file is empty"),
    ("[{", "invalid JSON"),
    ("[]", "no entries"),
    ('{"a": 1}', "expected a list"),
    ("[3]", "entry 0: must be an object"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "gt.json"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message) as info:
        F.read_spiga_json(path, IBUG_68)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        F.read_spiga_json(tmp_path / "nope.json", IBUG_68)


def test_wrong_layout_is_an_unknown_id(tmp_path):
    path = _write(tmp_path / "gt.json", [_entry()])
    with pytest.raises(DatasetError, match="unknown landmark id .* landmark set 'wflw98'"):
        F.read_spiga_json(path, WFLW_98)


# --------------------------------------------------------------------------- predictions


def test_predictions_must_match_the_annotations(tmp_path):
    gt_path = _write(tmp_path / "gt.json", [_entry(0), _entry(1, "images/b.jpg")])
    gt = F.read_annotations(gt_path, IBUG_68)

    short = _write(tmp_path / "short.json", [_entry(0)])
    with pytest.raises(DatasetError, match=r"short\.json: has 1 entries but .*gt\.json has 2"):
        F.read_predictions(short, gt)

    swapped = _write(tmp_path / "swapped.json", [_entry(1, "images/b.jpg"), _entry(0)])
    with pytest.raises(DatasetError, match=r"swapped\.json: entry 0 is 'images/b.jpg'.*order"):
        F.read_predictions(swapped, gt)

    lacking = [_entry(0), _entry(1, "images/b.jpg")]
    lacking[1]["ids"].pop(10)
    lacking[1]["landmarks"].pop(10)
    lacking[1]["visible"].pop(10)
    lacking_path = _write(tmp_path / "lacking.json", lacking)
    with pytest.raises(DatasetError, match=rf"lacking\.json: entry 1 .*landmark id {IBUG_68.ids[10]}"):
        F.read_predictions(lacking_path, gt)

    good = F.read_predictions(_write(tmp_path / "pred.json", [_entry(5), _entry(6, "images/b.jpg")]), gt)
    assert good.landmarks.shape == (2, 68, 2)


def _align_face(box, points, pose=True):
    face = {"box": list(box), "landmarks": np.asarray(points).tolist()}
    if pose:
        face["headpose"] = {"yaw": 1.0, "pitch": 2.0, "roll": 3.0, "tx": 0.0, "ty": 0.0, "tz": 1.0}
    return face


def test_align_predictions_are_matched_by_path_and_box(tmp_path):
    gt_entries = [_entry(0, "images/a.jpg"), _entry(1, "images/b.jpg")]
    gt_entries[1]["bbox"] = [200.0, 10.0, 50.0, 50.0]
    gt = F.read_annotations(_write(tmp_path / "gt.json", gt_entries), IBUG_68)
    near_a, far_b, near_b = np.full((68, 2), 1.0), np.full((68, 2), 2.0), np.full((68, 2), 3.0)
    align = {"images": [
        {"path": "/data/set/images/b.jpg", "width": 300, "height": 200,
         "faces": [_align_face([0, 0, 40, 40], far_b), _align_face([205, 12, 48, 50], near_b)]},
        {"path": "/data/set/images/a.jpg", "width": 300, "height": 200,
         "faces": [_align_face([6, 6, 88, 90], near_a)]},
    ]}
    pred = F.read_predictions(_write(tmp_path / "align.json", align), gt)
    np.testing.assert_allclose(pred.landmarks[0], near_a)
    np.testing.assert_allclose(pred.landmarks[1], near_b)
    np.testing.assert_allclose(pred.headposes[:, :3], [[1, 2, 3], [1, 2, 3]])

    align["images"][1]["faces"] = []
    with pytest.raises(DatasetError, match=r"align\.json: image .*a\.jpg' has no face for entry 0"):
        F.read_predictions(_write(tmp_path / "align.json", align), gt)
    align["images"].pop(1)
    with pytest.raises(DatasetError, match=r"no image matches entry 0 \(images/a\.jpg\)"):
        F.read_predictions(_write(tmp_path / "align.json", align), gt)


def test_align_json_validation(tmp_path):
    bad = {"images": [{"path": "x.jpg", "faces": [_align_face([0, 0, 10, 10], np.zeros((5, 2)))]}]}
    with pytest.raises(DatasetError, match=r"bad\.json: image 0 \(x\.jpg\): face 0: has 5 landmarks"):
        F.read_align_json(_write(tmp_path / "bad.json", bad), IBUG_68)
    nan = {"images": [{"path": "x.jpg", "faces": [_align_face([0, 0, 10, 10], np.full((68, 2), np.nan))]}]}
    with pytest.raises(DatasetError, match="face 0: 'landmarks' has a NaN"):
        F.read_align_json(_write(tmp_path / "nan.json", nan), IBUG_68)


def test_align_json_as_ground_truth(tmp_path):
    align = {"images": [{"path": "x.jpg", "width": 100, "height": 100, "faces": [
        _align_face([0, 0, 50, 50], np.full((68, 2), 4.0)), _align_face([50, 50, 50, 50], np.full((68, 2), 70.0))]}]}
    gt = F.read_annotations(_write(tmp_path / "gt.json", align), IBUG_68)
    assert gt.paths == ["x.jpg", "x.jpg"] and gt.annotated.all() and gt.headposes.shape == (2, 6)


# --------------------------------------------------------------------------- db_info.json


def test_db_info_of_the_original_release():
    cofw = F.read_db_info(shared_path("fixtures", "upstream", "annotations", "cofw68", "db_info.json"))
    assert cofw.norms == {"lnd_bbox": 7.0, "corners": 8.0, "pupils": 8.0} and cofw.test_subsets == {}
    wflw = F.read_db_info(shared_path("fixtures", "upstream", "annotations", "wflw", "db_info.json"))
    assert set(wflw.test_subsets) >= {"pose", "expression", "illumination", "makeup", "occlusion", "blur"}
    assert wflw.norms["corners"] == 10.0


@pytest.mark.parametrize("data, message", [
    ([], "expected a JSON object"),
    ({"norm": {"corners": -1}}, "norm 'corners'"),
    ({"test_subsets": {"pose": [1, "x"]}}, "test subset 'pose'"),
])
def test_bad_db_info(tmp_path, data, message):
    path = _write(tmp_path / "db_info.json", data)
    with pytest.raises(DatasetError, match=message) as info:
        F.read_db_info(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    F.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        F.write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
