"""Outputs respect what is there: `-` is standard output for the stream formats, FIFOs and
devices are written through, links keep being links, regular files get the umask's mode
(videos included), and no output of any command may overwrite one of its inputs.

Most runs call `spiga.cli.main` in this process (fast); the forms the issue checks from
outside run the real command once each. Never point an output at /dev/null or another
system device: a pseudo-terminal of our own stands for a character device.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from spiga import cli
from spiga.errors import OutputError
from spiga.io import JsonlWriter, check_outputs_apart, image_record, write_json, write_output
from spiga.io.files import open_output

REPO = Path(__file__).resolve().parents[1]
BOX = ["--box", "60", "30", "120", "140"]


def _bytes(paths) -> dict[str, bytes]:
    return {str(p): Path(p).read_bytes() for p in paths}


def _align(image, model, *extra) -> list[str]:
    return ["align", str(image), "--model", str(model), "--no-progress", *extra]


@pytest.fixture
def photos(tmp_path, face_image) -> Path:
    """A folder of two input images: b.png (whose drawing name is its own) and a.jpg."""
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "b.png"), face_image)
    cv2.imwrite(str(folder / "a.jpg"), face_image)
    return folder


@pytest.fixture
def file_boxes(tmp_path) -> list[str]:
    """`--detector file:BOXES` with one box for each image of `photos` (no detector run)."""
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a.jpg": [[60, 30, 120, 140]], "b.png": [[60, 30, 120, 140]]}))
    return ["--detector", f"file:{boxes}"]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    import spiga

    return spiga.load(tiny_checkpoint, device="cpu", detector=None)


@pytest.fixture
def quick_load(loaded, monkeypatch):
    """`spiga align` in this process with the tiny model loaded once for the module (loading
    is most of a small run's time); the detector is still the one each command names."""
    def load(args, detector=None):
        loaded.detector = args.detector if detector is None else detector
        return loaded

    monkeypatch.setattr(cli, "_load_aligner", load)


# --- `-` --------------------------------------------------------------------------------


def test_dash_is_standard_output_for_json_csv_and_jsonl(quick_load, tiny_checkpoint, file_boxes, image_file, photos,
                                                        capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert cli.main(_align(image_file, tiny_checkpoint, *BOX, "--json", "-")) == 0
    out = json.loads(capsys.readouterr().out)
    assert [record["path"] for record in out["images"]] == [str(image_file)]
    assert len(out["images"][0]["faces"]) == 1

    assert cli.main(_align(image_file, tiny_checkpoint, *BOX, "--csv", "-")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("image,face,box_x") and len(lines) == 2

    assert cli.main(_align(photos, tiny_checkpoint, *file_boxes, "--jsonl", "-")) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(Path(r["path"]).name for r in records) == ["a.jpg", "b.png"]
    assert not (tmp_path / "-").exists()


def test_dash_is_refused_where_no_stream_can_go(quick_load, tiny_checkpoint, image_file, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(_align(image_file, tiny_checkpoint, *BOX, "--draw", "-")) == 2
    err = capsys.readouterr().err
    assert "standard output" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(OutputError, match="standard output"):
        write_output("-", b"\x89PNG")
    assert cli.main(_align(image_file, tiny_checkpoint, *BOX, "--json", "-", "--csv", "-")) == 2
    assert "standard output" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()


# --- what is already at the path -----------------------------------------------------------------


def _read_fifo(path: Path, into: list[bytes]) -> threading.Thread:
    def reader() -> None:
        with open(path, "rb") as handle:
            into.append(handle.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread


def test_a_fifo_is_written_through_and_stays_a_fifo(quick_load, tiny_checkpoint, image_file, tmp_path, capsys):
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    thread = _read_fifo(fifo, received)
    assert cli.main(_align(image_file, tiny_checkpoint, *BOX, "--json", str(fifo))) == 0
    thread.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert json.loads(received[0])["images"][0]["path"] == str(image_file)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing written beside it


def test_a_link_is_written_through_to_its_target(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_json(link, {"a": 1})
    assert link.is_symlink() and json.loads(target.read_text()) == {"a": 1}
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "made.json")
    write_output(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "made.json").read_text() == "made"
    with JsonlWriter(link) as lines:
        lines.write({"b": 2})
    assert link.is_symlink() and json.loads(target.read_text()) == {"b": 2}


def test_a_character_device_is_written_through(tmp_path):
    master, slave = os.openpty()  # our own terminal: a character device nobody else uses
    try:
        name = os.ttyname(slave)
        write_output(name, "spiga-was-here\n")
        with open_output(name) as handle:
            handle.write("twice\n")
        assert stat.S_ISCHR(os.stat(name).st_mode)
        data = b""
        while b"twice" not in data:
            data += os.read(master, 1024)
        assert b"spiga-was-here" in data
    finally:
        os.close(slave)
        os.close(master)


def test_a_unix_socket_is_connected_to_and_written_through(tmp_path):
    import socket

    path = tmp_path / "results.sock"
    received: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)

        def accept() -> None:
            connection, _ = server.accept()
            with connection:
                data = b""
                while chunk := connection.recv(4096):
                    data += chunk
                received.append(data)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        write_json(path, {"a": 1})
        thread.join(timeout=30)
    assert stat.S_ISSOCK(os.stat(path).st_mode) and json.loads(received[0]) == {"a": 1}


def test_a_link_to_standard_output_is_written_through_its_descriptor(tmp_path):
    """`/dev/stdout` redirected to a file: written through the process's own descriptor
    (after what it printed before, before what it prints after), never renamed over."""
    script = ("from spiga.io import write_output\nprint('before', flush=True)\n"
              "write_output('/dev/stdout', 'through\\n')\nprint('after')\n")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "redirected.txt"
    with open(out, "w") as handle:
        subprocess.run([sys.executable, "-c", script], stdout=handle, check=True, env=env, timeout=300)
    assert out.read_text() == "before\nthrough\nafter\n"


def test_a_folder_where_a_file_is_expected_is_one_line_naming_the_option(quick_load, tiny_checkpoint, file_boxes,
                                                                       image_file, photos, tmp_path, capsys):
    assert cli.main(_align(image_file, tiny_checkpoint, *BOX, "--json", str(tmp_path))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spiga: error: --json") and "folder" in err and ".tmp" not in err
    assert len(err.splitlines()) == 1
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for option in ("--draw-dir", "--pts"):
        assert cli.main(_align(photos, tiny_checkpoint, *file_boxes, option, str(a_file))) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"spiga: error: {option}") and "is a file" in err
    assert a_file.read_text() == "x"


def test_every_command_names_the_option_given_a_folder_for_a_file_or_the_reverse(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    forms = {"--out": [["export", "--model", str(tiny_checkpoint), "--out", str(folder)],
                       ["convert", str(a_file), "--config", "wflw", "--mean-face", str(a_file), "--out", str(folder)],
                       ["train", "--train", f"custom:{a_file}", "--out", str(a_file), "--no-progress"]],
             "--json": [["evaluate", "--annotations", str(a_file), "--predictions", str(a_file), "--config", "wflw",
                         "--json", str(folder)]]}
    for option, commands in forms.items():
        for form in commands:
            assert cli.main(form) == 2, form
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"spiga: error: {option} ") and len(err.splitlines()) == 1, err
    assert a_file.read_text() == "x" and not list(folder.iterdir())


def test_unknown_drawing_extension_is_refused_before_the_run(tiny_checkpoint, image_file, tmp_path):
    out = tmp_path / "out.txt"
    result = subprocess.run([sys.executable, "-m", "spiga", *_align(image_file, tiny_checkpoint, *BOX,
                                                                     "--draw", str(out))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) <= 2 and "Traceback" not in result.stderr
    assert "--draw" in result.stderr and ".txt" in result.stderr
    assert not out.exists()


# --- file modes --------------------------------------------------------------------------------

_MODES_SCRIPT = """
import os, sys
import numpy as np
os.umask(0o027)
from spiga.io import JsonlWriter, write_image, write_output
from spiga.video.loop import AtomicVideoWriter
folder = sys.argv[1]
write_output(os.path.join(folder, "plain.json"), "{}")
write_image(os.path.join(folder, "drawing.png"), np.zeros((8, 8, 3), np.uint8))
with JsonlWriter(os.path.join(folder, "lines.jsonl")) as lines:
    lines.write({})
video = AtomicVideoWriter(os.path.join(folder, "video.mp4"), 10.0, (32, 32))
for _ in range(3):
    video.write(np.zeros((32, 32, 3), np.uint8))
video.close()
"""


def test_outputs_and_videos_get_the_mode_of_the_umask(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", _MODES_SCRIPT, str(tmp_path)], check=True, env=env, timeout=300)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"plain.json": 0o640, "drawing.png": 0o640, "lines.jsonl": 0o640, "video.mp4": 0o640}


# --- outputs against inputs ---------------------------------------------------------------------


def test_draw_dir_over_the_inputs_leaves_them_untouched(tiny_checkpoint, file_boxes, photos, capsys):
    before = _bytes(photos.iterdir())
    assert cli.main(_align(photos, tiny_checkpoint, *file_boxes, "--draw-dir", str(photos))) == 2
    err = capsys.readouterr().err.strip()
    assert "--draw-dir" in err and str(photos / "b.png") in err and len(err.splitlines()) == 1
    assert _bytes(photos.iterdir()) == before


def test_json_and_jsonl_naming_an_input_leave_it_untouched(tiny_checkpoint, file_boxes, photos, capsys):
    before = _bytes(photos.iterdir())
    image = photos / "b.png"
    for form in (_align(image, tiny_checkpoint, *BOX, "--json", str(image)),
                 _align(image, tiny_checkpoint, *BOX, "--draw", str(image)),
                 _align(photos, tiny_checkpoint, *file_boxes, "--jsonl", str(image)),
                 _align(photos, tiny_checkpoint, *file_boxes, "--csv", str(photos / "a.jpg"))):
        assert cli.main(form) == 2, form
        assert "would overwrite the input" in capsys.readouterr().err
    assert _bytes(photos.iterdir()) == before


def _other_commands(tmp_path: Path, model: Path) -> list[list[str]]:
    """One form per command that takes inputs, each with an output that is one of them."""
    annotations = tmp_path / "gt.json"
    annotations.write_text("[]")
    weights = tmp_path / "official.pt"
    weights.write_bytes(b"not really")
    mean_face = tmp_path / "mean_face.txt"
    mean_face.write_text("0|0|0|0\n")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really a video")
    run = tmp_path / "run"
    run.mkdir()
    init = run / "best.safetensors"
    init.write_bytes(model.read_bytes())
    return [
        ["video", str(video), "--model", str(model), "--out", str(video)],
        ["video", str(video), "--model", str(model), "--jsonl", str(video)],
        ["evaluate", "--annotations", str(annotations), "--predictions", str(annotations), "--config", "wflw",
         "--json", str(annotations)],
        ["benchmark", "--model", str(model), "--config", "wflw", "--dataset", f"spiga-json:{annotations}",
         "--predictions", str(annotations)],
        ["export", "--model", str(model), "--out", str(model)],
        ["convert", str(weights), "--config", "wflw", "--mean-face", str(mean_face), "--out", str(mean_face)],
        ["estimate-mean-face", "--dataset", f"custom:{annotations}", "--out", str(annotations)],
        ["train", "--train", f"custom:{annotations}", "--init", str(init), "--out", str(run), "--no-progress"],
    ]


def test_no_command_writes_over_its_inputs(tiny_checkpoint, tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    model.write_bytes(tiny_checkpoint.read_bytes())
    forms = _other_commands(tmp_path, model)
    before = _bytes(p for p in tmp_path.rglob("*") if p.is_file())
    for form in forms:
        assert cli.main(form) == 2, form
        err = capsys.readouterr().err.strip()
        assert "would overwrite the input" in err and len(err.splitlines()) == 1, (form, err)
    assert _bytes(p for p in tmp_path.rglob("*") if p.is_file()) == before


def test_outputs_apart_resolves_links_and_ignores_what_is_not_there(tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(b"x")
    link = tmp_path / "link.png"
    link.symlink_to(source)
    with pytest.raises(OutputError, match="--out .*link.png would overwrite the input .*in.png"):
        check_outputs_apart([source], {"--out": link})
    check_outputs_apart([source, tmp_path / "missing.png"], {"--out": tmp_path / "missing.png", "--json": "-"})


# --- the record and the messages -----------------------------------------------------------------


def test_image_record_is_the_one_record():
    assert image_record("a.png", 4, 3, [{"box": [0, 0, 1, 1]}]) == {
        "path": "a.png", "width": 4, "height": 3, "faces": [{"box": [0, 0, 1, 1]}]}
    assert image_record("a.png", error="broken") == {"path": "a.png", "error": "broken"}


def test_no_face_is_said_once_per_image(quick_load, tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    for name in ("one.png", "two.png"):
        cv2.imwrite(str(folder / name), np.full((120, 160, 3), 90, np.uint8))
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"one.png": [], "two.png": []}))
    assert cli.main(_align(folder, tiny_checkpoint, "--detector", f"file:{boxes}",
                           "--jsonl", str(tmp_path / "out.jsonl"))) == 0
    err = capsys.readouterr().err
    for name in ("one.png", "two.png"):
        assert err.count(f"spiga: no face found in {folder / name}") == 1, err
    single = folder / "one.png"
    assert cli.main(_align(single, tiny_checkpoint, "--detector", f"file:{boxes}")) == 0
    captured = capsys.readouterr()
    assert captured.err.count(f"spiga: no face found in {single}") == 1
    assert json.loads(captured.out)["images"][0]["faces"] == []


def test_interrupted_names_resume_where_it_applies(tiny_checkpoint, photos, tmp_path, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run_align", interrupted)
    assert cli.main(_align(photos, tiny_checkpoint, "--jsonl", str(tmp_path / "out.jsonl"))) == 130
    assert "--resume" in capsys.readouterr().err
    assert cli.main(_align(photos, tiny_checkpoint)) == 130
    assert capsys.readouterr().err.strip() == "spiga: interrupted"


def test_the_stop_signal_is_announced_once(caplog, monkeypatch):
    from spiga.train.loop import _StopRequest

    stop = _StopRequest()
    with caplog.at_level(logging.WARNING, logger="spiga.train.loop"):
        stop._handle(2, None)
        stop._handle(2, None)  # Ctrl-C again
        worker = _StopRequest()
        worker._pid = -1  # as in a forked data-loading worker, which gets the same SIGINT
        worker._handle(2, None)
    assert [r.getMessage() for r in caplog.records].count(
        "signal 2: saving a resumable checkpoint and stopping") == 1
    assert stop.requested and not worker.requested
