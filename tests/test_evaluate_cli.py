"""`spiga evaluate` and `spiga benchmark`, run in-process; the published COFW68 figures."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import spiga
from spiga.cli import main
from spiga.landmarks import IBUG_68, WFLW_98

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
UPSTREAM = ("fixtures", "upstream")


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)} (the project's shared fixtures), absent here")
    return path


def _read_published(path: Path) -> dict:
    """The nested `name { key: value }` text the original evaluator saves, as dicts."""
    root: dict = {}
    stack = [root]
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.endswith("{"):
            child: dict = {}
            stack[-1][line[:-1].strip()] = child
            stack.append(child)
        elif line == "}":
            stack.pop()
        elif ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            try:
                stack[-1][key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                stack[-1][key] = value
    return root["Metrics"]


@pytest.fixture(scope="module")
def cofw68():
    return SimpleNamespace(
        gt=shared_path(*UPSTREAM, "annotations", "cofw68", "test.json"),
        db_info=shared_path(*UPSTREAM, "annotations", "cofw68", "db_info.json"),
        pred=shared_path(*UPSTREAM, "results", "cofw68", "results_cofw68_test.json"),
        published=_read_published(shared_path(*UPSTREAM, "results", "cofw68", "metrics_cofw68_test.txt")),
    )


def _evaluate(tmp_path, cofw68, *extra) -> dict:
    out = tmp_path / "metrics.json"
    code = main(["evaluate", "--annotations", str(cofw68.gt), "--predictions", str(cofw68.pred),
                 "--config", "cofw68", "--db-info", str(cofw68.db_info), "--json", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


def test_cofw68_reproduces_the_published_figures(tmp_path, cofw68, capsys):
    got = _evaluate(tmp_path, cofw68)
    published = cofw68.published
    lm, pub = got["landmarks"], published["landmarks"]
    assert lm["norm"] == pub["nme_norm"] == "lnd_bbox" and lm["threshold"] == pub["nme_thr"] == 7
    for key in ("nme", "nme_p90", "nme_p95", "nme_p99", "fr"):
        assert lm[key] == pytest.approx(pub[key], abs=1e-6), key
    assert lm["auc"] == pytest.approx(pub["auc"], abs=0.05)
    assert "subsets" not in lm  # COFW68 has no test subsets
    for point_id, value in pub["nme_per_ldm"].items():
        assert lm["nme_per_landmark"][str(point_id)] == pytest.approx(value, abs=1e-6)
    pose = got["headpose"]
    for k, name in enumerate(("yaw", "pitch", "roll")):
        assert pose[f"mae_{name}"] == pytest.approx(published["headpose"]["mae_ypr"][k], abs=1e-6)
    assert pose["mae_mean"] == pytest.approx(published["headpose"]["mae_mean"], abs=1e-6)
    # Success rates: the original read them off a 1000-bin histogram; ours are exact counts.
    for name in ("yaw", "pitch", "roll"):
        for t, value in published["headpose"][f"sr_{name}"].items():
            assert pose["success_rate"][name][f"{float(t):g}"] == pytest.approx(value, abs=0.01)
    printed = capsys.readouterr().out
    assert "lnd_bbox" in printed and "2.5170" in printed


def _cofw68_arrays(cofw68):
    gt = json.loads(cofw68.gt.read_text())
    pred = json.loads(cofw68.pred.read_text())
    return (np.array([e["landmarks"] for e in gt]), np.array([e["landmarks"] for e in pred]),
            np.array([e["headpose"][:3] for e in gt]), np.array([e["headpose"][:3] for e in pred]))


def test_cofw68_corners_at_8(tmp_path, cofw68):
    got = _evaluate(tmp_path, cofw68, "--norm", "corners", "--threshold", "8")
    lm = got["landmarks"]
    assert lm["norm"] == "corners" and lm["threshold"] == 8
    # The definition written out directly: outer eye corners are points 36 and 45 of the 68.
    gt, pred, pose_gt, pose_pred = _cofw68_arrays(cofw68)
    d = np.linalg.norm(gt[:, 36] - gt[:, 45], axis=1)
    nme = (np.linalg.norm(pred - gt, axis=2) / d[:, None] * 100).mean(axis=1)
    assert lm["nme"] == pytest.approx(nme.mean(), abs=1e-6)
    assert lm["fr"] == pytest.approx(100 * np.mean(nme > 8), abs=1e-6)
    assert lm["fr"] > 0  # a few faces fail at corners@8, unlike lnd_bbox@7
    grid = np.linspace(0, 8, 80_001)
    ced = (nme[None, :] <= grid[:, None]).mean(axis=1)
    assert lm["auc"] == pytest.approx(np.trapezoid(ced, grid) / 8 * 100, abs=0.01)
    assert got["headpose"]["mae_mean"] == pytest.approx(np.abs(pose_gt - pose_pred).mean(), abs=1e-6)


def test_threshold_defaults_to_db_info_for_another_norm(tmp_path, cofw68):
    assert _evaluate(tmp_path, cofw68, "--norm", "corners")["landmarks"]["threshold"] == 8


def test_plot_writes_an_image(tmp_path, cofw68):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "ced.png"
    _evaluate(tmp_path, cofw68, "--plot", str(plot))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- small cases


def _entries(num: int, rng: np.random.Generator, path_of=lambda i: f"img{i}.png") -> list[dict]:
    entries = []
    for i in range(num):
        points = rng.uniform(20, 80, (68, 2))
        points[36], points[45] = (30, 40), (60, 80)  # outer eye corners 50 px apart
        entries.append({"imgpath": path_of(i), "bbox": [10.0, 10.0, 80.0, 80.0],
                        "headpose": [float(i), 0.0, 0.0, 0.0, 0.0, 1.0], "ids": list(IBUG_68.ids),
                        "landmarks": points.tolist(), "visible": [1.0] * 68})
    return entries


def test_subsets_from_db_info(tmp_path, capsys):
    gt = _entries(4, np.random.default_rng(0))
    pred = json.loads(json.dumps(gt))
    for i, shift in enumerate([0.5, 1.0, 4.5, 6.0]):  # 5 px = 10 %: NME 1, 2, 9, 12
        pred[i]["landmarks"] = (np.array(pred[i]["landmarks"]) + (shift * 0.6, shift * 0.8)).tolist()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    (tmp_path / "db_info.json").write_text(json.dumps({"norm": {"corners": 8}, "test_subsets":
                                                       {"easy": [0, 1], "hard": [2, 3]}}))
    out = tmp_path / "m.json"
    assert main(["evaluate", "--annotations", str(tmp_path / "gt.json"), "--predictions",
                 str(tmp_path / "pred.json"), "--config", "300wpublic", "--db-info", str(tmp_path / "db_info.json"),
                 "--json", str(out)]) == 0
    lm = json.loads(out.read_text())["landmarks"]
    assert lm["norm"] == "corners" and lm["threshold"] == 8
    assert lm["nme"] == pytest.approx(6.0) and lm["fr"] == pytest.approx(50.0)
    assert lm["subsets"]["easy"]["nme"] == pytest.approx(1.5) and lm["subsets"]["easy"]["fr"] == 0
    assert lm["subsets"]["hard"]["fr"] == 100 and lm["subsets"]["hard"]["auc"] == 0
    assert "easy" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("short", r"pred\.json: has 2 entries but .*gt\.json has 3"),
    ("nan", r"pred\.json: entry 1 \(img1\.png\): no prediction for landmark id"),  # NaN = not predicted
    ("unknown_id", r"pred\.json, entry 2: unknown landmark id 4242"),
    ("missing", r"pred\.json: entry 0 \(img0\.png\): no prediction for landmark id"),
    ("empty", r"pred\.json: the file is empty"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, case, message):
    gt = _entries(3, np.random.default_rng(1))
    pred = json.loads(json.dumps(gt))
    if case == "short":
        pred.pop()
    elif case == "nan":
        pred[1]["landmarks"][3][0] = float("nan")
    elif case == "unknown_id":
        pred[2]["ids"][0] = 4242
    elif case == "missing":
        for key in ("ids", "landmarks", "visible"):
            pred[0][key] = pred[0][key][:-1]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text("" if case == "empty" else json.dumps(pred))
    code = main(["evaluate", "--annotations", str(tmp_path / "gt.json"), "--predictions",
                 str(tmp_path / "pred.json"), "--config", "cofw68"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("spiga: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_pupils_on_wflw_is_refused(tmp_path, capsys):
    code = main(["evaluate", "--annotations", str(tmp_path / "gt.json"), "--predictions", str(tmp_path / "p.json"),
                 "--config", "wflw", "--norm", "pupils", "--threshold", "8"])
    assert code == 2 and "68-point layouts only" in capsys.readouterr().err


def test_norm_without_threshold_needs_one(tmp_path, capsys):
    gt = _entries(2, np.random.default_rng(2))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    code = main(["evaluate", "--annotations", str(tmp_path / "gt.json"), "--predictions", str(tmp_path / "gt.json"),
                 "--config", "cofw68", "--norm", "height"])
    assert code == 2 and "--threshold" in capsys.readouterr().err


# --------------------------------------------------------------------------- benchmark


class FakeAligner:
    """Answers each box with the annotated landmarks shifted by (3, 4) px and a fixed pose."""

    landmark_set = IBUG_68

    def __init__(self, truth: dict[tuple[str, tuple], np.ndarray]):
        self.truth = truth
        self.calls: list[tuple[str, int]] = []

    def align(self, image, boxes=None):
        self.calls.append((Path(image).name, len(boxes)))
        faces = []
        for box in boxes:
            points = self.truth[(Path(image).name, tuple(box))] + (3.0, 4.0)
            faces.append(SimpleNamespace(box=box, landmarks=points, score=1.0,
                                         headpose=SimpleNamespace(yaw=2.0, pitch=0.0, roll=0.0,
                                                                  tx=0.0, ty=0.0, tz=1.0)))
        return faces


def _benchmark_set(tmp_path):
    entries = _entries(3, np.random.default_rng(3), path_of=lambda i: f"images/img{min(i, 1)}.png")
    entries[2]["bbox"] = [50.0, 50.0, 40.0, 40.0]  # a second face in img1.png
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for name in ("img0.png", "img1.png"):
        (root / "images" / name).write_bytes(b"not read by the fake aligner")
    (root / "test.json").write_text(json.dumps(entries))
    truth = {(Path(e["imgpath"]).name, tuple(e["bbox"])): np.array(e["landmarks"]) for e in entries}
    return root, entries, FakeAligner(truth)


def test_benchmark_with_a_fake_aligner(tmp_path, monkeypatch, capsys):
    root, entries, aligner = _benchmark_set(tmp_path)
    loaded = []
    monkeypatch.setattr(spiga, "load", lambda model, device=None, **options: loaded.append((model, device)) or aligner,
                        raising=False)
    pred_path, metrics_path = tmp_path / "out" / "pred.json", tmp_path / "m.json"
    code = main(["benchmark", "--model", "spiga_300wpublic", "--dataset", f"spiga-json:{root / 'test.json'}",
                 "--predictions", str(pred_path), "--json", str(metrics_path), "--no-progress"])
    assert code == 0
    assert loaded == [("spiga_300wpublic", None)]
    # One call per image with all of its boxes.
    assert aligner.calls == [("img0.png", 1), ("img1.png", 2)]
    pred = json.loads(pred_path.read_text())
    assert [p["imgpath"] for p in pred] == [e["imgpath"] for e in entries]
    assert [p["bbox"] for p in pred] == [e["bbox"] for e in entries]
    np.testing.assert_allclose(pred[2]["landmarks"], np.array(entries[2]["landmarks"]) + (3, 4))
    assert pred[0]["ids"] == list(IBUG_68.ids) and pred[0]["headpose"][:3] == [2.0, 0.0, 0.0]
    metrics = json.loads(metrics_path.read_text())
    # Every point 5 px off, eye corners 50 px apart: NME 10 % under the 300W default corners@8.
    assert metrics["landmarks"]["norm"] == "corners" and metrics["landmarks"]["threshold"] == 8
    assert metrics["landmarks"]["nme"] == pytest.approx(10.0) and metrics["landmarks"]["fr"] == 100.0
    assert metrics["headpose"]["mae_yaw"] == pytest.approx(np.mean([2, 1, 0]))
    assert "NME" in capsys.readouterr().out


def test_benchmark_with_an_image_root(tmp_path, monkeypatch):
    root, entries, aligner = _benchmark_set(tmp_path)
    moved = tmp_path / "elsewhere.json"
    moved.write_text((root / "test.json").read_text())
    monkeypatch.setattr(spiga, "load", lambda model, device=None, **options: aligner, raising=False)
    code = main(["benchmark", "--model", "m", "--config", "cofw68", "--dataset", f"spiga-json:{moved}:{root}",
                 "--predictions", str(tmp_path / "pred.json"), "--no-progress"])
    assert code == 0 and len(json.loads((tmp_path / "pred.json").read_text())) == 3


def test_benchmark_missing_images_fail_before_running(tmp_path, monkeypatch, capsys):
    root, entries, aligner = _benchmark_set(tmp_path)
    (root / "images" / "img1.png").unlink()
    monkeypatch.setattr(spiga, "load", lambda model, device=None, **options: aligner, raising=False)
    code = main(["benchmark", "--model", "m", "--config", "cofw68", "--dataset", f"spiga-json:{root / 'test.json'}",
                 "--predictions", str(tmp_path / "pred.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "2 of 3 images are missing" in err and "entry 1" in err
    assert aligner.calls == [] and not (tmp_path / "pred.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--model", "mystery"], "give --config"),
    (["--model", "m", "--config", "wflw"], "unknown landmark id"),      # the test set is not WFLW
    (["--model", "wflw_model", "--config", "cofw68"], "the model predicts layout 'wflw98'"),
])
def test_benchmark_argument_errors(tmp_path, monkeypatch, capsys, argv, message):
    root, entries, aligner = _benchmark_set(tmp_path)
    if "wflw_model" in argv:
        aligner.landmark_set = WFLW_98
    monkeypatch.setattr(spiga, "load", lambda model, device=None, **options: aligner, raising=False)
    code = main(["benchmark", *argv, "--dataset", f"spiga-json:{root / 'test.json'}",
                 "--predictions", str(tmp_path / "pred.json"), "--no-progress"])
    assert code == 2 and message in capsys.readouterr().err


def test_benchmark_unknown_dataset_format(tmp_path, capsys):
    code = main(["benchmark", "--model", "m", "--config", "cofw68", "--dataset", "lmdb:/x",
                 "--predictions", str(tmp_path / "p.json")])
    assert code == 2 and "unknown format 'lmdb'" in capsys.readouterr().err


def test_plot_api_draws_several_curves_and_refuses_unknown_formats(tmp_path):
    pytest.importorskip("matplotlib")
    from spiga.errors import InputError
    from spiga.evaluate import plot_ced
    curves = {"model A": np.array([1.0, 2.0, 3.0]), "model B": np.array([2.0, 9.0])}
    plot_ced(curves, 8.0, tmp_path / "ced.svg", title="two models")
    assert "<svg" in (tmp_path / "ced.svg").read_text()
    with pytest.raises(InputError, match="cannot draw a plot as 'xyz'"):
        plot_ced(curves, 8.0, tmp_path / "ced.xyz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ced.svg"]


def test_subset_past_the_end_names_the_db_info(tmp_path, capsys):
    gt = _entries(2, np.random.default_rng(4))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "db_info.json").write_text(json.dumps({"norm": {}, "test_subsets": {"pose": [0, 5]}}))
    code = main(["evaluate", "--annotations", str(tmp_path / "gt.json"), "--predictions", str(tmp_path / "gt.json"),
                 "--config", "cofw68", "--db-info", str(tmp_path / "db_info.json")])
    err = capsys.readouterr().err
    assert code == 2 and "db_info.json: test subset 'pose' refers to image 5" in err
