"""Dataset readers on tiny files written by the tests, well-formed and malformed."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from spiga.data import read_dataset
from spiga.data.dataset import FaceDataset
from spiga.errors import DatasetError, ImageError, SpigaError
from spiga.landmarks import IBUG_68, WFLW_98, read_landmark_set

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def write_image(path: Path, size=(40, 50)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), 128, np.uint8))
    return path


def face_points(count: int, seed: int = 0) -> np.ndarray:
    """`count` points inside a 20..80 square, distinct."""
    return np.random.default_rng(seed).uniform(20, 80, (count, 2)).round(3)


def pts_text(points: np.ndarray, declared: int | None = None) -> str:
    rows = "\n".join(f"{x} {y}" for x, y in points)
    return f"version: 1\nn_points: {declared or len(points)}\n{{\n{rows}\n}}\n"


# ------------------------------------------------------------------ spec parsing

def test_spec_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="unknown format 'nope'"):
        read_dataset(f"nope:{tmp_path}")
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(f"wflw:{tmp_path / 'missing.txt'}")
    with pytest.raises(DatasetError, match="FORMAT:PATH"):
        read_dataset("wflw")


# ------------------------------------------------------------------ WFLW

def wflw_line(points: np.ndarray, box, flags, name: str) -> str:
    return " ".join([*(f"{v}" for v in points.reshape(-1)), *(str(b) for b in box),
                     *(str(f) for f in flags), name])


def test_wflw_reads_points_box_and_attribute_tags(tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg")
    write_image(tmp_path / "imgs" / "b.jpg")
    p0, p1 = face_points(98, 0), face_points(98, 1)
    text = "\n".join([wflw_line(p0, (10, 12, 90, 95), (1, 0, 0, 0, 1, 0), "a.jpg"),
                      wflw_line(p1, (5, 6, 70, 80), (0, 0, 0, 0, 0, 0), "b.jpg")])
    (tmp_path / "list.txt").write_text(text + "\n")
    data = read_dataset(f"wflw:{tmp_path / 'list.txt'}:{tmp_path / 'imgs'}")
    assert len(data) == 2 and data.landmark_set is WFLW_98
    first = data[0]
    np.testing.assert_allclose(first.landmarks, p0)
    np.testing.assert_allclose(first.box, [10, 12, 80, 83])
    assert first.tags == {"pose", "occlusion"} and data[1].tags == set()
    assert first.visible.all() and first.annotated.all()
    assert first.source.endswith("list.txt:1")
    pose = read_dataset(f"wflw/pose:{tmp_path / 'list.txt'}:{tmp_path / 'imgs'}")
    assert [s.image_path.name for s in pose] == ["a.jpg"]


def test_wflw_official_layout_finds_images(tmp_path):
    lists = tmp_path / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    lists.mkdir(parents=True)
    write_image(tmp_path / "WFLW_images" / "0--Parade" / "x.jpg")
    (lists / "list.txt").write_text(wflw_line(face_points(98), (1, 1, 99, 99), (0,) * 6, "0--Parade/x.jpg"))
    data = read_dataset(f"wflw:{lists / 'list.txt'}")
    assert data[0].image_path == tmp_path / "WFLW_images" / "0--Parade" / "x.jpg"


def test_wflw_wrong_point_count_names_file_and_line(tmp_path):
    write_image(tmp_path / "a.jpg")
    good = wflw_line(face_points(98), (10, 12, 90, 95), (0,) * 6, "a.jpg")
    short = wflw_line(face_points(97), (10, 12, 90, 95), (0,) * 6, "a.jpg")
    path = tmp_path / "list.txt"
    path.write_text(f"{good}\n{short}\n{good}\n")
    with pytest.raises(DatasetError, match=r"list\.txt:2: expected 207 fields.*found 205"):
        read_dataset(f"wflw:{path}")
    data = read_dataset(f"wflw:{path}", skip_bad=True)
    assert len(data) == 2 and len(data.skipped) == 1
    assert data.skipped[0].source.endswith("list.txt:2")
    assert "skipped 1 bad entries (1 annotation)" in data.summary()


def test_wflw_missing_image_is_an_image_error(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text(wflw_line(face_points(98), (10, 12, 90, 95), (0,) * 6, "gone.jpg"))
    with pytest.raises(ImageError, match=r"list\.txt:1: image .*gone\.jpg not found"):
        read_dataset(f"wflw:{path}")
    # annotation-only reading (mean-face estimation) does not look for images
    assert len(read_dataset(f"wflw:{path}", require_images=False)) == 1


# ------------------------------------------------------------------ 300W

def test_300w_splits_by_folder(tmp_path):
    layout = {
        "afw/1": {"train", "afw"}, "helen/trainset/2": {"train", "helen"},
        "lfpw/trainset/3": {"train", "lfpw"}, "helen/testset/4": {"common", "full", "helen"},
        "lfpw/testset/5": {"common", "full", "lfpw"}, "ibug/6": {"challenge", "full", "ibug"},
        "300W/01_Indoor/indoor_001": {"private", "indoor"},
        "300W/02_Outdoor/outdoor_001": {"private", "outdoor"},
    }
    for i, stem in enumerate(layout):
        write_image(tmp_path / f"{stem}.png")
        (tmp_path / f"{stem}.pts").write_text(pts_text(face_points(68, i)))
    data = read_dataset(f"300w:{tmp_path}")
    assert data.landmark_set is IBUG_68 and len(data) == 8
    by_name = {s.image_path.stem: s.tags for s in data}
    for stem, tags in layout.items():
        assert by_name[Path(stem).name] == tags
    sample = next(s for s in data if s.image_path.stem == "1")
    np.testing.assert_allclose(sample.landmarks, face_points(68, 0))
    low = sample.landmarks.min(axis=0)
    np.testing.assert_allclose(sample.box[:2], low)  # box = the points' bounding box
    assert {len(read_dataset(f"300w/{split}:{tmp_path}")) for split in ("train",)} == {3}
    assert len(read_dataset(f"300w/common:{tmp_path}")) == 2
    assert len(read_dataset(f"300w/full:{tmp_path}")) == 3
    assert len(read_dataset(f"300w/private:{tmp_path}")) == 2


def test_300w_malformed_pts(tmp_path):
    write_image(tmp_path / "afw" / "a.jpg")
    (tmp_path / "afw" / "a.pts").write_text(pts_text(face_points(67)))
    with pytest.raises(DatasetError, match=r"a\.pts: 67 points, but landmark set 'ibug68' has 68"):
        read_dataset(f"300w:{tmp_path}")
    lines = pts_text(face_points(68)).splitlines()
    lines[5] = "12.0 oops"
    (tmp_path / "afw" / "a.pts").write_text("\n".join(lines))
    with pytest.raises(DatasetError, match=r"a\.pts:6: expected `x y`"):
        read_dataset(f"300w:{tmp_path}")
    (tmp_path / "afw" / "a.pts").write_text(pts_text(face_points(67), declared=68))
    with pytest.raises(DatasetError, match="declares n_points: 68 but lists 67"):
        read_dataset(f"300w:{tmp_path}")
    write_image(tmp_path / "afw" / "b.jpg")
    (tmp_path / "afw" / "b.pts").write_text(pts_text(face_points(68)))
    data = read_dataset(f"300w:{tmp_path}", skip_bad=True)
    assert [s.image_path.name for s in data] == ["b.jpg"] and len(data.skipped) == 1


# ------------------------------------------------------------------ COFW68

def test_cofw68_mat_files(tmp_path):
    annotations = tmp_path / "test_annotations"
    annotations.mkdir()
    points = face_points(68)
    occluded = np.zeros((68, 1))
    occluded[[3, 40]] = 1
    scipy.io.savemat(annotations / "1_points.mat", {"Points": points, "Occ": occluded})
    scipy.io.savemat(annotations / "2_points.mat", {"Points": points[:60], "Occ": occluded[:60]})
    scipy.io.savemat(tmp_path / "cofw68_test_bboxes.mat", {"bboxes": np.array([[5, 6, 70, 72], [1, 1, 9, 9]])})
    write_image(tmp_path / "images" / "1.jpg")
    write_image(tmp_path / "images" / "2.jpg")
    with pytest.raises(DatasetError, match=r"2_points\.mat: 60 points"):
        read_dataset(f"cofw68:{annotations}")
    data = read_dataset(f"cofw68:{annotations}", skip_bad=True)
    assert len(data) == 1 and len(data.skipped) == 1
    sample = data[0]
    np.testing.assert_allclose(sample.landmarks, points)
    np.testing.assert_allclose(sample.box, [5, 6, 70, 72])
    assert not sample.visible[3] and not sample.visible[40] and sample.visible.sum() == 66
    assert sample.annotated.all()
    (annotations / "2_points.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DatasetError, match=r"2_points\.mat: not a readable MATLAB file"):
        read_dataset(f"cofw68:{annotations}")


# ------------------------------------------------------------------ MERL-RAV

def test_merlrav_keeps_unannotated_and_hidden_apart(tmp_path):
    folder = tmp_path / "frontal" / "trainset"
    points = face_points(68)
    coded = points.copy()
    coded[[0, 1, 2]] = -1.0          # no position
    coded[[10, 11]] *= -1            # located but hidden
    write_image(folder / "image00001.jpg")
    (folder / "image00001.pts").write_text(pts_text(coded))
    data = read_dataset(f"merlrav:{tmp_path}")
    sample = data[0]
    assert sample.tags == {"frontal", "train"}
    assert not sample.annotated[[0, 1, 2]].any() and np.isnan(sample.landmarks[[0, 1, 2]]).all()
    assert sample.annotated[[10, 11]].all() and not sample.visible[[10, 11]].any()
    np.testing.assert_allclose(sample.landmarks[10:12], points[10:12])
    assert sample.visible.sum() == 63 and sample.annotated.sum() == 65
    low = points[3:].min(axis=0)
    np.testing.assert_allclose(sample.box[:2], low)  # box from annotated points only


# ------------------------------------------------------------------ SPIGA JSON

def test_spiga_json_places_points_by_id(tmp_path):
    write_image(tmp_path / "images" / "a.jpg")
    points = face_points(68)
    ids = list(IBUG_68.ids)
    keep = list(range(5, 68))  # the first five ids are left out: not annotated
    visible = [1] * 63
    visible[0] = 0
    entries = [{"imgpath": "images/a.jpg", "bbox": [10, 11, 50, 52], "headpose": [1, 2, 3, 0.1, 0.2, 3.0],
                "ids": [ids[i] for i in keep][::-1], "landmarks": points[keep][::-1].tolist(),
                "visible": visible[::-1]}]
    path = tmp_path / "test.json"
    path.write_text(json.dumps(entries))
    data = read_dataset(f"spiga-json:{path}")
    sample = data[0]
    assert data.landmark_set is IBUG_68
    assert not sample.annotated[:5].any() and sample.annotated[5:].all()
    np.testing.assert_allclose(sample.landmarks[5:], points[5:])
    assert not sample.visible[5] and sample.visible[6:].all()
    np.testing.assert_allclose(sample.headpose, [1, 2, 3, 0.1, 0.2, 3.0])
    np.testing.assert_allclose(sample.box, [10, 11, 50, 52])
    # images under another root
    other = tmp_path / "elsewhere"
    write_image(other / "images" / "a.jpg")
    assert read_dataset(f"spiga-json:{path}:{other}")[0].image_path == other / "images" / "a.jpg"


def test_spiga_json_malformed(tmp_path):
    write_image(tmp_path / "a.jpg")
    good = {"imgpath": "a.jpg", "bbox": None, "headpose": None, "ids": list(IBUG_68.ids),
            "landmarks": face_points(68).tolist(), "visible": [1] * 68}
    bad = dict(good, ids=[9999] + list(IBUG_68.ids[1:]))
    path = tmp_path / "t.json"
    path.write_text(json.dumps([good, bad]))
    with pytest.raises(DatasetError, match=r"t\.json, entry 1: unknown landmark id 9999: landmark set .ibug68."):
        read_dataset(f"spiga-json:{path}")
    assert len(read_dataset(f"spiga-json:{path}", skip_bad=True)) == 1
    path.write_text('[\n{"imgpath": "a.jpg",\n "landmarks": [1, 2,]}]')
    with pytest.raises(DatasetError, match=r"t\.json, line 3: invalid JSON"):
        read_dataset(f"spiga-json:{path}")


def test_spiga_json_reads_the_original_cofw68_annotations():
    path = SHARED / "fixtures" / "upstream" / "annotations" / "cofw68" / "test.json"
    if not path.exists():
        pytest.skip("needs ../shared/fixtures/upstream (the original SPIGA annotations)")
    data = read_dataset(f"spiga-json:{path}", require_images=False)
    assert len(data) == 507 and data.landmark_set is IBUG_68
    assert all(s.headpose is not None for s in data)
    assert 0 < sum((~s.visible).sum() for s in data) < 507 * 68  # COFW has occluded points


# ------------------------------------------------------------------ custom format + landmark-set file

FIVE_POINTS = {
    "name": "five", "points": ["right_eye", "left_eye", "nose", "right_mouth", "left_mouth"],
    "mirror_pairs": [[0, 1], [3, 4]],
    "edges": {"eyes": [0, 2, 1], "mouth": [3, 4]}, "eye_corners": [0, 1],
}


@pytest.fixture
def five_points(tmp_path) -> Path:
    path = tmp_path / "five.json"
    path.write_text(json.dumps(FIVE_POINTS))
    return path


def test_landmark_set_file(five_points):
    layout = read_landmark_set(five_points)
    assert layout.name == "five" and layout.num_landmarks == 5
    assert layout.flip_order == (1, 0, 2, 4, 3)
    assert layout.edge_groups == ((0, 2, 1), (3, 4)) and layout.group_names == ("eyes", "mouth")
    assert layout.ids == (0, 1, 2, 3, 4)


@pytest.mark.parametrize("change, message", [
    ({"mirror_pairs": [[0, 1], [1, 3]]}, r"mirror_pairs\[1\].*one pair only"),
    ({"mirror_pairs": [[0, 9]]}, r"mirror_pairs\[0\]: 9 is not a point index in 0..4"),
    ({"edges": {}}, "at least one group"),
    ({"edges": {"eyes": [0, 7]}}, r"edge group 'eyes': 7"),
    ({"points": None}, "give `points`"),
    ({"ids": [1, 1, 2, 3, 4]}, "not unique"),
])
def test_landmark_set_file_errors(tmp_path, change, message):
    path = tmp_path / "bad.json"
    description = {k: v for k, v in {**FIVE_POINTS, **change}.items() if v is not None}
    path.write_text(json.dumps(description))
    with pytest.raises(SpigaError, match=f"bad\\.json: .*{message}"):
        read_landmark_set(path)


def test_landmark_set_file_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n"name": "x",\n"points": [}')
    with pytest.raises(SpigaError, match=r"broken\.json, line 3: invalid JSON"):
        read_landmark_set(path)


def test_custom_jsonl(tmp_path, five_points):
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.png")
    lines = [
        {"image": "img/a.png", "landmarks": [[10, 10], [30, 10], [20, 20], None, [28, 30]],
         "visible": [1, 0, 1, 1, 1], "box": [5, 5, 30, 30], "tags": ["train"]},
        {"image": "img/b.png", "landmarks": [[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]]},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    data = read_dataset(f"custom:{path}", landmark_set=five_points)
    a, b = data
    assert data.landmark_set.name == "five"
    assert a.annotated.tolist() == [True, True, True, False, True]
    assert a.visible.tolist() == [True, False, True, False, True]
    np.testing.assert_allclose(a.box, [5, 5, 30, 30])
    np.testing.assert_allclose(b.box, [10, 10, 20, 20])
    assert a.tags == {"train"} and b.tags == set()


def test_custom_jsonl_errors(tmp_path, five_points):
    write_image(tmp_path / "a.png")
    good = {"image": "a.png", "landmarks": [[1, 2]] * 5}
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join([json.dumps(good), json.dumps(dict(good, landmarks=[[1, 2]] * 4)),
                               "{not json", json.dumps(dict(good, image="nope.png"))]))
    with pytest.raises(DatasetError, match="needs a landmark set"):
        read_dataset(f"custom:{path}")
    with pytest.raises(DatasetError, match=r"x\.jsonl:2: 4 points, but landmark set 'five' has 5"):
        read_dataset(f"custom:{path}", landmark_set=five_points)
    data = read_dataset(f"custom:{path}", landmark_set=five_points, skip_bad=True)
    assert len(data) == 1
    assert [s.source.rsplit(":", 1)[1] for s in data.skipped] == ["2", "3", "4"]
    assert [s.kind for s in data.skipped] == ["annotation", "annotation", "image"]
    assert "skipped 3 bad entries (2 annotation, 1 image)" in data.summary()


def test_custom_csv(tmp_path, five_points):
    write_image(tmp_path / "a.png")
    header = "image," + ",".join(f"x{i},y{i}" for i in range(5)) + "," + ",".join(f"v{i}" for i in range(5))
    header += ",box_x,box_y,box_w,box_h,tags"
    row = "a.png,10,10,30,10,20,20,,,28,30,1,1,0,1,1,4,4,32,32,train;thermal"
    path = tmp_path / "set.csv"
    path.write_text(f"{header}\n{row}\n")
    sample = read_dataset(f"custom:{path}", landmark_set=five_points)[0]
    assert sample.annotated.tolist() == [True, True, True, False, True]
    assert sample.visible.tolist() == [True, True, False, False, True]
    np.testing.assert_allclose(sample.box, [4, 4, 32, 32])
    assert sample.tags == {"train", "thermal"}
    path.write_text("image," + ",".join(f"x{i},y{i}" for i in range(4)) + "\na.png,1,1,2,2,3,3,4,4\n")
    with pytest.raises(DatasetError, match=r"set\.csv:1: the header has 4 points"):
        read_dataset(f"custom:{path}", landmark_set=five_points)
    path.write_text(f"{header}\n{row}\na.png,1,2\n")
    with pytest.raises(DatasetError, match=r"set\.csv:3: 3 cells, the header has 21"):
        read_dataset(f"custom:{path}", landmark_set=five_points)


def test_builtin_landmark_set_by_name(tmp_path):
    write_image(tmp_path / "a.png")
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"image": "a.png", "landmarks": face_points(68).tolist()}))
    assert read_dataset(f"custom:{path}", landmark_set="ibug68").landmark_set is IBUG_68


# ------------------------------------------------------------------ corrupt images

def test_corrupt_image_stops_or_is_skipped(tmp_path, five_points):
    write_image(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    path = tmp_path / "x.jsonl"
    points = [[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]]
    path.write_text("\n".join(json.dumps({"image": name, "landmarks": points}) for name in ("bad.png", "good.png")))
    with pytest.raises(ImageError, match=r"bad\.png: not a readable image"):
        read_dataset(f"custom:{path}", landmark_set=five_points, check_images=True)
    data = read_dataset(f"custom:{path}", landmark_set=five_points, check_images=True, skip_bad=True)
    assert len(data) == 1 and data.skipped[0].kind == "image"
    # found only when training reads it: the error names the image and the annotation line
    lazy = read_dataset(f"custom:{path}", landmark_set=five_points)
    with pytest.raises(ImageError, match=r"bad\.png: not a readable image.*annotation .*x\.jsonl:1"):
        FaceDataset(lazy)[0]
    tolerant = FaceDataset(lazy, skip_bad=True)
    item = tolerant[0]
    assert int(item["index"]) == 1 and len(tolerant.skipped) == 1
