"""The command line: `spiga align` and `spiga convert`, errors on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from spiga.cli import main as cli


def test_align_json_and_drawing(tiny_checkpoint, image_file, tmp_path):
    out, drawing = tmp_path / "out.json", tmp_path / "drawn.png"
    code = cli(["align", str(image_file), "--model", str(tiny_checkpoint), "--box", "70", "35", "100", "130",
                "--box", "10", "10", "30", "30", "--json", str(out), "--draw", str(drawing)])
    assert code == 0
    result = json.loads(out.read_text())
    record = result["images"][0]
    assert record["path"] == str(image_file) and (record["width"], record["height"]) == (240, 200)
    assert [f["box"] for f in record["faces"]] == [[70, 35, 100, 130], [10, 10, 30, 30]]
    face = record["faces"][0]
    assert len(face["landmarks"]) == 98 and len(face["landmarks"][0]) == 2
    assert set(face["headpose"]) == {"yaw", "pitch", "roll", "tx", "ty", "tz"}
    drawn = cv2.imread(str(drawing))
    assert drawn.shape == (200, 240, 3)
    assert (drawn != cv2.imread(str(image_file))).any()


def test_align_prints_json_without_out(tiny_checkpoint, image_file, capsys):
    assert cli(["align", str(image_file), "--model", str(tiny_checkpoint), "--box", "70", "35", "100", "130"]) == 0
    assert len(json.loads(capsys.readouterr().out)["images"][0]["faces"]) == 1


@pytest.mark.parametrize("args, message", [
    (["--box", "1", "1", "0", "5"], "positive width and height"),
    (["--box", "900", "900", "10", "10"], "entirely outside"),
    (["--detector", "nosuch"], "unknown detector"),
])
def test_align_bad_input_is_one_line(tiny_checkpoint, image_file, capsys, args, message):
    code = cli(["align", str(image_file), "--model", str(tiny_checkpoint), *args])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_align_missing_image_and_unknown_model(tiny_checkpoint, tmp_path, capsys, image_file):
    assert cli(["align", str(tmp_path / "nope.jpg"), "--model", str(tiny_checkpoint), "--box", "1", "1", "5", "5"]) != 0
    assert "nope.jpg: no such file" in capsys.readouterr().err
    too_long = tmp_path / ("a" * 300 + ".jpg")  # the system refuses to look the name up at all
    assert cli(["align", str(too_long), "--model", str(tiny_checkpoint), "--box", "1", "1", "5", "5"]) == 2
    err = capsys.readouterr().err
    assert "File name too long" in err and err.count("\n") == 1
    assert cli(["align", str(image_file), "--model", "nosuchmodel", "--box", "1", "1", "5", "5"]) != 0
    assert "unknown model 'nosuchmodel'" in capsys.readouterr().err


def test_align_without_boxes_uses_the_detector(tiny_checkpoint, tmp_path):
    from conftest import shared_path

    photo = shared_path("fixtures", "images", "image_sportsfan.jpg")
    out = tmp_path / "out.json"
    assert cli(["align", str(photo), "--model", str(tiny_checkpoint), "--json", str(out)]) == 0
    faces = json.loads(out.read_text())["images"][0]["faces"]
    assert len(faces) >= 1 and "score" in faces[0]


def test_console_entry_point_runs(tiny_checkpoint, image_file):
    result = subprocess.run([sys.executable, "-m", "spiga", "align", str(image_file), "--model", str(tiny_checkpoint),
                             "--box", "0", "0", "-3", "4"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("spiga: error: box 0")


def test_align_writes_pts_and_csv(tiny_checkpoint, image_file, tmp_path):
    """`--pts DIR`: one iBUG .pts per face (read back by the 300W reader's parser);
    `--csv`: one row per face with box, pose and every point, the same numbers as the JSON."""
    import csv as csv_module

    from spiga.data.formats.common import parse_pts

    out, table = tmp_path / "out.json", tmp_path / "faces.csv"
    assert cli(["align", str(image_file), "--model", str(tiny_checkpoint), "--box", "70", "35", "100", "130",
                "--box", "10", "10", "40", "40", "--json", str(out), "--pts", str(tmp_path / "pts"),
                "--csv", str(table)]) == 0
    faces = json.loads(out.read_text())["images"][0]["faces"]
    for k, face in enumerate(faces):
        points = parse_pts(tmp_path / "pts" / f"face_{k}.pts")
        assert np.abs(points - np.array(face["landmarks"])).max() < 1e-3
    rows = list(csv_module.DictReader(table.open()))
    assert len(rows) == 2 and rows[1]["face"] == "1" and rows[0]["image"] == str(image_file)
    assert float(rows[0]["yaw"]) == pytest.approx(faces[0]["headpose"]["yaw"])
    assert float(rows[0]["x97"]) == pytest.approx(faces[0]["landmarks"][97][0])
    assert rows[0]["score"] == ""  # a given box has no detector score


def test_many_images_pts_and_csv_survive_resume(tiny_checkpoint, tmp_path, face_image):
    import csv as csv_module

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(folder / f"{name}.png"), face_image)
    boxes = tmp_path / "boxes.txt"
    boxes.write_text("a.png 70 35 100 130\nb.png 70 35 100 130\n")
    base = ["align", str(folder), "--model", str(tiny_checkpoint), "--detector", f"file:{boxes}", "--no-progress",
            "--jsonl", str(tmp_path / "out.jsonl"), "--pts", str(tmp_path / "pts"), "--csv", str(tmp_path / "f.csv")]
    assert cli(base) == 0
    assert sorted(p.name for p in (tmp_path / "pts").iterdir()) == ["a_0.pts", "b_0.pts"]
    assert cli(base + ["--resume"]) == 0  # nothing left to do: the CSV still lists every face
    rows = list(csv_module.DictReader((tmp_path / "f.csv").open()))
    assert sorted(Path(r["image"]).name for r in rows) == ["a.png", "b.png"]


def test_earlier_spellings_still_work():
    """Options renamed for one meaning per name keep their earlier spelling (hidden)."""
    from spiga.cli import build_parser

    parser = build_parser()
    align = parser.parse_args(["align", "x.jpg", "--workers", "3", "--batch-size", "5"])
    assert align.decode_threads == 3 and align.max_batch == 5
    assert parser.parse_args(["export", "--out", "m.onnx", "--batch-size", "4"]).fixed_batch == 4
    serve = parser.parse_args(["serve", "--workers", "2", "--decode-workers", "3"])
    assert serve.model_threads == 2 and serve.decode_threads == 3
    assert "--workers" not in parser._subparsers._group_actions[0].choices["align"].format_help()
