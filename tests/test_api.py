"""The Python API: spiga.load(...).align(image, boxes)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import spiga
from spiga.errors import ImageError, InputError, ModelNotFound


@pytest.fixture(scope="module")
def aligner(tiny_checkpoint):
    return spiga.load(tiny_checkpoint, device="cpu")


def test_align_returns_faces_in_box_order(aligner, face_image):
    boxes = [(70, 35, 100, 130), (10, 10, 30, 30), (120, 60, 60, 70)]
    faces = aligner.align(face_image, boxes)
    assert [f.box for f in faces] == [tuple(map(float, b)) for b in boxes]
    for face in faces:
        assert face.landmarks.shape == (98, 2)
        assert np.isfinite(face.landmarks).all()
        assert isinstance(face.headpose.yaw, float)
        assert face.score is None
    # a face alone gives the same result as in a batch
    alone = aligner.align(face_image, [boxes[2]])[0]
    assert np.allclose(alone.landmarks, faces[2].landmarks, atol=1e-3)


def test_landmarks_follow_the_box(aligner, face_image):
    """Shifting image and box together shifts the landmarks by the same amount."""
    box = (70, 35, 100, 130)
    first = aligner.align(face_image, [box])[0]
    shifted_image = np.zeros((face_image.shape[0], face_image.shape[1] + 16, 3), np.uint8)
    shifted_image[:, 16:] = face_image
    second = aligner.align(shifted_image, [(box[0] + 16, *box[1:])])[0]
    assert np.allclose(second.landmarks - first.landmarks, [16, 0], atol=1e-3)


def test_image_kinds_give_the_same_result(aligner, face_image, tmp_path):
    import cv2

    box = [(70, 35, 100, 130)]
    expected = aligner.align(face_image, box)[0].landmarks
    rgb = face_image[:, :, ::-1].copy()
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), face_image)
    variants = {
        "path": aligner.align(path, box),
        "str path": aligner.align(str(path), box),
        "rgb array": aligner.align(rgb, box, color="rgb"),
        "pil": aligner.align(Image.fromarray(rgb), box),
        "rgba": aligner.align(np.dstack([face_image, np.full(face_image.shape[:2], 255, np.uint8)]), box),
        "uint16": aligner.align(face_image.astype(np.uint16) * 257, box),
        "float": aligner.align(face_image.astype(np.float32) / 255, box),
    }
    for name, faces in variants.items():
        assert np.allclose(faces[0].landmarks, expected, atol=1e-4), name


def test_gray_images_work(aligner, face_image):
    gray = face_image[:, :, 1].copy()
    a = aligner.align(gray, [(70, 35, 100, 130)])[0]
    b = aligner.align(np.dstack([gray] * 3), [(70, 35, 100, 130)])[0]
    assert np.allclose(a.landmarks, b.landmarks)


def test_box_partly_outside_works(aligner, face_image):
    faces = aligner.align(face_image, [(-40, -30, 100, 120)])
    assert np.isfinite(faces[0].landmarks).all()


@pytest.mark.parametrize("box, message", [
    ((10, 10, 0, 20), "positive width and height"),
    ((10, 10, 20, -5), "positive width and height"),
    ((500, 10, 20, 20), "entirely outside"),
    ((-50, 10, 20, 20), "entirely outside"),
    ((float("nan"), 10, 20, 20), "non-finite"),
])
def test_bad_boxes(aligner, face_image, box, message):
    with pytest.raises(InputError, match=message):
        aligner.align(face_image, [box])


def test_no_boxes_without_detector(tiny_checkpoint, face_image):
    no_detector = spiga.load(tiny_checkpoint, device="cpu", detector=None)
    with pytest.raises(InputError, match="no face boxes"):
        no_detector.align(face_image)


def test_detector_finds_the_face_without_boxes(aligner):
    from conftest import shared_path
    import json

    photo = shared_path("fixtures", "images", "image_sportsfan.jpg")
    truth = json.loads(shared_path("fixtures", "images", "bbox_sportsfan.json").read_text())["bbox"]
    faces = aligner.align(photo)
    assert faces and faces[0].score is not None
    x, y, w, h = faces[0].box
    tx, ty, tw, th = truth
    overlap = max(0, min(x + w, tx + tw) - max(x, tx)) * max(0, min(y + h, ty + th) - max(y, ty))
    assert overlap / (w * h + tw * th - overlap) >= 0.5  # the mapped box, as SPIGA expects it


def test_empty_box_list(aligner, face_image):
    assert aligner.align(face_image, []) == []


def test_bad_images(aligner, tmp_path):
    with pytest.raises(ImageError, match="missing.jpg: no such file"):
        aligner.align(tmp_path / "missing.jpg", [(0, 0, 1, 1)])
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="notes.jpg: not a readable image"):
        aligner.align(tmp_path / "notes.jpg", [(0, 0, 1, 1)])
    with pytest.raises(ImageError, match="shape"):
        aligner.align(np.zeros((4, 4, 2), np.uint8), [(0, 0, 1, 1)])


def test_unknown_model():
    with pytest.raises(ModelNotFound, match="unknown model"):
        spiga.load("no-such-model")


def test_head_position_on_known_geometry():
    from spiga.face import Face, HeadPose
    from spiga.geometry import crop_matrices
    from spiga.preprocess import Preprocessing

    box = (100.0, 50.0, 80.0, 100.0)
    face = Face(box=box, landmarks=np.zeros((98, 2)), headpose=HeadPose(5, 0, 0, 0.0, 0.0, 3.0),
                crop_matrix=crop_matrices(np.array([box]), Preprocessing())[0])
    x, y, scale = face.head_position()
    assert (x, y) == pytest.approx((140.0, 100.0))  # centred translation: the box centre
    side = 1.6 * 100.0
    assert scale == pytest.approx(1.5 * 256 / 3.0 * side / 256)


def test_deep_images_are_scaled_by_the_models_rule(tmp_path):
    """A model trained on 16-bit images records its depth rule; alignment applies it, so a
    16-bit photo gives the landmarks of the 8-bit image training's rule makes of it."""
    import cv2

    from dataclasses import replace

    from spiga.checkpoint import build_model, load_checkpoint, save_checkpoint
    from spiga.io import DepthScaling
    from spiga.landmarks import WFLW_98
    from spiga.model import ModelConfig
    from spiga.testing import random_mean_face

    rng = np.random.default_rng(0)
    config = replace(ModelConfig.sized("tiny", 98, 15), depth_scaling="percentile:1:99")
    model = build_model(config, WFLW_98, random_mean_face(98)).eval()
    path = tmp_path / "thermal.safetensors"
    save_checkpoint(path, model, WFLW_98)
    assert load_checkpoint(path).config.preprocessing.depth_scaling == DepthScaling.parse("percentile:1:99")
    # a dim 16-bit "thermal" image: its values span a small part of the 16-bit range
    thermal = (rng.random((160, 200)) * 3000 + 29000).astype(np.uint16)
    cv2.ellipse(thermal, (100, 80), (40, 50), 0, 0, 360, 31000, -1)
    photo = tmp_path / "thermal.png"
    cv2.imwrite(str(photo), thermal)
    box = [(60, 30, 80, 100)]
    aligner = spiga.load(path, device="cpu")
    assert aligner.depth_scaling == DepthScaling("percentile", 1.0, 99.0)
    scaled = np.rint(DepthScaling.parse("percentile:1:99").apply(thermal) * 255).astype(np.uint8)
    expected = aligner.align(np.repeat(scaled[..., None], 3, axis=2), box)[0]
    assert np.abs(aligner.align(photo, box)[0].landmarks - expected.landmarks).max() < 1e-9
    # without a recorded rule, 16-bit images are divided by 257: a different, darker input
    plain = spiga.load(path, device="cpu", depth_scaling="full")
    assert np.abs(plain.align(photo, box)[0].landmarks - expected.landmarks).max() > 1e-3
    with pytest.raises(spiga.SpigaError, match="depth scaling"):
        spiga.load(path, device="cpu", depth_scaling="percentile:9")
