"""Every command x every class of bad input that applies: exit status 2 (or the documented
one) and at most two lines on stderr, never a traceback.

The commands run in-process (`spiga.cli.main`), their stderr and log records counted
together; the forms the issue checks from outside also run as real processes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spiga.checkpoint import MEAN_FACE_KEY
from spiga.cli import main
from spiga.landmarks import WFLW_98

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
MEAN_FACE_98 = "\n".join(f"{i}|{0.01 * i:.3f}|{0.02 * (i % 7):.3f}|{0.5 - 0.003 * i:.3f}" for i in WFLW_98.ids)


def _run(argv: list[str], capsys, caplog, status: int = 2) -> str:
    """`spiga ARGV` in-process: the exit status, and one short message at most (stderr lines
    and warning log records together); returns stderr."""
    with caplog.at_level(logging.WARNING):
        code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    lines += [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    caplog.clear()
    assert code == status, (argv, err)
    assert "Traceback" not in err
    assert len(lines) <= 2, lines
    if status == 2:
        assert lines and lines[0].startswith("spiga: error: "), lines
    return err


# --------------------------------------------------------------------------- bad files


def _jpeg() -> bytes:
    y, x = np.mgrid[0:120, 0:160]
    image = np.stack([x * 2 % 256, y * 2 % 256, (x + y) % 256], axis=2).astype(np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def _huge_png() -> bytes:
    """A valid PNG signature and header declaring 100000 x 100000 pixels (no data)."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _write_bad(folder: Path, kind: str, suffix: str, good: bytes | None = None) -> Path:
    """A file (or folder) of one bad class, named with `suffix`."""
    path = folder / f"{kind}{suffix}"
    if kind == "missing":
        return path
    if kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("these are my notes, not the file you want\n")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:
        raise ValueError(kind)
    return path


IMAGE_KINDS = ("missing", "folder", "text", "garbage", "empty", "truncated", "damaged", "huge")


def _bad_image(folder: Path, kind: str) -> Path:
    if kind == "damaged":  # cut short within the data, an end marker appended: decodes with gray rows
        path = folder / "damaged.jpg"
        path.write_bytes(_jpeg()[: len(_jpeg()) // 2] + b"\xff\xd9")
        return path
    if kind == "huge":
        path = folder / "huge.png"
        path.write_bytes(_huge_png())
        return path
    return _write_bad(folder, kind, ".jpg", _jpeg())


@pytest.fixture(scope="module")
def model_variants(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoint, and checkpoints broken in every way a file can be."""
    folder = tmp_path_factory.mktemp("models")
    good = tiny_checkpoint.read_bytes()
    with safe_open(str(tiny_checkpoint), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(tiny_checkpoint))
    weight = next(k for k, v in tensors.items() if k.endswith(".weight") and v.is_floating_point())
    variance = next(k for k in tensors if k.endswith("running_var"))

    def changed(name: str, key: str, value: torch.Tensor) -> Path:
        path = folder / f"{name}.safetensors"
        save_file({**tensors, key: value}, str(path), metadata=metadata)
        return path

    variants = {kind: _write_bad(folder, kind, ".safetensors", good)
                for kind in ("missing", "folder", "text", "garbage", "empty", "truncated")}
    variants.update({
        "nan-mean-face": changed("nan-mean-face", MEAN_FACE_KEY, torch.full_like(tensors[MEAN_FACE_KEY], float("nan"))),
        "inf-weight": changed("inf-weight", weight, torch.full_like(tensors[weight], float("inf"))),
        "huge-weight": changed("huge-weight", weight, torch.full_like(tensors[weight], 1e30)),
        "negative-variance": changed("negative-variance", variance, -torch.ones_like(tensors[variance])),
        "int-weight": changed("int-weight", weight, tensors[weight].to(torch.int32)),
        "bool-weight": changed("bool-weight", weight, tensors[weight] > 0),
        "complex-weight": changed("complex-weight", weight, tensors[weight].to(torch.complex64)),
    })
    pt = folder / "official.pt"
    torch.save({"a": torch.zeros(3)}, pt)
    onnx = folder / "model.onnx"
    onnx.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x032.1" + bytes(200))
    variants.update({"pytorch-pickle": pt, "onnx": onnx})
    return variants


MODEL_KINDS = ("missing", "folder", "text", "garbage", "empty", "truncated", "nan-mean-face", "inf-weight",
               "huge-weight", "negative-variance", "int-weight", "bool-weight", "complex-weight", "pytorch-pickle",
               "onnx")


# --------------------------------------------------------------------------- commands that run a model


@pytest.fixture(scope="module")
def benchmark_set(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    cv2.imwrite(str(folder / "face.png"), np.full((96, 96, 3), 90, np.uint8))
    entry = {"imgpath": "face.png", "bbox": [10, 10, 70, 70], "headpose": [0, 0, 0, 0, 0, 3],
             "ids": list(WFLW_98.ids), "landmarks": [[20 + i % 50, 20 + i // 2] for i in range(98)],
             "visible": [1] * 98}
    (folder / "test.json").write_text(json.dumps([entry]))
    return folder


def _model_command(command: str, model: Path, tmp_path: Path, benchmark_set: Path, image: Path) -> list:
    out = tmp_path / "out"
    return {
        "align": ["align", image, "--model", model, "--box", 10, 10, 60, 60, "--device", "cpu"],
        "video": ["video", image, "--model", model, "--device", "cpu", "--jsonl", out],
        "benchmark": ["benchmark", "--model", model, "--dataset", f"spiga-json:{benchmark_set / 'test.json'}",
                      "--predictions", out, "--config", "wflw", "--device", "cpu", "--no-progress"],
        "export": ["export", "--model", model, "--out", out],
        "serve": ["serve", "--model", model, "--device", "cpu", "--port", "1"],
    }[command]


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("command", ["align", "video", "benchmark", "export", "serve"])
def test_a_bad_model_is_one_line(command, kind, model_variants, benchmark_set, image_file, tmp_path, capsys,
                                 caplog, monkeypatch):
    if command == "serve":
        pytest.importorskip("fastapi")
        import spiga.serve

        monkeypatch.setattr(spiga.serve, "limit_malloc_arenas", lambda *a: False)  # a process-wide setting
    model = model_variants[kind]
    err = _run(_model_command(command, model, tmp_path, benchmark_set, image_file), capsys, caplog)
    if command != "export" or "onnx" not in err:  # export may first say that it needs the onnx package
        assert model.name in err
    assert not (tmp_path / "out").exists()


def test_model_errors_name_the_tensor_and_the_fix(model_variants, image_file, capsys, caplog):
    expected = {"nan-mean-face": f"tensor {MEAN_FACE_KEY} holds NaN", "inf-weight": "holds NaN or infinite",
                "huge-weight": "magnitude 1e+30", "negative-variance": "running_var (a batch-norm variance) holds "
                                                                       "negative", "int-weight": "is int32",
                "bool-weight": "is bool", "complex-weight": "is complex64", "onnx": "--backend onnxruntime",
                "pytorch-pickle": f"spiga convert {model_variants['pytorch-pickle']} "}
    for kind, words in expected.items():
        err = _run(["align", image_file, "--model", model_variants[kind], "--box", 10, 10, 60, 60], capsys, caplog)
        assert words in err, (kind, err)


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_a_bad_image_is_one_line(kind, tiny_checkpoint, tmp_path, capsys, caplog):
    image = _bad_image(tmp_path, kind)
    if kind == "folder":  # a folder is the many-images form: an empty one is an error
        err = _run(["align", image, "--model", tiny_checkpoint, "--box", 1, 1, 9, 9], capsys, caplog)
    else:
        err = _run(["align", image, "--model", tiny_checkpoint, "--box", 1, 1, 9, 9, "--json", tmp_path / "o.json"],
                   capsys, caplog)
        assert not (tmp_path / "o.json").exists()
    assert image.name in err


def test_damaged_jpeg_is_refused_unless_allowed(tiny_checkpoint, tmp_path, capsys, caplog, benchmark_set):
    image = _bad_image(tmp_path, "damaged")
    err = _run(["align", image, "--model", tiny_checkpoint, "--box", 1, 1, 60, 60], capsys, caplog)
    assert "--allow-damaged" in err
    main(["align", str(image), "--model", str(tiny_checkpoint), "--box", "1", "1", "60", "60", "--allow-damaged",
          "--json", str(tmp_path / "o.json")])
    assert json.loads((tmp_path / "o.json").read_text())["images"][0]["width"] == 160
    # the many-images form and benchmark take the same option
    record = tmp_path / "o.jsonl"
    assert main(["align", str(image), "--model", str(tiny_checkpoint), "--box", "1", "1", "60", "60",
                 "--no-progress", "--jsonl", str(record)]) == 1
    assert "damaged or truncated JPEG data" in json.loads(record.read_text())["error"]
    assert main(["align", str(image), "--model", str(tiny_checkpoint), "--box", "1", "1", "60", "60",
                 "--no-progress", "--jsonl", str(tmp_path / "ok.jsonl"), "--allow-damaged"]) == 0
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "face.png").write_bytes(image.read_bytes())
    (bench / "test.json").write_text((benchmark_set / "test.json").read_text())
    argv = ["benchmark", "--model", tiny_checkpoint, "--dataset", f"spiga-json:{bench / 'test.json'}",
            "--predictions", tmp_path / "p.json", "--config", "wflw", "--no-progress"]
    capsys.readouterr()
    assert "face.png: damaged" in _run(argv, capsys, caplog)
    capsys.readouterr()
    assert main([str(a) for a in argv] + ["--allow-damaged"]) == 0


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "garbage", "empty"])
def test_a_bad_video_is_one_line(kind, tiny_checkpoint, tmp_path, capsys, caplog):
    video = _write_bad(tmp_path, kind, ".mp4")
    assert video.name in _run(["video", video, "--model", tiny_checkpoint, "--detector", "none",
                               "--jsonl", tmp_path / "o.jsonl", "--no-progress"], capsys, caplog)


# --------------------------------------------------------------------------- convert


@pytest.fixture(scope="module")
def official_pt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("official") / "w.pt"
    torch.save({"a": torch.zeros(1000)}, path)
    return path


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "garbage", "empty", "truncated", "safetensors"])
def test_convert_says_what_a_bad_weights_file_is(kind, official_pt, tiny_checkpoint, tmp_path, capsys, caplog):
    weights = tiny_checkpoint if kind == "safetensors" else _write_bad(tmp_path, kind, ".pt", official_pt.read_bytes())
    mean_face = tmp_path / "mean_face.txt"
    mean_face.write_text(MEAN_FACE_98)
    err = _run(["convert", weights, "--config", "wflw", "--mean-face", mean_face, "--out", tmp_path / "x"],
               capsys, caplog)
    assert str(weights) in err
    words = {"missing": "no such file", "folder": "directory", "text": "a text file", "garbage": "not a PyTorch file",
             "empty": "empty file", "truncated": "truncated", "safetensors": "needs no conversion"}[kind]
    assert words in err
    assert "weights_only" not in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "garbage", "nan"])
def test_convert_refuses_a_bad_mean_face(kind, official_pt, tmp_path, capsys, caplog):
    if kind == "nan":
        mean_face = tmp_path / "nan.txt"
        lines = MEAN_FACE_98.splitlines()
        lines[3] = f"{WFLW_98.ids[3]}|nan|0|0.5"
        mean_face.write_text("\n".join(lines))
    else:
        mean_face = _write_bad(tmp_path, kind, ".txt")
    # the mean face is read before the weights are fitted, so any readable state_dict will do
    err = _run(["convert", official_pt, "--config", "wflw", "--mean-face", mean_face, "--out", tmp_path / "x"],
               capsys, caplog)
    assert mean_face.name in err


def test_convert_hint_keeps_the_folder(tmp_path, capsys, caplog):
    folder = tmp_path / "some dir"
    folder.mkdir()
    weights = folder / "w.pt"
    torch.save({"a": torch.zeros(3)}, weights)
    err = _run(["align", _bad_image(tmp_path, "damaged"), "--model", weights, "--allow-damaged", "--box", 1, 1, 9, 9],
               capsys, caplog)
    assert f"spiga convert '{weights}' --config" in err


# --------------------------------------------------------------------------- evaluate, estimate-mean-face


JSON_KINDS = ("missing", "folder", "text", "garbage", "empty", "truncated", "nan")


def _bad_json(folder: Path, kind: str, good: list) -> Path:
    if kind == "nan":
        path = folder / "nan.json"
        path.write_text(json.dumps(good).replace("20", "NaN", 1))
        return path
    return _write_bad(folder, kind, ".json", json.dumps(good).encode())


@pytest.mark.parametrize("which", ["annotations", "predictions"])
@pytest.mark.parametrize("kind", JSON_KINDS)
def test_evaluate_bad_files(which, kind, benchmark_set, tmp_path, capsys, caplog):
    good = json.loads((benchmark_set / "test.json").read_text())
    files = {"annotations": benchmark_set / "test.json", "predictions": benchmark_set / "test.json"}
    files[which] = _bad_json(tmp_path, kind, good)
    err = _run(["evaluate", "--annotations", files["annotations"], "--predictions", files["predictions"],
                "--config", "wflw"], capsys, caplog)
    assert files[which].name in err


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "garbage", "empty", "truncated", "long-cell"])
def test_estimate_mean_face_bad_annotations(kind, tmp_path, capsys, caplog):
    header = "image," + ",".join(f"x{i},y{i}" for i in range(98)) + ",tags\n"
    row = "a.png," + ",".join(f"{i},{i % 9}" for i in range(98))
    good = (header + row + ",t\n").encode()
    if kind == "long-cell":
        path = tmp_path / "long.csv"
        path.write_text(header + row + ",ok\n" + row + "," + "t" * 200_000 + "\n")
    else:
        path = _write_bad(tmp_path, kind, ".csv", good)
    err = _run(["estimate-mean-face", "--dataset", f"custom:{path}", "--landmark-set", "wflw98",
                "--out", tmp_path / "mf.txt"], capsys, caplog)
    assert path.name in err
    if kind == "long-cell":
        assert f"{path}:3: a cell longer than" in err


def test_a_long_csv_cell_within_the_limit_is_read(tmp_path):
    from spiga.data import read_dataset

    header = "image," + ",".join(f"x{i},y{i}" for i in range(98)) + ",tags\n"
    row = "a.png," + ",".join(f"{i},{i % 9}" for i in range(98))
    path = tmp_path / "long.csv"
    path.write_text(header + row + "," + "t" * 100_000 + "\n")
    data = read_dataset(f"custom:{path}", "wflw98", require_images=False)
    assert len(data) == 1


# --------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    from spiga.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "train", 4, seed=5, size=128)


def _train_argv(data: dict[str, Path], out: Path, *extra) -> list:
    return ["train", "--train", f"custom:{data['annotations']}", "--landmark-set", data["landmark_set"],
            "--mean-face", data["mean_face"], "--model-size", "tiny", "--batch-size", "2", "--workers", "0",
            "--device", "cpu", "--no-progress", "--out", out, *extra]


def _resume_state(data: dict[str, Path], out: Path, **change) -> Path:
    """A finished run's resume state (2 of 2 steps), with `change` applied."""
    from spiga.train import TrainConfig

    config = TrainConfig(train=[f"custom:{data['annotations']}"], landmark_set=str(data["landmark_set"]),
                         mean_face=str(data["mean_face"]), model_size="tiny", batch_size=2, loader_workers=0,
                         device="cpu", max_steps=2, out=str(out), progress=False)
    state = {"model": {"w": torch.ones(3)}, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {},
             "epoch": 1, "step": 2, "batch_in_epoch": 0, "best_nme": None, "history": [],
             "config": config.to_dict(), "torch_rng": torch.get_rng_state(), **change}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "last.resume.pt")
    return out


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "garbage", "empty", "truncated", "nan", "not-a-state"])
def test_a_bad_resume_state_is_one_line(kind, tiny_data, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    if kind == "nan":
        _resume_state(tiny_data, run, model={"w": torch.tensor([1.0, float("nan")])})
    elif kind == "not-a-state":
        run.mkdir()
        torch.save({"weights": torch.ones(2)}, run / "last.resume.pt")
    elif kind != "missing":
        good = _resume_state(tiny_data, tmp_path / "good") / "last.resume.pt"
        run.mkdir()
        _write_bad(run, kind, "", good.read_bytes()).rename(run / "last.resume.pt")
    err = _run(["train", "--resume", run], capsys, caplog)
    assert "last.resume.pt" in err and "weights_only" not in err
    if kind == "nan":
        assert "NaN" in err and "--lr" in err


def test_resume_of_a_finished_run_says_so(tiny_data, tmp_path, capsys):
    run = _resume_state(tiny_data, tmp_path / "run")
    assert main(["train", "--resume", str(run)]) == 0
    captured = capsys.readouterr()
    assert "already finished (step 2" in captured.out and "--max-steps" in captured.out
    assert captured.err == ""


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "garbage", "empty"])
def test_bad_training_data_is_one_line(kind, tiny_data, tmp_path, capsys, caplog):
    data = {**tiny_data, "annotations": _write_bad(tmp_path, kind, ".jsonl")}
    assert "jsonl" in _run(_train_argv(data, tmp_path / "out"), capsys, caplog)


def test_a_nan_mean_face_for_training_is_one_line(tiny_data, tiny_checkpoint, model_variants, tmp_path, capsys,
                                                  caplog):
    argv = _train_argv(tiny_data, tmp_path / "out")
    argv[argv.index("--mean-face") + 1] = model_variants["nan-mean-face"]
    assert "nan-mean-face" in _run(argv, capsys, caplog)


def test_a_frozen_random_cnn_is_refused_unless_meant(tiny_data, tmp_path, capsys, caplog):
    for extra in (["--stage", "3"], ["--freeze", "cnn"]):
        err = _run(_train_argv(tiny_data, tmp_path / "out", *extra), capsys, caplog)
        assert "--init" in err and "--allow-random-frozen" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the forms checked from outside


def test_the_exact_forms_as_processes(tiny_data, model_variants, tmp_path):
    """Run as a user would: exit status, at most two lines on stderr, no traceback."""
    notes = tmp_path / "notes.txt"
    notes.write_text("remember the milk\n")
    mean_face = tmp_path / "F.txt"
    mean_face.write_text(MEAN_FACE_98)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.full((80, 80, 3), 100, np.uint8))
    finished = _resume_state(tiny_data, tmp_path / "finished")
    forms = {
        "nan mean face": (["align", image, "--model", model_variants["nan-mean-face"], "--box", 5, 5, 60, 60], 2),
        "convert notes": (["convert", notes, "--config", "wflw", "--mean-face", mean_face, "--out", tmp_path / "X"], 2),
        "resume finished": (["train", "--resume", finished], 0),
        # a diverging run: one line naming the step and the fix, nothing written after it
        "diverging": (_train_argv(tiny_data, tmp_path / "diverged", "--lr", "1e8", "--max-steps", "3"), 2),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    processes = {name: subprocess.Popen([sys.executable, "-m", "spiga", *map(str, argv)], env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for name, (argv, _) in forms.items()}
    for name, process in processes.items():
        out, err = process.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert process.returncode == forms[name][1], (name, err)
        assert "Traceback" not in err and len(lines) <= 2, (name, err)
        if name == "diverging":
            assert "diverged at step 1" in err and "lower --lr" in err
        if name == "resume finished":
            assert "already finished" in out
    assert not (tmp_path / "X").exists()
    assert not (tmp_path / "diverged" / "last.safetensors").exists()
