"""Image paths in annotation files may not leave the image folder unless allowed."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from spiga.data import read_dataset
from spiga.data.formats.common import image_inside
from spiga.errors import DatasetError
from spiga.evaluate import load_test_set
from spiga.landmarks import IBUG_68

POINTS = [[10.0 + i, 20.0 + i % 5] for i in range(68)]


def _spiga_json(folder, imgpath: str):
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"imgpath": imgpath, "bbox": [5, 5, 80, 40], "ids": list(IBUG_68.ids), "landmarks": POINTS}
    path = folder / "test.json"
    path.write_text(json.dumps([entry, {**entry, "imgpath": "inside.png"}]))
    cv2.imwrite(str(folder / "inside.png"), np.zeros((100, 100, 3), np.uint8))
    return path


@pytest.mark.parametrize("name", ["../outside.png", "a/../../outside.png", "/etc/passwd", ".."])
def test_escaping_paths_are_refused(tmp_path, name):
    with pytest.raises(DatasetError, match="leads outside the image folder"):
        image_inside(tmp_path, name, "list.txt:3")


@pytest.mark.parametrize("name", ["a.png", "img/a.png", "img/../a.png", "./a.png", "..a.png"])
def test_paths_inside_are_joined(tmp_path, name):
    assert image_inside(tmp_path, name, "list.txt:3") == tmp_path / name


def test_dataset_reader_names_file_and_entry(tmp_path):
    cv2.imwrite(str(tmp_path / "outside.png"), np.zeros((100, 100, 3), np.uint8))
    path = _spiga_json(tmp_path / "set", "../outside.png")
    with pytest.raises(DatasetError) as refused:
        read_dataset(f"spiga-json:{path}")
    assert f"{path}, entry 0" in str(refused.value) and "../outside.png" in str(refused.value)
    skipped = read_dataset(f"spiga-json:{path}", skip_bad=True)
    assert [s.image_path.name for s in skipped] == ["inside.png"] and len(skipped.skipped) == 1
    allowed = read_dataset(f"spiga-json:{path}", allow_outside_root=True)
    assert len(allowed) == 2 and allowed[0].image_path.resolve() == (tmp_path / "outside.png").resolve()


def test_custom_and_wflw_readers_refuse_escapes(tmp_path):
    jsonl = tmp_path / "faces.jsonl"
    jsonl.write_text(json.dumps({"image": "/etc/hostname", "landmarks": POINTS}) + "\n")
    with pytest.raises(DatasetError, match=r"faces.jsonl:1: image path '/etc/hostname' leads outside"):
        read_dataset(f"custom:{jsonl}", "ibug68", require_images=False)
    coords = " ".join(str(20 + i % 30) for i in range(196))
    wflw = tmp_path / "list.txt"
    wflw.write_text(f"{coords} 10 10 50 50 0 0 0 0 0 0 ../../secret.jpg\n")
    with pytest.raises(DatasetError, match=r"list.txt:1: image path '../../secret.jpg' leads outside"):
        read_dataset(f"wflw:{wflw}", require_images=False)


def test_benchmark_test_sets_refuse_escapes(tmp_path):
    path = _spiga_json(tmp_path / "set", "../../outside.png")
    with pytest.raises(DatasetError, match="entry 0: image path '../../outside.png' leads outside"):
        load_test_set(f"spiga-json:{path}", IBUG_68)
    allowed = load_test_set(f"spiga-json:{path}", IBUG_68, allow_outside_root=True)
    assert allowed.image_path(0) == tmp_path / "set" / "../../outside.png"
