"""Many machines (`spiga.ray`, `spiga align --ray`): the records of the one-machine runner,
a worker killed mid-batch, an interrupted driver resumed, the Python API, Ray missing.

One local Ray (2 CPUs, no dashboard) serves the whole module; `--ray local` uses a Ray
already started in its process."""

from __future__ import annotations

import json
import os
import sys

import cv2
import numpy as np
import pytest

from conftest import shared_path
from spiga.about import install_hint
from spiga.cli import main as cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ray_session():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        pytest.skip(f"needs Ray Data (the `ray` extra: {install_hint('ray')})")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    # pickle this module's helpers (the crashing detector) by value: Ray's workers cannot import tests/
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


def _face_picture(seed: int, size=(160, 200)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 60, size=(*size, 3), dtype=np.uint8)
    cv2.ellipse(image, (size[1] // 2, size[0] // 2), (45, 60), 0, 0, 360, (150, 170, 210), -1)
    return image


@pytest.fixture
def folder(tmp_path):
    """Good images (one face, two faces), garbage bytes, a truncated JPEG, an image without
    faces, and a box file naming each image's faces."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), _face_picture(1))
    cv2.imwrite(str(images / "c.jpg"), _face_picture(2))
    cv2.imwrite(str(images / "e.png"), _face_picture(4))
    (images / "b.jpg").write_bytes(b"this is not a JPEG")
    ok, encoded = cv2.imencode(".jpg", _face_picture(3))
    (images / "d.jpg").write_bytes(encoded.tobytes()[:-400])
    boxes = {"a.png": [[55, 20, 90, 120]], "c.jpg": [[55, 20, 90, 120], [10, 10, 60, 70]], "e.png": []}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    return images


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_records(ray_records: list[dict], one_machine: list[dict], tolerance: float = 0.05) -> None:
    """The same images, errors, sizes and faces (landmarks within `tolerance` pixels), in any order."""
    by_path = {r["path"]: r for r in ray_records}
    assert len(by_path) == len(ray_records), "an image appears more than once"
    assert sorted(by_path) == sorted(r["path"] for r in one_machine)
    for expected in one_machine:
        got = by_path[expected["path"]]
        assert set(got) == set(expected)
        if "error" in expected:
            assert got["error"] == expected["error"]
            continue
        assert (got["width"], got["height"]) == (expected["width"], expected["height"])
        assert len(got["faces"]) == len(expected["faces"])
        for face, reference in zip(got["faces"], expected["faces"]):
            assert set(face) == set(reference)
            np.testing.assert_allclose(face["box"], reference["box"])
            np.testing.assert_allclose(face["landmarks"], reference["landmarks"], atol=tolerance)
            assert face.get("score") == pytest.approx(reference.get("score"), abs=1e-4)


def test_ray_records_are_the_one_machine_runners(ray_session, tiny_checkpoint, folder, tmp_path):
    common = [str(folder), "--model", str(tiny_checkpoint), "--detector", f"file:{tmp_path / 'boxes.json'}",
              "--no-progress"]
    assert cli(["align", *common, "--jsonl", str(tmp_path / "one.jsonl"), "--csv", str(tmp_path / "one.csv"),
                "--pts", str(tmp_path / "one_pts")]) == 2
    assert cli(["align", *common, "--jsonl", str(tmp_path / "ray.jsonl"), "--csv", str(tmp_path / "ray.csv"),
                "--pts", str(tmp_path / "ray_pts"), "--draw-dir", str(tmp_path / "drawn"), "--ray", "local"]) == 2
    one, on_ray = _records(tmp_path / "one.jsonl"), _records(tmp_path / "ray.jsonl")
    assert_same_records(on_ray, one)
    assert [len(r.get("faces", [])) for r in one] == [1, 0, 2, 0, 0] and "error" in one[1] and "error" in one[3]
    assert sorted(p.name for p in (tmp_path / "ray_pts").iterdir()) == sorted(
        p.name for p in (tmp_path / "one_pts").iterdir()) == ["a_0.pts", "c_0.pts", "c_1.pts"]
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["a.png", "c.png", "e.png"]
    assert cv2.imread(str(tmp_path / "drawn" / "a.png")).shape == (160, 200, 3)
    one_rows = sorted((tmp_path / "one.csv").read_text().splitlines())
    ray_rows = sorted((tmp_path / "ray.csv").read_text().splitlines())
    assert len(one_rows) == len(ray_rows) == 4 and one_rows[-1] == ray_rows[-1]  # the header


def test_ray_with_the_built_in_detector(ray_session, tiny_checkpoint, tmp_path):
    """The issue's form: a folder, the default detector (BlazeFace) finding the faces."""
    images = tmp_path / "photos"
    images.mkdir()
    (images / "sportsfan.jpg").write_bytes(shared_path("fixtures", "images", "image_sportsfan.jpg").read_bytes())
    cv2.imwrite(str(images / "blank.png"), np.full((120, 160, 3), 90, np.uint8))
    (images / "garbage.jpg").write_bytes(os.urandom(300))
    common = [str(images), "--model", str(tiny_checkpoint), "--no-progress"]
    assert cli(["align", *common, "--jsonl", str(tmp_path / "one.jsonl")]) == 1
    assert cli(["align", *common, "--jsonl", str(tmp_path / "ray.jsonl"), "--ray", "local"]) == 1
    one = _records(tmp_path / "one.jsonl")
    assert_same_records(_records(tmp_path / "ray.jsonl"), one)
    assert [len(r.get("faces", [])) for r in one] == [0, 0, 1]


class CrashOnce:
    """A box-file detector whose first call kills its worker process (as an out-of-memory
    kill or a lost node would), leaving a marker so that the restarted worker goes on."""

    def __init__(self, boxes: str, marker: str) -> None:
        self.boxes, self.marker = boxes, marker

    def faces_for(self, path: str):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        from spiga.detection import make_detector

        return make_detector(f"file:{self.boxes}").faces_for(path)

    def detect(self, image):  # pragma: no cover - the box file is always asked by path
        raise AssertionError("asked by path only")


def test_killed_worker_batch_is_retried(ray_session, tiny_checkpoint, folder, tmp_path):
    from spiga.ray import align_files_on_ray

    marker = tmp_path / "crashed"
    out = tmp_path / "out.jsonl"
    # a local file and a file:// folder: two readers, one pool
    summary = align_files_on_ray([folder / "a.png", f"file://{folder}"], jsonl=out, progress=False,
                                 model=tiny_checkpoint, detector=CrashOnce(str(tmp_path / "boxes.json"), str(marker)))
    assert marker.exists(), "the worker did not crash"
    records = _records(out)
    assert sorted(r["path"] for r in records) == sorted([str(folder / "a.png")] +
                                                        [f"file://{p}" for p in folder.iterdir()])
    assert len(summary.failed) == 2 and summary.images == 4


def test_interrupted_driver_resumes_without_duplicates(ray_session, tiny_checkpoint, folder, tmp_path, monkeypatch):
    import spiga.ray
    from spiga.io import JsonlWriter

    written = []

    class InterruptedWriter(JsonlWriter):
        def write(self, record):
            if len(written) == 2:
                raise KeyboardInterrupt  # Ctrl-C while the records stream in
            written.append(record["path"])
            super().write(record)

    out = tmp_path / "out.jsonl"
    # file:// URIs: the object-store listing (pyarrow's file systems) on local files
    args = ["align", f"file://{folder}", "--model", str(tiny_checkpoint), "--detector",
            f"file:{tmp_path / 'boxes.json'}", "--jsonl", str(out), "--no-progress", "--ray", "local"]
    monkeypatch.setattr(spiga.ray, "JsonlWriter", InterruptedWriter)
    assert cli(args) == 130
    assert len(_records(out)) == 2
    monkeypatch.setattr(spiga.ray, "JsonlWriter", JsonlWriter)
    with open(out, "a") as handle:  # and a line cut short by the interruption
        handle.write('{"path": "cut')
    assert cli([*args, "--resume"]) == 2
    records = _records(out)
    paths = [r["path"] for r in records]
    assert sorted(set(paths)) == sorted(f"file://{p}" for p in folder.iterdir())
    done_first = [p for p in written if "error" not in next(r for r in records if r["path"] == p)]
    assert all(paths.count(p) == 1 for p in done_first)  # results are not aligned again
    assert len(paths) == 5 + len(written) - len(done_first)  # error lines are tried again


def test_python_api_on_a_dataset(ray_session, tiny_checkpoint):
    import spiga
    from spiga.ray import align_dataset, iter_records

    ok, png = cv2.imencode(".png", _face_picture(5))
    rows = [{"path": "mem/face.png", "bytes": png.tobytes()}, {"path": "mem/bad.jpg", "bytes": b"\xff\xd8 nope"}]
    dataset = ray_session.data.from_items(rows)
    records = {r["path"]: r for r in iter_records(align_dataset(dataset, model=tiny_checkpoint,
                                                                boxes=[[55, 20, 90, 120]]))}
    assert set(records) == {"mem/face.png", "mem/bad.jpg"}
    assert records["mem/bad.jpg"]["error"].startswith("mem/bad.jpg: ")
    expected = spiga.load(tiny_checkpoint).align(_face_picture(5), boxes=[[55, 20, 90, 120]])
    got = records["mem/face.png"]
    assert (got["width"], got["height"]) == (200, 160)
    np.testing.assert_allclose(got["faces"][0]["landmarks"], expected[0].landmarks, atol=0.05)


def test_ray_missing_is_one_line_naming_the_extra(tiny_checkpoint, image_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = cli(["align", str(image_file), "--model", str(tiny_checkpoint), "--jsonl", str(tmp_path / "o.jsonl"),
                "--ray", "local", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spiga: error: ") and install_hint("ray") in err and "\n" not in err
