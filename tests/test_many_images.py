"""Many images: input expansion, JSON Lines output, errors that do not stop the run,
--resume, and faces of several images batched together."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from spiga.cli import main as cli
from spiga.errors import InputError
from spiga.inference.many_images import BatchSummary, align_files, done_paths, drawing_names, expand_inputs
from spiga.io import JsonlWriter, read_jsonl_records



pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _face_picture(seed: int, size=(160, 200)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 60, size=(*size, 3), dtype=np.uint8)
    skin = tuple(int(v) for v in rng.integers(100, 220, 3))
    cv2.ellipse(image, (size[1] // 2, size[0] // 2), (45, 60), 0, 0, 360, skin, -1)
    return image


@pytest.fixture
def folder(tmp_path):
    """Two good images, one file that is not an image, one truncated JPEG, a text file, and a
    box file naming each image's face."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), _face_picture(1))
    cv2.imwrite(str(images / "c.jpg"), _face_picture(2))
    (images / "b.jpg").write_bytes(b"this is not a JPEG")
    ok, encoded = cv2.imencode(".jpg", _face_picture(3))
    (images / "d.jpg").write_bytes(encoded.tobytes()[:-400])
    (images / "notes.txt").write_text("not an image, and not picked up from a folder")
    boxes = {name: [[55, 20, 90, 120]] for name in ("a.png", "b.jpg", "c.jpg", "d.jpg")}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    return images


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_expand_inputs_folders_globs_files(folder, tmp_path):
    in_folder = expand_inputs([folder])
    assert [p.name for p in in_folder] == ["a.png", "b.jpg", "c.jpg", "d.jpg"]
    assert [p.name for p in expand_inputs([str(folder / "*.jpg")])] == ["b.jpg", "c.jpg", "d.jpg"]
    # files in the order given, duplicates kept once, missing files kept (they get an error line)
    listed = expand_inputs([folder / "c.jpg", folder / "a.png", folder / "c.jpg", tmp_path / "missing.png"])
    assert [p.name for p in listed] == ["c.jpg", "a.png", "missing.png"]
    with pytest.raises(InputError, match=r"\*\.gif: no file matches"):
        expand_inputs([str(folder / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder holds no image files"):
        expand_inputs([tmp_path / "empty"])


def test_folder_run_keeps_going_after_bad_files(tiny_checkpoint, folder, tmp_path, capsys):
    out, drawings = tmp_path / "out.jsonl", tmp_path / "drawn"
    code = cli(["align", str(folder), "--model", str(tiny_checkpoint), "--detector", f"file:{tmp_path / 'boxes.json'}",
                "--jsonl", str(out), "--draw-dir", str(drawings), "--no-progress", "--decode-threads", "2"])
    assert code == 2  # two images failed
    assert "2 of 4 images failed" in capsys.readouterr().err
    lines = _lines(out)
    assert [line["path"] for line in lines] == [str(folder / n) for n in ("a.png", "b.jpg", "c.jpg", "d.jpg")]
    good = [line for line in lines if "error" not in line]
    assert [len(line["faces"]) for line in good] == [1, 1]
    assert good[0]["width"] == 200 and good[0]["height"] == 160
    assert len(good[0]["faces"][0]["landmarks"]) == 98
    errors = {line["path"]: line["error"] for line in lines if "error" in line}
    assert set(errors) == {str(folder / "b.jpg"), str(folder / "d.jpg")}
    assert "not a readable image" in errors[str(folder / "b.jpg")]
    assert "truncated" in errors[str(folder / "d.jpg")]
    assert sorted(p.name for p in drawings.iterdir()) == ["a.png", "c.png"]


def test_prints_json_lines_without_output_file(tiny_checkpoint, folder, tmp_path, capsys):
    code = cli(["align", str(folder / "a.png"), str(folder / "c.jpg"), "--model", str(tiny_checkpoint),
                "--detector", f"file:{tmp_path / 'boxes.json'}", "--no-progress"])
    assert code == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["path"] for p in printed] == [str(folder / "a.png"), str(folder / "c.jpg")]


def test_single_image_keeps_the_json_form(tiny_checkpoint, folder, capsys):
    assert cli(["align", str(folder / "a.png"), "--model", str(tiny_checkpoint), "--box", "55", "20", "90", "120"]) == 0
    assert "images" in json.loads(capsys.readouterr().out)


def test_box_and_draw_options_of_the_single_form_are_refused_for_many(tiny_checkpoint, folder, capsys):
    assert cli(["align", str(folder), "--model", str(tiny_checkpoint), "--box", "1", "1", "9", "9"]) == 2
    assert "--box is for one image" in capsys.readouterr().err
    assert cli(["align", str(folder), "--model", str(tiny_checkpoint), "--draw", "x.png"]) == 2
    assert "--draw-dir" in capsys.readouterr().err


def test_resume_skips_done_images_and_rewrites_a_truncated_line(tiny_checkpoint, folder, tmp_path):
    import spiga

    aligner = spiga.load(tiny_checkpoint, device="cpu", detector=f"file:{tmp_path / 'boxes.json'}")
    out = tmp_path / "out.jsonl"
    first = align_files(aligner, [folder / "a.png", folder / "b.jpg"], jsonl=out, progress=False)
    assert (first.images, len(first.failed)) == (1, 1)
    kept = out.read_text()
    with open(out, "a") as handle:  # a crash in the middle of writing c.jpg's line
        handle.write('{"path": "' + str(folder / "c.jpg") + '", "width": 2')
    paths = [folder / "a.png", folder / "b.jpg", folder / "c.jpg"]
    second = align_files(aligner, paths, jsonl=out, resume=True, progress=False)
    assert second.skipped == 1  # a.png; b.jpg had an error line and is tried again
    assert second.images == 1 and list(second.failed) == [str(folder / "b.jpg")]
    text = out.read_text()
    assert text.startswith(kept)
    lines = _lines(out)
    assert [line["path"] for line in lines[2:]] == [str(folder / "b.jpg"), str(folder / "c.jpg")]
    assert "faces" in lines[-1]
    assert done_paths(lines) == {str(folder / "a.png"), str(folder / "c.jpg")}


def test_resume_from_the_command_line(tiny_checkpoint, folder, tmp_path):
    out = tmp_path / "out.jsonl"
    detector = f"file:{tmp_path / 'boxes.json'}"
    args = ["align", str(folder / "a.png"), "--model", str(tiny_checkpoint), "--detector", detector,
            "--jsonl", str(out), "--no-progress"]
    assert cli(args) == 0
    assert cli(args[:2] + [str(folder / "c.jpg")] + args[2:] + ["--resume"]) == 0
    assert [line["path"] for line in _lines(out)] == [str(folder / "a.png"), str(folder / "c.jpg")]


def test_batched_images_give_the_same_faces_as_one_at_a_time(tiny_checkpoint):
    import spiga

    aligner = spiga.load(tiny_checkpoint, device="cpu", detector=None)
    images = [_face_picture(1), _face_picture(2, (240, 180)), _face_picture(3)]
    boxes = [[(55, 20, 90, 120), (0, 0, 40, 50)], [], [(60, 30, 80, 100)]]
    together = aligner.align_many(images, boxes)
    assert [len(faces) for faces in together] == [2, 0, 1]
    for image, image_boxes, faces in zip(images, boxes, together):
        alone = aligner.align_array(image, image_boxes) if image_boxes else []
        for a, b in zip(alone, faces):
            np.testing.assert_allclose(b.landmarks, a.landmarks, atol=1e-3)
            np.testing.assert_allclose(b.headpose.as_array(), a.headpose.as_array(), atol=1e-4)
            assert b.box == a.box
            np.testing.assert_array_equal(b.crop_matrix, a.crop_matrix)


def test_batches_split_by_face_count(tiny_checkpoint, folder, tmp_path):
    import shutil

    import spiga

    aligner = spiga.load(tiny_checkpoint, device="cpu", detector=f"file:{tmp_path / 'boxes.json'}")
    calls = []
    original = aligner.predict_crops
    aligner.predict_crops = lambda crops: calls.append(len(crops)) or original(crops)
    shutil.copy(folder / "a.png", tmp_path / "a.png")
    paths = [folder / "a.png", folder / "c.jpg", tmp_path / "a.png"]
    summary = align_files(aligner, paths, jsonl=tmp_path / "o.jsonl", progress=False, batch_faces=2)
    assert summary.images == 3 and calls == [2, 1]


def test_read_jsonl_records_refuses_a_damaged_middle_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"path": "a"}\nnot json\n{"path": "b"}\n')
    with pytest.raises(InputError, match="line 2 is not a JSON object"):
        read_jsonl_records(path)
    path.write_text('{"path": "a"}\n{"path": "b"}')  # complete JSON but no newline: rewritten
    records, end = read_jsonl_records(path)
    assert records == [{"path": "a"}] and end == len('{"path": "a"}\n')


def test_writer_starts_fresh_without_resume(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"path": "old"}\n')
    with JsonlWriter(path) as writer:
        writer.write({"path": "new"})
    assert _lines(path) == [{"path": "new"}]


def test_exit_status_is_the_failure_count_capped():
    assert BatchSummary().exit_status == 0
    assert BatchSummary(failed={str(i): "x" for i in range(3)}).exit_status == 3
    assert BatchSummary(failed={str(i): "x" for i in range(300)}).exit_status == 125


def test_drawing_names_are_unique(tmp_path):
    from pathlib import Path

    names = drawing_names([Path("x/a.jpg"), Path("y/a.jpg"), Path("x/b.png")])
    assert names["x/b.png"] == "b.png"
    assert len(set(names.values())) == 3 and all(n.startswith("a_") for k, n in names.items() if "a.jpg" in k)
