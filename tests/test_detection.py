"""Face detection: the interface, BlazeFace's pieces, pyramid and runtimes, the other detectors, the box mapping.

BlazeFace's recall tests (the collage of faces 24 .. 600 px, the group photos, nothing on
textures) run on both runtimes: plain PyTorch and onnxruntime.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from spiga.about import install_hint
from spiga.detection import Detection, as_bgr, face_box_from_detection, make_detector
from spiga.detection import runtime as runtimes
from spiga.detection.blazeface import (
    FIRST_MARGIN, SIZE_RANGES, BlazeFaceDetector, cut_windows, level_images, not_cut_by_window_edge, plan_levels,
    scaled_size, to_input_array,
)
from spiga.detection.blazeface_net import SPECS, _depth_to_space, anchor_centres, decode, min_logit, sigmoid
from spiga.detection.boxmap import BOX_RULES, box_from_box, boxes_from_keypoints
from spiga.detection.dlib_hog import dlib_available
from spiga.detection.filebox import read_box_file
from spiga.detection.nms import MAX_CANDIDATES, drop_contained, non_max_suppression
from spiga.geometry.boxes import corner_iou
from spiga.errors import DatasetError, InputError, SpigaError

ONNXRUNTIME = pytest.mark.skipif(not runtimes.onnxruntime_available(),
                                 reason=f"onnxruntime is not installed ({install_hint()})")
BACKENDS = ["torch", pytest.param("onnxruntime", marks=ONNXRUNTIME)]

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)} (the project's shared fixtures), absent here")
    return path


def corners(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def best_iou(box, candidates) -> float:
    if len(candidates) == 0:
        return 0.0
    return float(corner_iou(corners(box), corners(candidates)).max())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sportsfan() -> tuple[np.ndarray, np.ndarray]:
    """The fixture photo (BGR) and its reference face box (x, y, w, h)."""
    image = cv2.imread(str(shared_file("fixtures", "images", "image_sportsfan.jpg")))
    box = json.loads(shared_file("fixtures", "images", "bbox_sportsfan.json").read_text())["bbox"]
    return image, np.array(box, dtype=np.float64)


@pytest.fixture(scope="module", params=BACKENDS)
def blazeface(request) -> BlazeFaceDetector:
    """The default detector on each runtime."""
    detector = make_detector("blazeface", backend=request.param)
    assert detector.backend == request.param
    return detector


@pytest.fixture(scope="module")
def grace_hopper() -> tuple[np.ndarray, np.ndarray]:
    """matplotlib's sample photo of Grace Hopper (BGR) and her face box as the default
    detector maps it on the full-size photo (the reference for smaller copies)."""
    cbook = pytest.importorskip("matplotlib.cbook", reason="needs matplotlib's sample photo grace_hopper.jpg")
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        image = cv2.imdecode(np.frombuffer(handle.read(), np.uint8), cv2.IMREAD_COLOR)
    (detection,) = make_detector("blazeface", backend="torch").detect(image)
    return image, np.array(face_box_from_detection(detection))


# ---------------------------------------------------------------- acceptance


def test_blazeface_finds_fixture_face(sportsfan, blazeface):
    image, reference = sportsfan
    detections = blazeface.detect(image)
    mapped = [face_box_from_detection(d) for d in detections]
    assert best_iou(reference, mapped) >= 0.5
    best = detections[int(np.argmax(corner_iou(corners(reference), corners(mapped))[0]))]
    assert best.keypoints.shape == (6, 2)
    # the eyes lie inside the reference box, the subject's right eye on the image's left
    x, y, w, h = reference
    right_eye, left_eye = best.keypoints[0], best.keypoints[1]
    assert x < right_eye[0] < left_eye[0] < x + w and y < right_eye[1] < y + h


def make_collage(image: np.ndarray, box: np.ndarray, widths: list[int], seed: int = 0,
                 enlarge: float = 1.3) -> tuple[np.ndarray, np.ndarray]:
    """Crops of the fixture face pasted at face-box widths `widths` on blurred noise.

    Returns the collage (BGR) and the pasted faces' boxes (x, y, w, h): the reference box
    scaled with its crop.
    """
    x, y, w, h = box
    side = int(enlarge * max(w, h))
    x0, y0 = int(x + w / 2 - side / 2), int(y + h / 2 - side / 2)
    crop = image[y0:y0 + side, x0:x0 + side]
    sizes = [round(enlarge * width * max(w, h) / w) for width in widths]
    gap, canvas_width = 6, 1400
    placements, row_x, row_y, row_h = [], 0, 0, 0
    for size in sorted(sizes, reverse=True):  # shelf packing, largest first
        if row_x + size > canvas_width:
            row_x, row_y, row_h = 0, row_y + row_h + gap, 0
        placements.append((size, row_x, row_y))
        row_x += size + gap
        row_h = max(row_h, size)
    rng = np.random.default_rng(seed)
    canvas = cv2.GaussianBlur(rng.integers(0, 256, (row_y + row_h, canvas_width, 3), dtype=np.uint8), (0, 0), 2)
    truth = []
    for size, px, py in placements:
        canvas[py:py + size, px:px + size] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        scale = size / side
        truth.append([px + (x - x0) * scale, py + (y - y0) * scale, w * scale, h * scale])
    return canvas, np.array(truth)


def test_blazeface_finds_every_face_from_24_to_600_px(sportsfan, blazeface):
    widths = [24, 32, 48, 64, 96, 128, 192, 256, 400, 600]
    collage, truth = make_collage(*sportsfan, widths)
    detections = blazeface.detect(collage)
    mapped = np.array([face_box_from_detection(d) for d in detections]).reshape(-1, 4)
    overlaps = corner_iou(corners(truth), corners(mapped))
    found = overlaps.max(axis=1) if len(mapped) else np.zeros(len(truth))
    assert np.all(found >= 0.5), dict(zip(np.round(truth[:, 2]).astype(int).tolist(), found.round(2).tolist()))
    assert len(detections) == len(widths)  # and nothing else


def face_crops(*photos: tuple[np.ndarray, np.ndarray], enlarge: float = 1.5) -> list[tuple[np.ndarray, np.ndarray]]:
    """(square crop, face box in crop fractions x, y, w, h) of each photo's face and its mirror image."""
    crops = []
    for image, (x, y, w, h) in photos:
        side = int(enlarge * max(w, h))
        x0, y0 = int(x + w / 2 - side / 2), int(y + h / 2 - side / 2)
        padded = cv2.copyMakeBorder(image, side, side, side, side, cv2.BORDER_REFLECT)
        crop = padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side]
        box = np.array([x - x0, y - y0, w, h]) / side
        crops += [(crop, box), (np.ascontiguousarray(crop[:, ::-1]), np.array([1 - box[0] - box[2], *box[1:]]))]
    return crops


def make_group_photo(crops, width: int, height: int, widths: list[int], gap: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Faces side by side in rows, `gap` pixels apart, face-box widths cycling through
    `widths`, the crops in turn, on blurred noise. Returns the image and the face boxes."""
    rng = np.random.default_rng(seed)
    canvas = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 2)
    truth, x, y, row = [], gap, gap, 0
    for index in range(10_000):
        crop, (bx, by, bw, bh) = crops[index % len(crops)]
        side = int(round(widths[index % len(widths)] / bw))
        if x + side > width - gap:
            x, y, row = gap, y + row + gap, 0
        if y + side > height - gap:
            break
        canvas[y:y + side, x:x + side] = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        truth.append([x + bx * side, y + by * side, bw * side, bh * side])
        x, row = x + side + gap, max(row, side)
    return canvas, np.array(truth)


# (width, height, face-box widths, gap, seed): a crowd of faces 48 .. 110 px, and one of
# small faces 32 .. 40 px; rows of faces a few pixels apart, two people, both mirrored
GROUP_PHOTOS = {"crowd": (1280, 720, [48, 56, 72, 96, 110], 6, 0), "small faces": (640, 480, [32, 36, 40], 8, 1)}


@pytest.mark.parametrize("photo", sorted(GROUP_PHOTOS))
def test_blazeface_finds_everyone_in_group_photos(sportsfan, grace_hopper, blazeface, photo):
    crops = face_crops(sportsfan, grace_hopper)
    image, truth = make_group_photo(crops, *GROUP_PHOTOS[photo])
    assert len(truth) > 30
    detections = blazeface.detect(image)
    mapped = np.array([face_box_from_detection(d) for d in detections]).reshape(-1, 4)
    overlaps = corner_iou(corners(truth), corners(mapped))
    missed = np.flatnonzero(overlaps.max(axis=1) < 0.5)
    assert len(missed) == 0, f"missed faces of widths {np.round(truth[missed, 2]).astype(int).tolist()}"
    assert len(detections) == len(truth)  # one detection a face: neighbours are not merged


@pytest.mark.parametrize("model", ["full", "short"])
def test_blazeface_finds_a_face_filling_the_image(sportsfan, model):
    image, (x, y, w, h) = sportsfan
    side = int(max(w, h))
    x0, y0 = int(x + w / 2 - side / 2), int(y + h / 2 - side / 2)
    crop = image[y0:y0 + side, x0:x0 + side]
    detections = make_detector("blazeface", model=model).detect(crop)
    assert len(detections) == 1
    assert best_iou([x - x0, y - y0, w, h], [face_box_from_detection(detections[0])]) >= 0.5


def texture(kind: str, height: int, width: int) -> np.ndarray:
    """A faceless (height, width, 3) BGR image."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:height, 0:width]
    gray = {
        "checkerboard": lambda: ((yy // 16 + xx // 16) % 2) * 255,
        "stripes": lambda: 127 + 127 * np.sin(xx / 7.0) * np.cos(yy / 11.0),
        "rings": lambda: 127 + 127 * np.sin(np.hypot(xx - width / 2, yy - height / 3) / 5.0),
        "dots": lambda: 255 * ((np.hypot(xx % 24 - 12, yy % 24 - 12) < 5) | (np.hypot(xx % 24 - 4, yy % 24 - 18) < 3)),
    }
    if kind in gray:
        return np.repeat(gray[kind]().astype(np.uint8)[..., None], 3, axis=2)
    if kind == "blank":
        return np.full((height, width, 3), 200, np.uint8)
    if kind == "black":
        return np.zeros((height, width, 3), np.uint8)
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "noise":
        return noise
    if kind == "blurred noise":
        return cv2.GaussianBlur(noise, (0, 0), 3)
    if kind == "clouds":  # noise at several scales: blobs of every size the pyramid looks at
        layers = [cv2.resize(rng.random((max(1, height // s), max(1, width // s))), (width, height))
                  for s in (4, 16, 64)]
        return np.repeat((sum(layers) / len(layers) * 255).astype(np.uint8)[..., None], 3, axis=2)
    raise ValueError(kind)


TEXTURES = ["blank", "black", "noise", "blurred noise", "checkerboard", "stripes", "rings", "dots", "clouds"]


@pytest.mark.parametrize("kind", TEXTURES)
def test_blazeface_finds_nothing_without_faces(blazeface, kind):
    assert blazeface.detect(texture(kind, 240, 320)) == []


@pytest.mark.parametrize("kind", ["blurred noise", "stripes", "rings", "clouds"])
def test_blazeface_finds_nothing_on_large_textures(blazeface, kind):
    # 1280 x 960: every pyramid level, the finest one in tiles
    assert blazeface.detect(texture(kind, 960, 1280)) == []


def test_haar_finds_fixture_face(sportsfan):
    image, reference = sportsfan
    detections = make_detector("haar").detect(image)
    assert all(d.source == "haar" and d.keypoints is None for d in detections)
    assert best_iou(reference, [face_box_from_detection(d) for d in detections]) >= 0.5


@pytest.mark.skipif(not dlib_available(), reason="dlib is not installed (pip install dlib-bin)")
def test_dlib_finds_fixture_face(sportsfan):
    image, reference = sportsfan
    detections = make_detector("dlib").detect(image)
    assert best_iou(reference, [face_box_from_detection(d) for d in detections]) >= 0.5


def test_dlib_absent_gives_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_dlib(name, *args, **kwargs):
        if name == "dlib":
            raise ImportError("No module named 'dlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dlib)
    with pytest.raises(SpigaError, match="dlib-bin"):
        make_detector("dlib")


# ---------------------------------------------------------------- the interface


def test_make_detector_without_arguments_is_the_default_blazeface():
    detector = make_detector()
    assert isinstance(detector, BlazeFaceDetector) and detector.name == "blazeface"
    assert detector.spec.name == "full" and detector.nms == "weighted" and detector.min_face_size == 24
    assert detector.backend == ("onnxruntime" if runtimes.onnxruntime_available() else "torch")


def test_make_detector_rejects_unknown_names_and_options():
    with pytest.raises(InputError, match="unknown detector 'yolo'"):
        make_detector("yolo")
    with pytest.raises(InputError, match="blazeface"):
        make_detector("blazeface", thresh=0.5)
    with pytest.raises(InputError, match="model"):
        make_detector("blazeface", model="medium")
    with pytest.raises(InputError, match="unknown BlazeFace backend 'tflite'"):
        make_detector("blazeface", backend="tflite")
    with pytest.raises(InputError, match="CPU only"):
        make_detector("blazeface", backend="onnxruntime", device="cuda")
    with pytest.raises(InputError, match="max_candidates"):
        make_detector("blazeface", max_candidates=0)


def test_as_bgr_converts_and_rejects():
    gray = np.zeros((4, 5), np.uint8)
    assert as_bgr(gray).shape == (4, 5, 3)
    assert as_bgr(np.zeros((4, 5, 1), np.uint8)).shape == (4, 5, 3)
    assert as_bgr(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    with pytest.raises(InputError, match="uint8"):
        as_bgr(np.zeros((4, 5, 3), np.float32))
    with pytest.raises(InputError, match="shape"):
        as_bgr(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(InputError, match="numpy"):
        as_bgr([[0]])


def test_blazeface_accepts_tiny_and_gray_images(blazeface):
    assert blazeface.detect(np.zeros((3, 2), np.uint8)) == []


# ---------------------------------------------------------------- BlazeFace pieces


def test_anchor_grids_match_mediapipe_layout():
    short = anchor_centres(SPECS["short"])
    assert short.shape == (896, 2)
    # stride 8: 16x16 cells, 2 anchors each, row-major; then stride 16: 8x8 cells, 6 each
    np.testing.assert_allclose(short[0], [4, 4])
    np.testing.assert_allclose(short[1], [4, 4])
    np.testing.assert_allclose(short[2], [12, 4])
    np.testing.assert_allclose(short[32], [4, 12])
    np.testing.assert_allclose(short[512:518], [[8, 8]] * 6)
    np.testing.assert_allclose(short[-1], [120, 120])
    full = anchor_centres(SPECS["full"])
    assert full.shape == (2304, 2)
    np.testing.assert_allclose(full[[0, 1, 48, -1]], [[2, 2], [6, 2], [2, 6], [190, 190]])
    # the grid extends to any input: a 64 x 32 full-range input has 16 x 8 cells
    assert anchor_centres(SPECS["full"], 64, 32).shape == (128, 2)


def test_decode_offsets_are_input_pixels():
    anchors = np.array([[10.0, 20.0]], np.float32)
    regressors = np.zeros((1, 1, 16), np.float32)
    regressors[0, 0, :4] = [1.0, -2.0, 8.0, 6.0]
    regressors[0, 0, 4:6] = [3.0, 4.0]
    boxes, keypoints, scores = decode(regressors, np.array([[0.0]], np.float32), anchors)
    np.testing.assert_allclose(boxes[0, 0], [7, 15, 15, 21])
    np.testing.assert_allclose(keypoints[0, 0, 0], [13, 24])
    np.testing.assert_allclose(keypoints[0, 0, 1], [10, 20])
    assert float(scores[0, 0]) == 0.5 and scores.dtype == np.float32
    _, _, clipped = decode(regressors, np.array([[1e6]], np.float32), anchors)
    assert float(clipped[0, 0]) == pytest.approx(1.0)


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.5, 0.6, 0.65, 0.999, 1.0])
def test_logit_cut_keeps_every_anchor_that_reaches_the_threshold(threshold):
    logits = np.linspace(-12, 12, 100_001, dtype=np.float32)
    reaching = sigmoid(np.clip(logits, -100, 100)) >= threshold
    assert np.all(logits[reaching] >= min_logit(threshold))  # the cut never drops one
    assert np.mean(logits >= min_logit(threshold)) <= np.mean(reaching) + 1e-3  # and decodes few others


def test_depth_to_space_follows_tensorflow_order():
    rng = np.random.default_rng(0)
    nhwc = rng.standard_normal((1, 2, 3, 8))  # block 2, 2 output channels
    expected = np.zeros((1, 4, 6, 2))
    for h in range(2):
        for w in range(3):
            for i in range(2):
                for j in range(2):
                    expected[0, 2 * h + i, 2 * w + j] = nhwc[0, h, w, (i * 2 + j) * 2:(i * 2 + j) * 2 + 2]
    out = _depth_to_space(torch.from_numpy(nhwc).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, expected)


def test_shipped_weights_are_small_and_licensed():
    folder = Path(__import__("spiga.detection", fromlist=["x"]).__file__).parent / "weights"
    files = sorted(p.name for p in folder.iterdir())
    assert "LICENSE-mediapipe.txt" in files and "NOTICE" in files
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5 * 2 ** 20
    from safetensors import safe_open

    for variant in SPECS:
        with safe_open(folder / f"blazeface_{variant}.safetensors", "np") as handle:
            metadata = handle.metadata()
        assert metadata["variant"] == variant and len(metadata["source_sha256"]) == 64


def reference_nms(boxes, scores, iou_threshold, points, weighted):
    """Greedy NMS on the full pairwise IoU matrix (small inputs only)."""
    order = np.argsort(-scores, kind="stable")
    overlaps = corner_iou(boxes, boxes)
    kept, remaining = [], order
    while len(remaining):
        cluster = remaining[(overlaps[remaining[0], remaining] > iou_threshold) | (remaining == remaining[0])]
        weights = scores[cluster] / scores[cluster].sum() if weighted else (cluster == remaining[0]).astype(float)
        kept.append((weights @ boxes[cluster], scores[remaining[0]], np.tensordot(weights, points[cluster], axes=1)))
        remaining = remaining[~np.isin(remaining, cluster)]
    return tuple(np.array(values) for values in zip(*kept))


def random_candidates(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (count, 4) clustered around a few faces, scores, keypoints (count, 6, 2)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1000, (20, 2))[rng.integers(0, 20, count)] + rng.normal(0, 6, (count, 2))
    sizes = rng.uniform(20, 80, (count, 1))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    points = centres[:, None, :] + rng.normal(0, 5, (count, 6, 2))
    return boxes, rng.uniform(0.5, 1.0, count), points


@pytest.mark.parametrize("weighted", [True, False])
def test_nms_matches_the_pairwise_reference(weighted):
    boxes, scores, points = random_candidates(600)
    got = non_max_suppression(boxes, scores, 0.3, points, weighted=weighted)
    want = reference_nms(boxes, scores, 0.3, points, weighted)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)


def test_nms_keeps_only_the_best_candidates():
    boxes = np.array([[0, 0, 10, 10], [100, 0, 110, 10], [200, 0, 210, 10]], float)
    kept, kept_scores, _ = non_max_suppression(boxes, np.array([0.7, 0.9, 0.8]), max_candidates=2)
    np.testing.assert_allclose(kept_scores, [0.9, 0.8])
    np.testing.assert_allclose(kept, boxes[[1, 2]])
    assert MAX_CANDIDATES >= 1000


def test_nms_memory_stays_linear_on_a_flood_of_candidates():
    import tracemalloc

    count = 300_000  # a pairwise float64 matrix would take 720 GB; the top-K one 32 MB
    boxes, scores, points = random_candidates(count, seed=1)
    boxes, scores, points = boxes.astype(np.float32), scores.astype(np.float32), points.astype(np.float32)
    tracemalloc.start()
    try:
        kept, kept_scores, kept_points = non_max_suppression(boxes, scores, 0.3, points)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB"
    assert 1 <= len(kept) <= MAX_CANDIDATES and kept_scores[0] == pytest.approx(scores.max())
    assert kept_points.shape == (len(kept), 6, 2)


def test_drop_contained_matches_the_pairwise_rule():
    boxes, _, _ = random_candidates(700, seed=2)  # more boxes than one chunk of rows
    sides = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:]) - np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    intersection = np.prod(np.clip(sides, 0, None), axis=-1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    covered = (intersection >= 0.7 * area[:, None]) & (area[None, :] > area[:, None])
    np.testing.assert_array_equal(drop_contained(boxes), ~covered.any(axis=1))


def test_nms_weighted_merges_and_hard_keeps_best():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.6, 0.7])
    points = np.zeros((3, 6, 2))
    points[1] += 5
    merged, merged_scores, merged_points = non_max_suppression(boxes, scores, 0.3, points, weighted=True)
    np.testing.assert_allclose(merged_scores, [0.9, 0.7])
    np.testing.assert_allclose(merged[0], [0.4, 0, 10.4, 10])  # (0.9 * 0 + 0.6 * 1) / 1.5
    np.testing.assert_allclose(merged_points[0], 2.0)
    kept, kept_scores, _ = non_max_suppression(boxes, scores, 0.3, weighted=False)
    np.testing.assert_allclose(kept, boxes[[0, 2]])
    empty, empty_scores, _ = non_max_suppression(np.zeros((0, 4)), np.zeros(0))
    assert empty.shape == (0, 4) and empty_scores.shape == (0,)


def test_boxes_inside_larger_boxes_are_dropped():
    boxes = np.array([[0, 0, 100, 100], [10, 10, 40, 40], [90, 90, 130, 130], [200, 0, 210, 10]], float)
    np.testing.assert_array_equal(drop_contained(boxes), [True, False, True, True])


@pytest.mark.parametrize("model", ["full", "short"])
@pytest.mark.parametrize("height, width", [(480, 640), (1080, 1920), (60, 3000), (3000, 60), (10, 10), (4000, 3000)])
def test_pyramid_covers_every_face_size(model, height, width):
    spec, min_face = SPECS[model], 24.0
    min_fraction, max_fraction = SIZE_RANGES[model]
    levels = plan_levels(height, width, spec, min_face, SIZE_RANGES[model], tile_size=1024)
    # level 0 takes everything above its band's floor; the finest level goes down to 0 and
    # its scale lets a min_face box span at least min_fraction of the input
    assert levels[0].max_box == math.inf and levels[-1].min_box == 0
    assert min_fraction * spec.input_size / levels[-1].scale <= min_face * (1 + 1e-9) or len(levels) == 1
    for coarse, fine in zip(levels, levels[1:]):
        assert fine.scale > coarse.scale
        assert coarse.min_box < fine.max_box  # size bands overlap
    for level in levels[1:]:
        scaled_w, scaled_h = scaled_size(height, width, level.scale)
        window_w, window_h = level.window
        assert window_w % spec.size_multiple == 0 and window_h % spec.size_multiple == 0
        xs, ys = np.unique(level.origins[:, 0]), np.unique(level.origins[:, 1])
        # windows cover the scaled image and overlap by more than the largest kept box
        assert xs[0] == 0 and xs[-1] + window_w >= scaled_w and ys[0] == 0 and ys[-1] + window_h >= scaled_h
        largest = level.max_box * level.scale
        assert np.all(xs[:-1] + window_w - xs[1:] >= largest) and np.all(ys[:-1] + window_h - ys[1:] >= largest)


def test_windows_cut_from_the_scaled_image():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 100:] = 255  # right half white
    level = plan_levels(100, 200, SPECS["full"], 1000, SIZE_RANGES["full"])[0]
    (window,) = cut_windows(image, level)
    # level 0: the image's long side spans max_fraction of the model input, centred in a
    # window of at least FIRST_MARGIN black pixels around it, sides a multiple of 32
    span_w = round(SIZE_RANGES["full"][1] * 192)
    span_h = span_w // 2
    height, width = window.shape[:2]
    assert (width, height) == level.window and width % 32 == 0 and height % 32 == 0
    assert width >= span_w + 2 * FIRST_MARGIN and height >= span_h + 2 * FIRST_MARGIN and width < 192
    left, top = (width - span_w) // 2, (height - span_h) // 2
    np.testing.assert_array_equal(level.origins[0], [-left, -top])
    assert window[:top].max() == 0 and window[top + span_h:].max() == 0
    assert window[:, :left].max() == 0 and window[:, left + span_w:].max() == 0
    middle = top + span_h // 2
    assert window[middle, left:left + span_w // 2 - 1].max() == 0
    assert window[middle, left + span_w // 2 + 1:left + span_w].min() == 255
    # MediaPipe's single pass (multiscale=False) letterboxes into the whole model input
    (single,) = BlazeFaceDetector(multiscale=False).levels(100, 200)
    assert single.window == (192, 192)


def test_level_images_are_shrunk_from_the_finer_levels():
    """Each level's image has the level's size and is (close to) the photo shrunk with area
    interpolation, though made from the next finer level's image."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 6)
    levels = plan_levels(480, 640, SPECS["full"], 24, SIZE_RANGES["full"])
    assert len(levels) == 3
    for level, scaled in zip(levels, level_images(image, levels)):
        size = scaled_size(480, 640, level.scale)
        assert (scaled.shape[1], scaled.shape[0]) == size
        direct = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        assert np.abs(scaled.astype(int) - direct).mean() < 1.5
    enlarged = plan_levels(48, 64, SPECS["full"], 24, SIZE_RANGES["full"])
    assert [img.shape[:2] for img in level_images(image[:48, :64], enlarged)] == \
        [scaled_size(48, 64, level.scale)[::-1] for level in enlarged]


@pytest.mark.skipif(not runtimes.onnxruntime_available(), reason="needs onnxruntime")
def test_onnxruntime_threads_do_not_spin_between_calls(sportsfan):
    """The pool spins during a run only: idle, it leaves the cores to PyTorch."""
    import time

    runtime = runtimes.OnnxRuntime("full", threads=2)
    window = cv2.resize(sportsfan[0], (576, 448))[None, :, :, ::-1]
    images = to_input_array(window)
    runtime(images)
    runtime(images)  # only onnxruntime ran last: no other pool's threads are winding down
    start = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - start < 0.02  # spinning on after a run: about 0.06 s


def test_faces_cut_by_inner_window_edges_are_dropped():
    boxes = np.array([[1, 50, 40, 90], [60, 60, 100, 100], [150, 10, 190, 50]], float)
    inner = not_cut_by_window_edge(boxes, np.array([100, 0]), (192, 192), 500, 192)
    np.testing.assert_array_equal(inner, [False, True, False])
    at_border = not_cut_by_window_edge(boxes, np.array([0, 0]), (192, 192), 192, 192)
    np.testing.assert_array_equal(at_border, [True, True, True])


def test_detection_options_change_results(sportsfan):
    image, _ = sportsfan
    small = cv2.resize(image, (256, 192), interpolation=cv2.INTER_AREA)
    loose = make_detector("blazeface", score_threshold=0.05, nms="none", min_face_size=48).detect(small)
    merged = make_detector("blazeface", score_threshold=0.05, nms="hard", min_face_size=48).detect(small)
    assert len(loose) > len(merged) >= 1
    assert [d.score for d in merged] == sorted((d.score for d in merged), reverse=True)
    single = make_detector("blazeface", multiscale=False).detect(small)
    assert len(single) == 1 and single[0].source == "blazeface"
    capped = make_detector("blazeface", score_threshold=0.05, nms="none", min_face_size=48, max_candidates=3)
    assert [d.score for d in capped.detect(small)] == [d.score for d in loose[:3]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_flood_of_candidates_stays_bounded(backend):
    # score threshold 0: every anchor of every level is a candidate (tens of thousands)
    detector = make_detector("blazeface", score_threshold=0.0, backend=backend, max_candidates=500)
    detections = detector.detect(texture("clouds", 480, 640))
    assert 1 <= len(detections) <= 500


# ---------------------------------------------------------------- the runtimes


@ONNXRUNTIME
def test_shipped_onnx_graphs_are_the_shipped_weights():
    import hashlib
    import json as json_module

    import onnxruntime

    folder = Path(runtimes.__file__).parent / "weights"
    for variant in SPECS:
        session = onnxruntime.InferenceSession(str(folder / f"blazeface_{variant}.onnx"),
                                               providers=["CPUExecutionProvider"])
        header = json_module.loads(session.get_modelmeta().custom_metadata_map[runtimes.ONNX_METADATA_KEY])
        weights = folder / f"blazeface_{variant}.safetensors"
        assert header["variant"] == variant and header["weights"] == weights.name
        assert header["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


@ONNXRUNTIME
@pytest.mark.parametrize("variant", sorted(SPECS))
def test_runtimes_give_the_same_raw_outputs(variant):
    rng = np.random.default_rng(0)
    multiple = SPECS[variant].size_multiple
    for height, width in [(SPECS[variant].input_size,) * 2, (3 * multiple, 7 * multiple)]:
        images = to_input_array(rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8))
        reference = runtimes.TorchRuntime(variant)(images)
        fast = runtimes.OnnxRuntime(variant)(images)
        for got, want in zip(fast, reference):
            assert got.shape == want.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-4)


@ONNXRUNTIME
@pytest.mark.parametrize("model", sorted(SPECS))
def test_runtimes_give_the_same_boxes(sportsfan, grace_hopper, model):
    photo = make_group_photo(face_crops(sportsfan, grace_hopper), 800, 600, [28, 40, 64, 120], 10, 3)[0]
    for image in [photo, sportsfan[0]]:
        reference = make_detector("blazeface", model=model, backend="torch").detect(image)
        fast = make_detector("blazeface", model=model, backend="onnxruntime").detect(image)
        assert len(fast) == len(reference) >= 1
        for a, b in zip(fast, reference):
            np.testing.assert_allclose(a.box, b.box, atol=0.05)
            np.testing.assert_allclose(a.keypoints, b.keypoints, atol=0.05)
            assert a.score == pytest.approx(b.score, abs=1e-4)


def test_auto_backend_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(runtimes, "onnxruntime_available", lambda: False)
    assert make_detector("blazeface").backend == "torch"
    assert make_detector("blazeface", backend="torch").backend == "torch"


def test_auto_backend_falls_back_to_torch_when_onnxruntime_fails(monkeypatch, caplog):
    def broken(variant, threads):
        raise runtimes.CheckpointError(f"blazeface_{variant}.onnx: onnxruntime cannot load it (too old)")

    monkeypatch.setattr(runtimes, "onnxruntime_available", lambda: True)
    monkeypatch.setattr(runtimes, "_onnx_session", broken)
    assert make_detector("blazeface").backend == "torch"
    assert "onnxruntime unusable" in caplog.text
    with pytest.raises(SpigaError, match="too old"):
        make_detector("blazeface", backend="onnxruntime")


def test_short_range_model_finds_fixture_face(sportsfan):
    image, reference = sportsfan
    detections = make_detector("blazeface", model="short", min_face_size=64).detect(image)
    assert best_iou(reference, [face_box_from_detection(d) for d in detections]) >= 0.5


# ---------------------------------------------------------------- the box mapping


def upright_keypoints(centre=(100.0, 100.0), eye_gap=40.0, eye_mouth=45.0, nose_shift=0.0) -> np.ndarray:
    cx, cy = centre
    return np.array([[cx - eye_gap / 2, cy], [cx + eye_gap / 2, cy], [cx + nose_shift, cy + 25],
                     [cx, cy + eye_mouth], [cx - eye_gap, cy + 10], [cx + eye_gap, cy + 10]])


def test_keypoint_rule_geometry():
    points = upright_keypoints()
    x, y, w, h = boxes_from_keypoints(points[None])[0]
    assert x + w / 2 == pytest.approx(100)  # a frontal face is centred between the eyes
    assert y < 100 < 145 < y + h  # reaches above the eyes and below the mouth
    # turning the nose to the image's right moves the box the other way (the far cheek)
    turned = boxes_from_keypoints(upright_keypoints(nose_shift=8)[None])[0]
    assert turned[0] + turned[2] / 2 < 100
    # scale and translation equivariance
    np.testing.assert_allclose(boxes_from_keypoints((points * 2 + 7)[None])[0], [2 * x + 7, 2 * y + 7, 2 * w, 2 * h])
    # mirroring the face (right and left swap roles) mirrors the box
    mirrored = upright_keypoints(nose_shift=8)
    mirrored[:, 0] = 200 - mirrored[:, 0]
    mirrored = mirrored[[1, 0, 2, 3, 5, 4]]
    mx, my, mw, mh = boxes_from_keypoints(mirrored[None])[0]
    assert (200 - mx - mw, my, mw, mh) == pytest.approx(tuple(turned))
    # a quarter turn of the face swaps the box's width and height about the same centre
    rotated = (points - 100) @ np.array([[0, 1], [-1, 0]]) + 100
    rx, ry, rw, rh = boxes_from_keypoints(rotated[None])[0]
    assert (rw, rh) == pytest.approx((h, w))


def test_keypoint_rule_on_cofw68_ground_truth():
    """The calibration data: landmark-derived keypoints reproduce the dataset boxes."""
    faces = json.loads(shared_file("fixtures", "upstream", "annotations", "cofw68", "test.json").read_text())
    landmarks = np.array([f["landmarks"] for f in faces])
    keypoints = np.stack([landmarks[:, 36:42].mean(1), landmarks[:, 42:48].mean(1), landmarks[:, 30],
                          landmarks[:, 48:68].mean(1)], axis=1)
    predicted = boxes_from_keypoints(keypoints)
    truth = np.array([f["bbox"] for f in faces])
    ious = np.diag(corner_iou(corners(predicted), corners(truth)))
    assert ious.mean() > 0.8 and np.percentile(ious, 5) > 0.65


def test_mapping_picks_rule_by_source():
    points = upright_keypoints()
    blaze = Detection((50.0, 60.0, 100.0, 100.0), 0.9, points, "blazeface")
    np.testing.assert_allclose(face_box_from_detection(blaze), boxes_from_keypoints(points[None])[0])
    without_points = Detection((50.0, 60.0, 100.0, 100.0), 0.9, None, "blazeface")
    assert face_box_from_detection(without_points) == pytest.approx(box_from_box((50, 60, 100, 100),
                                                                                 BOX_RULES["blazeface"]))
    haar = Detection((10.0, 20.0, 100.0, 100.0), 3.0, None, "haar")
    dx, dy, sw, sh = BOX_RULES["haar"]
    x, y, w, h = face_box_from_detection(haar)
    assert (x + w / 2, y + h / 2, w, h) == pytest.approx((60 + 100 * dx, 70 + 100 * dy, 100 * sw, 100 * sh))
    from_file = Detection((1.0, 2.0, 3.0, 4.0))
    assert face_box_from_detection(from_file) == (1.0, 2.0, 3.0, 4.0)


# ---------------------------------------------------------------- boxes from a file


def test_box_files_in_every_format(tmp_path):
    (tmp_path / "one.json").write_text('{"bbox": [357.5, 243.0, 283.4, 275.6]}')
    (tmp_path / "many.json").write_text('{"boxes": [[1, 2, 3, 4], [5, 6, 7, 8, 0.5]]}')
    (tmp_path / "list.json").write_text('[{"bbox": [1, 2, 3, 4], "score": 0.7}, [5, 6, 7, 8]]')
    (tmp_path / "named.json").write_text('{"dir/a.jpg": [[1, 2, 3, 4]], "b.jpg": {"bbox": [5, 6, 7, 8]}}')
    (tmp_path / "boxes.txt").write_text("# x y w h\n1 2 3 4\n\n5,6,7,8,0.25  # second\n")
    (tmp_path / "named.csv").write_text("a.jpg,1,2,3,4\nb.jpg 5 6 7 8\nb.jpg 9 10 11 12\n")
    assert read_box_file(tmp_path / "one.json")[None][0].box == (357.5, 243.0, 283.4, 275.6)
    many = read_box_file(tmp_path / "many.json")[None]
    assert [d.box for d in many] == [(1, 2, 3, 4), (5, 6, 7, 8)] and many[1].score == 0.5
    assert [d.score for d in read_box_file(tmp_path / "list.json")[None]] == [0.7, 1.0]
    assert set(read_box_file(tmp_path / "named.json")) == {"dir/a.jpg", "b.jpg"}
    text = read_box_file(tmp_path / "boxes.txt")[None]
    assert [d.box for d in text] == [(1, 2, 3, 4), (5, 6, 7, 8)] and text[1].score == 0.25
    assert len(read_box_file(tmp_path / "named.csv")["b.jpg"]) == 2


def test_file_detector_returns_boxes_for_the_image(tmp_path):
    image = np.zeros((100, 100, 3), np.uint8)
    (tmp_path / "named.json").write_text('{"dir/a.jpg": [[1, 2, 3, 4]], "b.jpg": {"bbox": [5, 6, 7, 8]}}')
    detector = make_detector(f"file:{tmp_path / 'named.json'}", image="a.jpg")
    assert [d.box for d in detector.detect(image)] == [(1, 2, 3, 4)]
    assert [d.box for d in detector.faces_for("/elsewhere/b.jpg")] == [(5, 6, 7, 8)]
    with pytest.raises(InputError, match="2 images"):
        make_detector("file", path=tmp_path / "named.json").detect(image)
    with pytest.raises(InputError, match="no boxes for image 'c.jpg'"):
        detector.faces_for("c.jpg")
    (tmp_path / "far.txt").write_text("500 500 10 10\n")
    with pytest.raises(InputError, match="outside"):
        make_detector("file", path=tmp_path / "far.txt").detect(image)


@pytest.mark.parametrize("name, content, message", [
    ("bad.json", '{"bbox": [1, 2, 3]', r"line 1: not valid JSON"),
    ("short.json", '{"bbox": [1, 2, 3]}', r"short.json: top level\.bbox: a box is 4 numbers"),
    ("negative.json", '{"boxes": [[1, 2, 3, 4], [1, 2, -3, 4]]}', r"boxes\[1\]: box .* non-positive"),
    ("text.json", '{"bbox": [1, 2, "w", 4]}', r"'w' is not a finite number"),
    ("nan.json", '{"bbox": [1, 2, NaN, 4]}', r"not a finite number"),
    ("keys.json", '{"a.jpg": {"box": [1, 2, 3, 4]}}', r"entry 'a.jpg': expected a 'bbox' or 'boxes'"),
    ("words.txt", "1 2 3 4\n1 2 three 4\n", r"words.txt: line 2: expected numbers"),
    ("count.txt", "1 2 3\n", r"count.txt: line 1: a box is 4 numbers"),
    ("zero.txt", "1 2 0 4\n", r"line 1: box .* non-positive"),
    ("empty.txt", "# nothing\n", r"empty.txt: no boxes"),
    ("mixed.txt", "a.jpg 1 2 3 4\n1 2 3 4\n", r"some lines name an image"),
])
def test_malformed_box_files_are_rejected(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=message):
        make_detector("file", path=tmp_path / name)


def test_missing_box_file(tmp_path):
    with pytest.raises(DatasetError, match="no such box file"):
        read_box_file(tmp_path / "absent.json")
