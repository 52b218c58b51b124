"""Video: the One Euro filter on known signals, tracking rules with a scripted aligner,
and a generated video through the frame loop and the CLI."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from spiga.about import install_hint
from spiga.detection import Detection, Detector
from spiga.errors import InputError
from spiga.face import Face, HeadPose
from spiga.video import OneEuroFilter, OneEuroParams, Tracker, TrackerConfig, run_video
from spiga.video.smoothing import FaceSmoother, SmoothingConfig
from spiga.geometry.boxes import box_iou
from spiga.video.tracker import box_from_landmarks, measure_relation

FPS = 30.0



pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --- One Euro filter -------------------------------------------------------------------


def _run(filter_: OneEuroFilter, signal: np.ndarray) -> np.ndarray:
    return np.array([filter_(x, i / FPS) for i, x in enumerate(signal)])


def test_constant_input_passes_through():
    signal = np.full((60, 3, 2), 7.25)
    np.testing.assert_allclose(_run(OneEuroFilter(OneEuroParams(1.0, 0.5)), signal), signal)


def test_noise_is_reduced():
    rng = np.random.default_rng(0)
    noise = 5.0 + rng.normal(0, 1.0, size=(300, 10))
    out = _run(OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=0.0)), noise)
    # a first-order low-pass at 1 Hz sampled at 30 Hz keeps about a tenth of white noise's
    # variance: the standard deviation drops by a factor of about 3
    assert out[30:].std(0).mean() < 0.45 * noise[30:].std(0).mean()
    assert abs(out[30:].mean() - 5.0) < 0.1


def test_a_step_is_followed_and_beta_shortens_the_lag():
    step = np.where(np.arange(90) < 30, 0.0, 10.0)
    slow = _run(OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=0.0)), step)
    fast = _run(OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=1.0)), step)
    assert np.all(np.diff(slow) >= -1e-12) and slow[-1] == pytest.approx(10.0, abs=0.05)
    # samples after the step until the output is 90 % of the way
    def settle(out):
        return int(np.argmax(out[30:] >= 9.0))
    assert settle(fast) < settle(slow)
    assert settle(slow) <= 15  # 1 Hz: time constant 0.16 s, 90 % after 0.37 s = 11 frames


def test_filter_first_sample_and_bad_shapes():
    f = OneEuroFilter()
    np.testing.assert_array_equal(f(np.array([1.0, 2.0]), 0.0), [1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        f(np.array([1.0]), 0.1)
    with pytest.raises(ValueError):
        OneEuroParams(min_cutoff=0)


def _face(landmarks, box=(10.0, 10.0, 40.0, 40.0), pose=(5.0, -3.0, 2.0, 0.1, -0.05, 3.0)) -> Face:
    from spiga.geometry.crop import crop_matrices
    from spiga.preprocess import Preprocessing

    return Face(box=box, landmarks=np.asarray(landmarks, float), headpose=HeadPose(*pose),
                crop_matrix=crop_matrices(np.array([box]), Preprocessing())[0])


def test_face_smoother_keeps_a_still_face_and_its_head_position():
    face = _face(np.array([[20.0, 20.0], [40.0, 30.0]]))
    smoother = FaceSmoother(SmoothingConfig())
    for i in range(5):
        out = smoother(face, i / FPS)
    np.testing.assert_allclose(out.landmarks, face.landmarks)
    np.testing.assert_allclose(out.headpose.as_array(), face.headpose.as_array(), atol=1e-9)
    # the same head position seen through another crop gives the same image position
    from spiga.geometry.crop import crop_matrices
    from spiga.preprocess import Preprocessing
    from spiga.video.smoothing import _translation_for_crop

    moved = Face(box=(14.0, 8.0, 50.0, 50.0), landmarks=face.landmarks, headpose=face.headpose,
                 crop_matrix=crop_matrices(np.array([[14.0, 8.0, 50.0, 50.0]]), Preprocessing())[0])
    x, y, s = face.head_position()
    tx, ty, tz = _translation_for_crop(moved, x, y, s)
    again = Face(box=moved.box, landmarks=face.landmarks, headpose=HeadPose(0, 0, 0, tx, ty, tz),
                 crop_matrix=moved.crop_matrix)
    np.testing.assert_allclose(again.head_position(), (x, y, s), atol=1e-9)


# --- tracking geometry -----------------------------------------------------------------


def test_relation_round_trip_and_iou():
    rng = np.random.default_rng(1)
    landmarks = rng.uniform(100, 160, size=(30, 2))
    box = np.array([90.0, 80.0, 80.0, 95.0])
    relation = measure_relation(box, landmarks)
    np.testing.assert_allclose(box_from_landmarks(landmarks, relation), box)
    np.testing.assert_allclose(box_from_landmarks(landmarks + [7, -3], relation), box + [7, -3, 0, 0])
    assert measure_relation(box, np.full((30, 2), 5.0)) is None  # collapsed landmarks: implausible
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]]))
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


class ScriptedAligner:
    """Stands in for `Aligner`: faces are squares whose true positions the test sets per
    frame. The detector returns them; alignment returns their true corners when the box
    overlaps a face, and collapsed points otherwise (what a lost model would do)."""

    def __init__(self):
        self.faces: list[np.ndarray] = []   # true boxes (x, y, w, h) of this frame
        self.detect_calls = 0

    @staticmethod
    def _points(box):
        x, y, w, h = box
        return np.array([[x, y + 0.2 * h], [x + w, y + 0.2 * h], [x + w / 2, y + h], [x + w / 2, y + 0.5 * h]])

    def detect(self, frame):
        from spiga.video.tracker import inside_fraction

        self.detect_calls += 1
        seen = [f for f in self.faces if inside_fraction(f, frame.shape[1], frame.shape[0]) > 0.6]
        return np.array(seen).reshape(-1, 4), [0.9] * len(seen)

    def align_array(self, frame, boxes):
        out = []
        for box in np.asarray(boxes).reshape(-1, 4):
            ious = box_iou(box[None], np.array(self.faces).reshape(-1, 4))[0] if self.faces else np.zeros(0)
            if len(ious) and ious.max() > 0.1:
                points = self._points(self.faces[int(ious.argmax())])
            else:
                points = np.repeat(box[None, :2] + box[None, 2:] / 2, 4, 0)
            out.append(Face(box=tuple(box), landmarks=points, headpose=HeadPose(0, 0, 0, 0, 0, 3)))
        return out


def _track(aligner, script, config):
    tracker = Tracker(aligner, config)
    results = []
    for index, faces in enumerate(script):
        aligner.faces = [np.array(f, float) for f in faces]
        results.append(tracker.step(np.zeros((240, 320, 3), np.uint8), index / FPS))
    return results


def test_tracker_follows_landmarks_between_detections_and_keeps_ids():
    aligner = ScriptedAligner()
    # two faces moving 4 px per frame for 20 frames
    script = [[(20 + 4 * i, 40, 60, 60), (200, 120 - 2 * i, 50, 50)] for i in range(20)]
    results = _track(aligner, script, TrackerConfig(redetect_every=8, smoothing=None))
    assert [r.detected for r in results] == [i % 8 == 0 for i in range(20)]
    assert all([f.id for f in r.faces] == [0, 1] for r in results)
    for result, truth in zip(results, script):
        for face, box in zip(result.faces, truth):
            np.testing.assert_allclose(face.landmarks, ScriptedAligner._points(np.array(box, float)))


def test_tracker_redetects_when_lost_and_new_faces_get_new_ids():
    aligner = ScriptedAligner()
    # a face jumps far away at frame 5 (lost: its box would not follow); a second face
    # appears at frame 12 and is found at the next periodic detection (15 frames after
    # the last one: frame 20)
    script = [[(20, 40, 60, 60)] for _ in range(5)] + [[(220, 150, 60, 60)] for _ in range(7)]
    script += [[(220, 150, 60, 60), (30, 30, 50, 50)] for _ in range(10)]
    results = _track(aligner, script, TrackerConfig(redetect_every=15, smoothing=None))
    detected = [i for i, r in enumerate(results) if r.detected]
    assert detected == [0, 5, 20]
    assert [f.id for f in results[4].faces] == [0]
    assert [f.id for f in results[5].faces] == [1]   # IoU 0 with the old box: a new identity
    assert [f.id for f in results[19].faces] == [1]
    assert [f.id for f in results[20].faces] == [1, 2]


def test_tracker_drops_a_face_that_leaves_the_frame():
    aligner = ScriptedAligner()
    script = [[(200 + 15 * i, 100, 60, 60)] for i in range(10)] + [[] for _ in range(3)]
    results = _track(aligner, script, TrackerConfig(redetect_every=0, smoothing=None))
    ids = [[f.id for f in r.faces] for r in results]
    assert ids[0] == [0] and ids[-1] == []
    first_empty = next(i for i, r in enumerate(ids) if not r)
    # frame 7: the box (x = 305) lies 75 % outside the 320 px frame; the propagated box
    # is flagged lost, the detector does not see the face, the track ends
    assert first_empty == 7
    assert all(r.detected for r in results[first_empty:])  # nothing tracked: detect every frame



def test_dead_band_keeps_a_still_face_box_steady():
    class NoisyAligner(ScriptedAligner):
        rng = np.random.default_rng(0)

        def align_array(self, frame, boxes):
            faces = super().align_array(frame, boxes)
            for face in faces:
                face.landmarks = face.landmarks + self.rng.normal(0, 0.3, face.landmarks.shape)
            return faces

    script = [[(100, 80, 80, 80)] for _ in range(12)]
    steady = _track(NoisyAligner(), script, TrackerConfig(redetect_every=0, smoothing=None))
    assert len({f.box for r in steady for f in r.faces}) == 1
    drifting = _track(NoisyAligner(), script, TrackerConfig(redetect_every=0, smoothing=None, box_deadband=0.0))
    assert len({f.box for r in drifting for f in r.faces}) > 1
    # a real move (10 px per frame, 12 % of the box) gets through the dead band: each
    # frame's box is where the previous frame's landmarks put the face
    moving = _track(NoisyAligner(), [[(100 + 10 * i, 80, 80, 80)] for i in range(6)],
                    TrackerConfig(redetect_every=0, smoothing=None))
    np.testing.assert_allclose([r.faces[0].box[0] - 100 for r in moving], [0, 0, 10, 20, 30, 40], atol=1.5)

# --- the frame loop on a generated video -----------------------------------------------


class TemplateDetector(Detector):
    """Finds one known face patch by template matching (a stand-in detector for tests)."""

    name = "template"

    def __init__(self, patch: np.ndarray, box_in_patch: np.ndarray):
        self.patch, self.box_in_patch = patch, box_in_patch

    def detect(self, image_bgr):
        scores = cv2.matchTemplate(image_bgr, self.patch, cv2.TM_CCOEFF_NORMED)
        _, best, _, (x, y) = cv2.minMaxLoc(scores)
        if best < 0.5:
            return []
        bx, by, bw, bh = self.box_in_patch
        return [Detection((x + bx, y + by, bw, bh), float(best), None, "file")]


@pytest.fixture(scope="module")
def moving_face_video(tmp_path_factory):
    """A 12-frame 256x192 mp4v video of a synthetic face moving 3 px per frame."""
    from spiga.data.synthetic import render_face

    face = render_face(np.random.default_rng(3), 112)
    path = tmp_path_factory.mktemp("video") / "moving.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (256, 192))
    for i in range(12):
        frame = np.full((192, 256, 3), 90, np.uint8)
        frame[40:152, 20 + 3 * i:132 + 3 * i] = face.image
        writer.write(frame)
    writer.release()
    return path, face


def test_video_round_trip(tiny_checkpoint, moving_face_video, tmp_path):
    import spiga

    path, face = moving_face_video
    detector = TemplateDetector(face.image, face.box)
    aligner = spiga.load(tiny_checkpoint, device="cpu", detector=detector)
    out, lines = tmp_path / "annotated.mp4", tmp_path / "frames.jsonl"
    summary = run_video(aligner, str(path), out=out, jsonl=lines, config=TrackerConfig(redetect_every=5),
                        progress=False, mesh=True)
    capture = cv2.VideoCapture(str(out))
    frames_out = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, first = capture.read()
    capture.release()
    assert summary.frames == 12 and frames_out == 12
    assert ok and first.shape == (192, 256, 3)
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(12))
    assert records[1]["time"] == pytest.approx(1 / FPS, abs=1e-6)
    assert all([f["id"] for f in r["faces"]] == [0] for r in records)  # one face, one id throughout
    assert [r["detected"] for r in records][:6] == [True, False, False, False, False, True]
    assert len(records[0]["faces"][0]["landmarks"]) == 98
    assert not list(tmp_path.glob(".annotated*"))  # the temporary file was renamed


@pytest.fixture
def real_face_video(tmp_path):
    """The shared real photo, 320x240, shifted 2 px per frame, 6 frames (MJPG .avi)."""
    from conftest import shared_path

    photo = cv2.imread(str(shared_path("fixtures", "images", "image_sportsfan.jpg")))
    small = cv2.resize(photo, (320, 240), interpolation=cv2.INTER_AREA)
    video = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (320, 240))
    for i in range(6):
        writer.write(np.roll(small, 2 * i, axis=1))
    writer.release()
    return video


def test_video_cli_with_blazeface_on_a_real_face(tiny_checkpoint, real_face_video, tmp_path):
    from spiga.cli import main as cli

    out, lines = tmp_path / "out.mp4", tmp_path / "frames.jsonl"
    code = cli(["video", str(real_face_video), "--model", str(tiny_checkpoint), "--out", str(out), "--jsonl",
                str(lines), "--redetect-every", "3", "--no-progress"])
    assert code == 0
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(records) == 6 and [r["detected"] for r in records] == [True, False, False] * 2
    assert all([f["id"] for f in r["faces"]] == [0] for r in records)
    assert "score" in records[0]["faces"][0]
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    capture.release()


@pytest.mark.parametrize("runtime", [["--precision", "bfloat16"], ["--precision", "float64"],
                                     ["--backend", "onnxruntime"]], ids=["bfloat16", "float64", "onnxruntime"])
def test_video_cli_precision_and_backend(tiny_checkpoint, real_face_video, tmp_path, runtime):
    """`spiga video` runs the network as `spiga align` does: the same landmarks as float32
    torch, within what the precision allows."""
    from spiga.cli import main as cli

    model = tiny_checkpoint
    if "onnxruntime" in runtime:
        pytest.importorskip("onnxruntime", reason=f"onnxruntime is not installed ({install_hint()})")
        from spiga.inference.onnx_export import export_onnx

        model = export_onnx(tiny_checkpoint, tmp_path / "tiny.onnx", dynamic_batch=True)
    results = {}
    for name, extra in (("reference", []), ("runtime", runtime)):
        lines = tmp_path / f"{name}.jsonl"
        assert cli(["video", str(real_face_video), "--model", str(model if extra else tiny_checkpoint),
                    "--jsonl", str(lines), "--no-progress", "--max-frames", "3", "--no-smoothing", *extra]) == 0
        results[name] = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(results["runtime"]) == 3
    for got, want in zip(results["runtime"], results["reference"]):
        assert len(got["faces"]) == len(want["faces"]) == 1
        difference = np.abs(np.array(got["faces"][0]["landmarks"]) - np.array(want["faces"][0]["landmarks"]))
        assert difference.mean() < (5.0 if "bfloat16" in runtime else 0.05)


def test_video_errors(tiny_checkpoint, tmp_path, capsys):
    from spiga.cli import main as cli

    assert cli(["video", str(tmp_path / "none.mp4"), "--model", str(tiny_checkpoint)]) == 2
    assert "none.mp4: no such video file" in capsys.readouterr().err
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(InputError, match="cannot open as a video"):
        from spiga.video import open_capture
        open_capture(str(bad))


# --- drawings --------------------------------------------------------------------------


def test_mesh_is_drawn_through_the_pose_projection():
    from spiga.draw import draw_faces, project_with_pose
    from spiga.landmarks import WFLW_98

    face = _face(np.full((98, 2), 30.0), box=(20.0, 20.0, 60.0, 60.0), pose=(10.0, 5.0, 0.0, 0.0, 0.0, 3.0))
    world = np.zeros((98, 3))
    world[:, 1] = np.linspace(-0.5, 0.5, 98)  # a vertical segment through the head's origin
    image = np.zeros((100, 100, 3), np.uint8)
    plain = draw_faces(image, [face], WFLW_98, draw_box=False, draw_axes=False)
    meshed = draw_faces(image, [face], WFLW_98, draw_box=False, draw_axes=False, mesh_points=world)
    points = project_with_pose(face, world)
    changed = np.argwhere((meshed != plain).any(-1))
    assert len(changed)
    # every changed pixel lies on the projected polyline (within the line's width)
    ends = points[[0, -1]]
    direction = (ends[1] - ends[0]) / np.linalg.norm(ends[1] - ends[0])
    offsets = changed[:, ::-1] - ends[0]
    distance = np.abs(offsets[:, 0] * direction[1] - offsets[:, 1] * direction[0])
    assert distance.max() < 2.0


def test_single_image_drawing_with_mesh_and_id(tiny_checkpoint, tmp_path):
    from spiga.cli import main as cli

    image = np.full((160, 200, 3), 60, np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    plain, meshed = tmp_path / "plain.png", tmp_path / "mesh.png"
    base = ["align", str(tmp_path / "a.png"), "--model", str(tiny_checkpoint), "--box", "50", "30", "100", "110"]
    assert cli(base + ["--draw", str(plain)]) == 0
    assert cli(base + ["--draw", str(meshed), "--mesh"]) == 0
    assert (cv2.imread(str(plain)) != cv2.imread(str(meshed))).any()
