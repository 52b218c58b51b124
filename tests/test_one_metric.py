"""One metric and one reader: a fork-style SPIGA JSON file (68 points, `[null, null]` for points
the data set does not annotate, some faces without eye corners) through `spiga train`,
`spiga evaluate` and `spiga benchmark`, which must agree on its NME."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import shared_path
from spiga.cli import main as cli
from spiga.landmarks import IBUG_68

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest: the tiny model on a shared machine

UNANNOTATED = (0, 1, 16)  # jaw points the fork's thermal files leave out
CORNERS = (36, 45)  # outer eye corners (rows of the 68-point layout)


def _fork_entries(root: Path, rng: np.random.Generator, count: int, first: int, no_corners: set[int]) -> list[dict]:
    """Entries with `[null, null]` points, written with their images under `root/images`."""
    template = np.random.default_rng(7).uniform(0.15, 0.85, (68, 2))
    entries = []
    for i in range(count):
        name = f"images/f{first + i}.png"
        image = np.full((160, 200, 3), 40, np.uint8)
        cv2.ellipse(image, (100, 80), (45, 60), 0, 0, 360, (150 + 15 * i, 170, 210), -1)
        cv2.imwrite(str(root / name), cv2.add(image, rng.integers(0, 30, image.shape, dtype=np.uint8)))
        box = [55.0 + 2 * i, 20.0, 90.0, 120.0]
        points = ((template + rng.normal(0, 0.02, template.shape)) * box[2:] + box[:2]).tolist()
        for k in UNANNOTATED + (CORNERS if i in no_corners else ()):
            points[k] = [None, None]
        entries.append({"imgpath": name, "bbox": box, "ids": list(IBUG_68.ids), "landmarks": points,
                        "visible": [1.0] * 68})
    return entries


def _header(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["spiga"])


@pytest.fixture(scope="module")
def fork(tmp_path_factory):
    """The files (train F, validation G, image root, tiny 68-point --init checkpoint), one
    `spiga train --init M --stage 3` run on them, and the predictions its validations made."""
    from spiga.checkpoint import build_model, save_checkpoint
    from spiga.model import ModelConfig
    from spiga.train import loop

    root = tmp_path_factory.mktemp("fork")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    train_file, val_file = root / "train.json", root / "val.json"
    train_file.write_text(json.dumps(_fork_entries(root, rng, 4, 0, no_corners={1, 2})))
    val_file.write_text(json.dumps(_fork_entries(root, rng, 5, 10, no_corners={0, 3})))
    torch.manual_seed(0)
    mean_face = np.column_stack([rng.uniform(-0.3, 0.1, 68), rng.uniform(-0.8, 0.8, 68), rng.uniform(-1, 1, 68)])
    init = save_checkpoint(root / "init.safetensors",
                           build_model(ModelConfig.sized("tiny", 68, IBUG_68.num_edges), IBUG_68, mean_face).eval(),
                           IBUG_68)
    predictions: list[np.ndarray] = []
    original = loop.predict_validation

    def recording(*args, **kwargs):
        predictions.append(original(*args, **kwargs))
        return predictions[-1]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from more on a shared machine
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(loop, "predict_validation", recording)
            assert cli(["train", "--init", str(init), "--stage", "3", "--train", f"spiga-json:{train_file}:{root}",
                        "--val", f"spiga-json:{val_file}:{root}", "--max-steps", "2", "--batch-size", "2",
                        "--workers", "0", "--device", "cpu", "--no-progress", "--no-augment",
                        "--out", str(root / "run")]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "train": train_file, "val": val_file, "best": root / "run" / "best.safetensors",
            "predictions": predictions}


def _evaluate(tmp_path: Path, annotations: Path, predictions: Path, *options: str) -> dict:
    out = tmp_path / "figures.json"
    assert cli(["evaluate", "--annotations", str(annotations), "--predictions", str(predictions), *options,
                "--json", str(out)]) == 0
    return json.loads(out.read_text())["landmarks"]


def test_the_checkpoint_records_its_validation_scoring(fork):
    validation = _header(fork["best"])["validation"]
    # 68-point SPIGA JSON is scored as 300W private: the landmark box, which faces without corners allow
    assert validation["norm"] == "lnd_bbox" and validation["threshold"] == 7 and validation["config"] == "300wprivate"
    assert validation["nme"] > 0 and validation["faces"] == 5
    assert _header(fork["root"] / "run" / "last.safetensors")["validation"] == validation  # one validation


def test_training_nme_equals_evaluate_on_the_same_predictions(fork, tmp_path):
    """Training's figure is `spiga evaluate`'s on the predictions training made."""
    from spiga.evaluate import read_spiga_json, write_spiga_json
    from spiga.evaluate.formats import Annotations

    validation = _header(fork["best"])["validation"]
    gt = read_spiga_json(fork["val"], IBUG_68)
    pred = fork["predictions"][-1]  # the best checkpoint's (its only epoch's) validation
    count = len(gt)
    write_spiga_json(tmp_path / "pred.json", Annotations(
        "training", IBUG_68, gt.paths, gt.boxes, pred, np.ones((count, 68), bool), np.ones((count, 68), bool)))
    figures = _evaluate(tmp_path, fork["val"], tmp_path / "pred.json", "--config", validation["config"],
                        "--norm", validation["norm"])
    assert figures["nme"] == pytest.approx(validation["nme"], rel=1e-12)
    assert figures["fr"] == pytest.approx(validation["fr"]) and figures["auc"] == pytest.approx(validation["auc"])


def test_train_evaluate_and_benchmark_give_one_figure(fork, tmp_path):
    """The three figures of the issue: the checkpoint's, `spiga benchmark --norm` (its config
    from the header), and `spiga evaluate` on the benchmark's predictions."""
    validation = _header(fork["best"])["validation"]
    predictions, figures = tmp_path / "pred.json", tmp_path / "bench.json"
    assert cli(["benchmark", "--model", str(fork["best"]), "--dataset", f"spiga-json:{fork['val']}:{fork['root']}",
                "--norm", validation["norm"], "--predictions", str(predictions), "--json", str(figures),
                "--device", "cpu", "--no-progress"]) == 0
    benchmark = json.loads(figures.read_text())["landmarks"]
    assert benchmark["norm"] == validation["norm"]
    assert benchmark["nme"] == pytest.approx(validation["nme"], rel=0.005)
    evaluated = _evaluate(tmp_path, fork["val"], predictions, "--config", "300wprivate", "--norm", validation["norm"])
    assert evaluated["nme"] == pytest.approx(benchmark["nme"], rel=1e-12)
    assert all(len(entry["landmarks"]) == 68 for entry in json.loads(predictions.read_text()))


def test_benchmark_reads_the_fork_file(fork, tmp_path):
    """`spiga benchmark --model M --config 300wprivate --dataset spiga-json:F:ROOT --predictions P --json OUT`."""
    out = tmp_path / "figures.json"
    assert cli(["benchmark", "--model", str(fork["best"]), "--config", "300wprivate", "--dataset",
                f"spiga-json:{fork['train']}:{fork['root']}", "--predictions", str(tmp_path / "p.json"),
                "--json", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert json.loads(out.read_text())["landmarks"]["num_images"] == 4


def test_evaluate_scores_annotated_points_only(fork, tmp_path):
    """`spiga evaluate ... --db-info D --norm bbox --json OUT`: points written `[null, null]` are
    left out of the NME, whatever is predicted for them."""
    entries = json.loads(fork["val"].read_text())
    predicted = json.loads(json.dumps(entries))
    for entry in predicted:
        entry["landmarks"] = [[1e4, -1e4] if p[0] is None else [p[0] + 3.0, p[1] + 4.0] for p in entry["landmarks"]]
    (tmp_path / "pred.json").write_text(json.dumps(predicted))
    (tmp_path / "db_info.json").write_text(json.dumps({"norm": {"bbox": 7, "lnd_bbox": 7}, "test_subsets": {}}))
    db_info = ("--config", "300wprivate", "--db-info", str(tmp_path / "db_info.json"))
    figures = _evaluate(tmp_path, fork["val"], tmp_path / "pred.json", *db_info, "--norm", "bbox")
    expected = np.mean([5.0 / np.sqrt(e["bbox"][2] * e["bbox"][3]) * 100 for e in entries])
    assert figures["norm"] == "bbox" and figures["nme"] == pytest.approx(expected, rel=1e-9)
    # without --norm, the db_info file's first normalisation and its threshold (as the original evaluator)
    default = _evaluate(tmp_path, fork["val"], tmp_path / "pred.json", *db_info)
    assert (default["norm"], default["threshold"], default["nme"]) == ("bbox", 7, figures["nme"])


def test_a_norm_some_faces_cannot_use_is_refused_naming_them(fork, tmp_path, capsys):
    code = cli(["evaluate", "--annotations", str(fork["val"]), "--predictions", str(fork["val"]),
                "--config", "300wpublic"])  # corners: faces 0 and 3 lack them
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "2 of 5 faces" in err and "entry 0" in err and "entry 3" in err and "--norm" in err
    out = tmp_path / "run"
    code = cli(["train", "--init", str(fork["root"] / "init.safetensors"), "--stage", "3", "--train",
                f"spiga-json:{fork['train']}:{fork['root']}", "--val", f"spiga-json:{fork['val']}:{fork['root']}",
                "--val-norm", "corners", "--val-threshold", "8", "--max-steps", "1", "--batch-size", "2",
                "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "entry 0" in err and "entry 3" in err and "--val-norm" in err
    assert not out.exists()  # refused before any training step


def test_validation_scoring_follows_spiga_evaluate():
    from spiga.evaluate import benchmark_of, read_db_info, resolve_scoring, scoring_for
    from spiga.landmarks import WFLW_98

    assert benchmark_of("wflw", WFLW_98) == "wflw" and benchmark_of("spiga-json", WFLW_98) == "wflw"
    assert benchmark_of("spiga-json", IBUG_68) == "300wprivate" and benchmark_of("merlrav", IBUG_68) == "merlrav"
    assert scoring_for("wflw").norm == "corners" and scoring_for("merlrav").merlrav_convention
    assert (scoring_for(None).norm, scoring_for(None).threshold) == ("lnd_bbox", 7.0)  # a layout of no benchmark
    for name in ("300wprivate", "300wpublic", "cofw68", "merlrav", "wflw"):  # the official files agree
        info = read_db_info(shared_path("fixtures", "upstream", "annotations", name, "db_info.json"))
        assert resolve_scoring(name, db_info=info) == resolve_scoring(name)
