"""Synthetic faces with exact landmarks, for tests, smoke runs and benchmarks.

A 32-point parametric 3D face (jaw, brows, eyes, nose, mouth) is posed at random
(yaw +-40, pitch +-25, roll +-30 degrees), jittered like an expression, projected
with SPIGA's own camera and pose convention, and painted (skin, eyes, pupils, brows,
nose, lips) over a random texture, so that every landmark sits on a visible image
feature. `write_synthetic_dataset` writes images, a custom-format JSON Lines file, the
landmark-set file and the 3D mean face (`id|x|y|z`), i.e. everything `spiga train`
needs. The `thermal` domain renders the same faces as inverted-contrast gray 16-bit
PNGs, a stand-in for radiometric thermal images.

`layout="ibug68"` annotates the same faces with the 68 iBUG points (the layout of 300W
and of SPIGA's 68-point models): each is a fixed interpolation of the 32 points in 3D,
before projection, so that it lies on the painted contour it names (jaw, brows, eye and
lip outlines, nose); the inner lip, which the painting does not draw, is the outer lip
pulled 40 % of the way to the mouth's centre.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..geometry.camera import intrinsics, project_points
from ..geometry.rotations import euler_to_rotation
from ..io import write_image, write_output
from ..landmarks.mean_face import mean_face_to_world, write_mean_face
from ..landmarks.sets import IBUG_68
from ..preprocess import OFFICIAL_FOCAL_RATIO


def _face_points() -> tuple[list[str], np.ndarray]:
    """Names and face-frame points (x: subject's left, y: up, z: out of the face; nose tip at 0)."""
    names, points = [], []
    for i, t in enumerate(np.linspace(-0.47 * np.pi, 0.47 * np.pi, 9)):
        names.append(f"jaw_{i}")
        points.append((0.72 * np.sin(t), 0.15 - 0.78 * np.cos(t), -0.25 - 0.6 * (1 - np.cos(t))))
    for side, sign in (("right", -1), ("left", 1)):
        for i, (x, y) in enumerate([(0.52, 0.52), (0.34, 0.6), (0.14, 0.55)] if sign < 0 else
                                   [(0.14, 0.55), (0.34, 0.6), (0.52, 0.52)]):
            names.append(f"{side}_brow_{i}")
            points.append((sign * x, y, -0.3))
    for side, sign in (("right", -1), ("left", 1)):
        order = [("outer", 0.46, 0.36), ("top", 0.3, 0.43), ("inner", 0.14, 0.36), ("bottom", 0.3, 0.3)]
        if sign > 0:
            order = [order[2], order[1], order[0], order[3]]
        for label, x, y in order:
            names.append(f"{side}_eye_{label}")
            points.append((sign * x, y, -0.38))
    names += ["nose_bridge", "nose_tip", "nose_right", "nose_base", "nose_left"]
    points += [(0.0, 0.32, -0.25), (0.0, 0.0, 0.0), (-0.13, -0.08, -0.14), (0.0, -0.11, -0.1), (0.13, -0.08, -0.14)]
    names += ["mouth_right", "mouth_top", "mouth_left", "mouth_bottom"]
    points += [(-0.24, -0.33, -0.18), (0.0, -0.27, -0.08), (0.24, -0.33, -0.18), (0.0, -0.42, -0.1)]
    return names, np.array(points, dtype=np.float64)


POINT_NAMES, FACE_POINTS = _face_points()
_INDEX = {name: i for i, name in enumerate(POINT_NAMES)}


def _ids(*names: str) -> list[int]:
    return [_INDEX[n] for n in names]


def landmark_set_description() -> dict:
    """The synthetic layout as a landmark-set file (see `spiga.landmarks.set_files`)."""
    pairs = [[i, 8 - i] for i in range(4)]
    pairs += [[_INDEX[f"right_brow_{i}"], _INDEX[f"left_brow_{2 - i}"]] for i in range(3)]
    pairs += [[_INDEX[f"right_eye_{p}"], _INDEX[f"left_eye_{p}"]] for p in ("outer", "top", "inner", "bottom")]
    pairs += [_ids("nose_right", "nose_left"), _ids("mouth_right", "mouth_left")]
    edges = {
        "jaw": list(range(9)),
        "right_brow": _ids("right_brow_0", "right_brow_1", "right_brow_2"),
        "left_brow": _ids("left_brow_0", "left_brow_1", "left_brow_2"),
        "right_eye_upper": _ids("right_eye_outer", "right_eye_top", "right_eye_inner"),
        "right_eye_lower": _ids("right_eye_outer", "right_eye_bottom", "right_eye_inner"),
        "left_eye_upper": _ids("left_eye_inner", "left_eye_top", "left_eye_outer"),
        "left_eye_lower": _ids("left_eye_inner", "left_eye_bottom", "left_eye_outer"),
        "nose_bridge": _ids("nose_bridge", "nose_tip"),
        "nose_base": _ids("nose_right", "nose_base", "nose_left"),
        "upper_lip": _ids("mouth_right", "mouth_top", "mouth_left"),
        "lower_lip": _ids("mouth_right", "mouth_bottom", "mouth_left"),
    }
    return {
        "name": "synthetic32",
        "points": POINT_NAMES,
        "mirror_pairs": pairs,
        "edges": edges,
        "eye_corners": _ids("right_eye_outer", "left_eye_outer"),
        "eyes": [_ids("right_eye_outer", "right_eye_top", "right_eye_inner", "right_eye_bottom"),
                 _ids("left_eye_inner", "left_eye_top", "left_eye_outer", "left_eye_bottom")],
    }


def mean_face_text() -> str:
    """The synthetic 3D face in the original `id|x|y|z` format (ids 0..31)."""
    return "".join(f"{i}|{x:.6f}|{y:.6f}|{z:.6f}\n" for i, (x, y, z) in enumerate(FACE_POINTS))


def _lerp(a: str, b: str, t: float) -> tuple[str, str, float]:
    return a, b, t


def _ibug68_recipe() -> list[tuple[str, str, float]]:
    """Each iBUG point as (point a, point b, t): the point at a + t (b - a) of the 32-point face."""
    recipe = [_lerp(f"jaw_{k // 2}", f"jaw_{(k + 1) // 2}", 0.5 * (k % 2)) for k in range(17)]
    for side in ("right", "left"):  # 17-21 right brow outer -> inner, 22-26 left brow inner -> outer
        recipe += [_lerp(f"{side}_brow_{k // 2}", f"{side}_brow_{(k + 1) // 2}", 0.5 * (k % 2)) for k in range(5)]
    recipe += [_lerp("nose_bridge", "nose_tip", t) for t in (0, 1 / 3, 2 / 3, 1)]
    recipe += [_lerp("nose_right", "nose_base", t) for t in (0, 0.5)]
    recipe += [_lerp("nose_base", "nose_left", t) for t in (0, 0.5, 1)]
    for side, first, last in (("right", "outer", "inner"), ("left", "inner", "outer")):
        a, top, b, bottom = (f"{side}_eye_{p}" for p in (first, "top", last, "bottom"))
        recipe += [_lerp(a, top, 0), _lerp(a, top, 0.5), _lerp(top, b, 0.5), _lerp(b, top, 0),
                   _lerp(b, bottom, 0.5), _lerp(bottom, a, 0.5)]
    corners = ("mouth_right", "mouth_top", "mouth_left", "mouth_bottom", "mouth_right")
    for a, b in zip(corners, corners[1:]):  # 48-59: the outer lip, three points per side
        recipe += [_lerp(a, b, t) for t in (0, 1 / 3, 2 / 3)]
    return recipe


def _ibug68_weights() -> np.ndarray:
    """(68, 32): the iBUG points as weights of the 32 synthetic points."""
    weights = np.zeros((68, len(POINT_NAMES)))
    for row, (a, b, t) in enumerate(_ibug68_recipe()):
        weights[row, _INDEX[a]] += 1 - t
        weights[row, _INDEX[b]] += t
    centre = np.zeros(len(POINT_NAMES))
    centre[_ids("mouth_right", "mouth_top", "mouth_left", "mouth_bottom")] = 0.25
    for row, outer in zip(range(60, 68), (48, 50, 51, 52, 54, 56, 57, 58)):  # 60-67: the inner lip
        weights[row] = 0.6 * weights[outer] + 0.4 * centre
    return weights


#: Landmark layouts the generator annotates: its own 32 points, or the 68 iBUG points.
LAYOUTS = ("synthetic32", "ibug68")


@dataclass
class SyntheticFace:
    image: np.ndarray        # (H, W, 3) BGR uint8
    landmarks: np.ndarray    # (32, 2) image pixels
    box: np.ndarray          # (x, y, w, h)
    pose: np.ndarray         # (6,) yaw, pitch, roll, tx, ty, tz in the image camera (the official focal ratio)
    ibug68: np.ndarray | None = None  # (68, 2) image pixels: the same face in the iBUG layout


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, size=(rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.float32)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, rng.uniform(3, 20), size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255)


def render_face(rng: np.random.Generator, size: int = 256,
                max_angles: tuple[float, float, float] = (40.0, 25.0, 30.0)) -> SyntheticFace:
    """One random face on a random background, square image of side `size`; yaw, pitch
    and roll uniform within +-`max_angles` degrees."""
    angles = np.array([rng.uniform(-a, a) for a in max_angles])
    tz = rng.uniform(2.8, 4.2)
    translation = np.array([rng.uniform(-0.12, 0.12) * tz, rng.uniform(-0.12, 0.12) * tz, tz])
    face = FACE_POINTS + rng.normal(0, 0.012, FACE_POINTS.shape)
    face[_INDEX["mouth_bottom"], 1] -= rng.uniform(0, 0.12)  # mouth opening
    face[[_INDEX["right_brow_1"], _INDEX["left_brow_1"]], 1] += rng.uniform(-0.03, 0.06)
    rotation, camera = euler_to_rotation(angles), intrinsics(size, OFFICIAL_FOCAL_RATIO)
    points = project_points(mean_face_to_world(face), rotation, translation, camera)
    ibug68 = project_points(mean_face_to_world(_ibug68_weights() @ face), rotation, translation, camera)

    image = _texture(rng, size)
    skin = rng.uniform(60, 230, 3)
    # the head: the jaw closed by an arc over the brows
    forehead = [points[_INDEX["left_brow_2"]] + (points[_INDEX["left_brow_2"]] - points[_INDEX["nose_tip"]]) * 0.5,
                points[_INDEX["right_brow_0"]] + (points[_INDEX["right_brow_0"]] - points[_INDEX["nose_tip"]]) * 0.5]
    head = np.vstack([points[:9], *forehead]).round().astype(np.int32)
    cv2.fillPoly(image, [cv2.convexHull(head)], skin.tolist(), cv2.LINE_AA)
    cv2.polylines(image, [points[:9].round().astype(np.int32)], False, (skin * 0.55).tolist(), 2, cv2.LINE_AA)
    dark = (skin * rng.uniform(0.15, 0.4)).tolist()
    for side in ("right", "left"):
        brow = points[_ids(f"{side}_brow_0", f"{side}_brow_1", f"{side}_brow_2")].round().astype(np.int32)
        cv2.polylines(image, [brow], False, dark, 3, cv2.LINE_AA)
        eye = points[_ids(f"{side}_eye_outer", f"{side}_eye_top", f"{side}_eye_inner", f"{side}_eye_bottom")]
        cv2.fillPoly(image, [eye.round().astype(np.int32)], (235, 235, 235), cv2.LINE_AA)
        centre = eye.mean(0)
        radius = max(1, int(0.22 * np.linalg.norm(eye[0] - eye[2])))
        cv2.circle(image, tuple(int(v) for v in centre.round()), radius, dark, -1, cv2.LINE_AA)
    nose = points[_ids("nose_bridge", "nose_tip")].round().astype(np.int32)
    cv2.polylines(image, [nose], False, (skin * 0.6).tolist(), 2, cv2.LINE_AA)
    base = points[_ids("nose_right", "nose_base", "nose_left")].round().astype(np.int32)
    cv2.polylines(image, [base], False, (skin * 0.5).tolist(), 2, cv2.LINE_AA)
    lips = points[_ids("mouth_right", "mouth_top", "mouth_left", "mouth_bottom")].round().astype(np.int32)
    cv2.fillPoly(image, [lips], (60, 40, rng.uniform(120, 220)), cv2.LINE_AA)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.0))
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)

    low, high = points.min(0), points.max(0)
    box = np.concatenate([low, high - low])
    box[1] -= 0.25 * box[3]  # dataset boxes include the forehead
    box[3] *= 1.25
    return SyntheticFace(image, points, box, np.concatenate([angles, translation]), ibug68)


def to_thermal16(image_bgr: np.ndarray) -> np.ndarray:
    """A thermal-like rendition: gray, inverted contrast, 16-bit with a narrow range."""
    gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY).astype(np.float64)
    return (28000 + (255 - gray) * 40).astype(np.uint16)


def write_synthetic_dataset(folder: str | Path, count: int, seed: int = 0, size: int = 256,
                            domain: str = "rgb",
                            max_angles: tuple[float, float, float] = (40.0, 25.0, 30.0),
                            layout: str = "synthetic32") -> dict[str, Path]:
    """Render `count` faces into `folder`.

    Returns the paths of `annotations` (custom JSON Lines), `landmark_set` (JSON; the
    synthetic layout only: `ibug68` is built in, `--landmark-set ibug68`) and `mean_face`
    (`id|x|y|z` text, the synthetic 3D face in the layout). Images are PNG (`domain="rgb"`)
    or 16-bit gray PNG (`domain="thermal"`); `layout` is `synthetic32` or `ibug68`.
    """
    if domain not in ("rgb", "thermal"):
        raise ValueError(f"domain must be 'rgb' or 'thermal', got {domain!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        face = render_face(rng, size, max_angles)
        name = f"images/{i:05d}.png"
        pixels = face.image if domain == "rgb" else to_thermal16(face.image)
        write_image(folder / name, pixels)
        landmarks = face.landmarks if layout == "synthetic32" else face.ibug68
        lines.append(json.dumps({"image": name, "landmarks": landmarks.round(3).tolist(),
                                 "box": face.box.round(3).tolist()}))
    paths = {"annotations": folder / "faces.jsonl", "mean_face": folder / "mean_face.txt"}
    write_output(paths["annotations"], "\n".join(lines) + "\n")
    if layout == "synthetic32":
        paths["landmark_set"] = folder / "landmark_set.json"
        write_output(paths["landmark_set"], json.dumps(landmark_set_description(), indent=1))
        write_output(paths["mean_face"], mean_face_text())
    else:
        write_mean_face(paths["mean_face"], _ibug68_weights() @ FACE_POINTS, IBUG_68,
                        "the synthetic 3D face in the iBUG 68-point layout (spiga.data.synthetic)\n")
    return paths
