"""`spiga benchmark` end to end with a real (tiny) model and a small SPIGA-JSON test set."""

from __future__ import annotations

import json

import cv2
import numpy as np

from spiga.cli import main as cli
from spiga.landmarks import WFLW_98


def test_benchmark_writes_predictions_in_annotation_order(tiny_checkpoint, face_image, tmp_path):
    (tmp_path / "images").mkdir()
    entries = []
    rng = np.random.default_rng(0)
    for i in range(3):
        name = f"images/{i}.png"
        cv2.imwrite(str(tmp_path / name), np.roll(face_image, 10 * i, axis=1))
        box = [60.0 + 10 * i, 35.0, 110.0, 130.0]
        landmarks = np.column_stack([rng.uniform(box[0], box[0] + box[2], 98), rng.uniform(box[1], box[1] + box[3], 98)])
        entries.append({"imgpath": name, "bbox": box, "headpose": [0, 0, 0, 0, 0, 3], "ids": list(WFLW_98.ids),
                        "landmarks": landmarks.tolist(), "visible": [1] * 98})
    (tmp_path / "test.json").write_text(json.dumps(entries))
    predictions, metrics = tmp_path / "pred.json", tmp_path / "metrics.json"
    code = cli(["benchmark", "--model", str(tiny_checkpoint), "--dataset", f"spiga-json:{tmp_path / 'test.json'}",
                "--predictions", str(predictions), "--config", "wflw", "--json", str(metrics), "--device", "cpu",
                "--no-progress"])
    assert code == 0
    predicted = json.loads(predictions.read_text())
    assert [p["imgpath"] for p in predicted] == [e["imgpath"] for e in entries]
    assert all(len(p["landmarks"]) == 98 for p in predicted)
    figures = json.loads(metrics.read_text())
    assert figures["landmarks"]["norm"] == "corners" and figures["landmarks"]["threshold"] == 10
    assert figures["landmarks"]["nme"] > 0


def test_benchmark_reads_training_formats(tiny_checkpoint, tmp_path):
    """A custom-format (JSON Lines) test set through the training readers."""
    from spiga.data.synthetic import write_synthetic_dataset
    from spiga.evaluate import load_test_set
    from spiga.landmarks import read_landmark_set

    paths = write_synthetic_dataset(tmp_path / "syn", 3, seed=5)
    landmarks = read_landmark_set(paths["landmark_set"])
    test_set = load_test_set(f"custom:{paths['annotations']}", landmarks)
    assert len(test_set.annotations) == 3
    assert test_set.image_path(0).is_file()
    assert test_set.annotations.landmarks.shape == (3, 32, 2)


def _custom_layout_model(tmp_path):
    """A 32-point synthetic thermal test set and a random model of its layout."""
    from spiga.data.synthetic import FACE_POINTS, write_synthetic_dataset
    from spiga.testing import random_checkpoint

    paths = write_synthetic_dataset(tmp_path / "test", 2, seed=3, domain="thermal")
    model = random_checkpoint(tmp_path / "model.safetensors", landmark_set=paths["landmark_set"],
                              mean_face_3d=FACE_POINTS)
    return paths, model


def test_benchmark_scores_a_custom_layout_by_its_landmark_set_file(tmp_path):
    """A layout of no benchmark: its own landmark-set file, the given norm and threshold, no --config."""
    paths, model = _custom_layout_model(tmp_path)
    predictions, metrics = tmp_path / "pred.json", tmp_path / "metrics.json"
    code = cli(["benchmark", "--model", str(model), "--landmark-set", str(paths["landmark_set"]),
                "--norm", "corners", "--threshold", "8", "--dataset", f"custom:{paths['annotations']}",
                "--predictions", str(predictions), "--json", str(metrics), "--device", "cpu", "--no-progress"])
    assert code == 0
    assert all(len(p["landmarks"]) == 32 for p in json.loads(predictions.read_text()))
    figures = json.loads(metrics.read_text())["landmarks"]
    assert (figures["norm"], figures["threshold"], figures["num_images"]) == ("corners", 8, 2)


def test_benchmark_of_a_custom_layout_says_how(tmp_path, capsys):
    paths, model = _custom_layout_model(tmp_path)
    common = ["benchmark", "--model", str(model), "--dataset", f"custom:{paths['annotations']}",
              "--predictions", str(tmp_path / "pred.json"), "--device", "cpu", "--no-progress"]
    assert cli(common) == 2
    assert "--landmark-set" in capsys.readouterr().err
    assert cli([*common, "--config", "wflw", "--landmark-set", str(paths["landmark_set"])]) == 2
    assert "not both" in capsys.readouterr().err
