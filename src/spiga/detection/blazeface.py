"""The default face detector: MediaPipe's BlazeFace in PyTorch, over an image pyramid.

One BlazeFace pass on the whole image letterboxed into its 192x192 (full-range model) or
128x128 (short-range) input, as MediaPipe runs it, finds faces whose box spans about
7 % .. 45 % (full) or 15 % .. 90 % (short) of that input reliably (measured by pasting
photos at known sizes; see `SIZE_RANGES`). Smaller faces need a larger image, so the
detector runs a pyramid:

- level 0: the whole image letterboxed (centred, black borders) into one window, its long
  side spanning `max_fraction` of the model's input, so that a face filling the image is
  still in range; it finds faces down to `min_fraction / max_fraction * max(H, W)`. The
  window is the image plus a black border of `FIRST_MARGIN` (16) pixels, rounded up to
  the size multiple, rather than the whole model input: at 640x480, 128x128 instead of
  192x192 (less than half the pixels, the same faces found: see docs/detection.md);
- levels 1..n: the image resized by growing scales, spaced geometrically, each at most
  `max_fraction / (min_fraction * BAND_MARGIN)` (3.6 for the full model) times the
  previous one, the last one just large enough that a `min_face_size` box spans
  `min_fraction` of the model input. The networks are fully convolutional and their
  anchors a regular grid, so a level runs the network over the whole resized image at
  once (its sides padded to a multiple of 32, or 16 for the short model) with the anchor
  grid laid over all of it: the same as sliding the model's input window densely, at the
  cost of the level's pixels. Levels larger than `tile_size` are cut into tiles that
  overlap by more than the largest box the level keeps (memory stays bounded).

`multiscale=False` runs MediaPipe's single pass instead: the image letterboxed to fill
the input.

Each level keeps the faces of its own size band (widened by `BAND_MARGIN`, so bands
overlap); a tile drops faces cut by one of its edges that lies inside the image (the
overlapping neighbour holds them whole); weighted non-maximum suppression (MediaPipe's)
merges the rest, and a box lying mostly (70 %) inside a larger one is dropped (a part of a
large face seen at a fine level). Only anchors whose logit reaches the score threshold are
decoded, and at most `max_candidates` candidates (the best scores) reach the suppression.

The network runs on onnxruntime where it is installed, else on PyTorch (`backend`, see
`runtime`); both give the same boxes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..errors import InputError
from . import Detection, Detector, as_bgr
from .blazeface_net import SPECS, BlazeFaceSpec, anchor_centres, decode, min_logit
from .nms import MAX_CANDIDATES, best_first, drop_contained, non_max_suppression
from .runtime import BACKENDS, load_network, make_runtime

__all__ = ["BACKENDS", "BlazeFaceDetector", "Level", "load_network", "plan_levels"]

logger = logging.getLogger(__name__)

# Widths of the detector's box, as fractions of the model's input side, kept at each
# pyramid level. Measured (faces pasted at known sizes, 24 trials a size): the full model
# scores above 0.6 in >= 96 % of trials for face boxes of 7 % .. 42 % of the input, the
# short model in all from 15 % .. 90 %. The ranges below sit inside those. Checked again for
# the full model on two real faces and their mirror images, in their photos' own
# surroundings: found (score >= 0.6) in 191 of 192 trials at 11 %, in all 96 a size from
# 12 % to 50 %, in 93 of 96 at 55 %; faces pasted with little margin (the tests' collage)
# score lower near the bottom of the range.
SIZE_RANGES = {"full": (0.11, 0.5), "short": (0.16, 0.75)}
# Default score thresholds: MediaPipe's for the full model (0.6); above MediaPipe's 0.5 for
# the short model, which fired on blurred noise at 0.5-0.6 once the pyramid shows it more places.
DEFAULT_THRESHOLDS = {"full": SPECS["full"].mediapipe_score_threshold, "short": 0.65}
BAND_MARGIN = 1.25  # how far a level's size band reaches into its neighbours'
EDGE_TOLERANCE = 4.0  # pixels: a box this close to an inner tile edge counts as cut


@dataclass(frozen=True)
class Level:
    """One pyramid level.

    Attributes:
        scale: level pixels per image pixel (the level image is `scaled_size` of it).
        window: (width, height) of every window of this level, in level pixels.
        origins: (T, 2) integer window corners (x, y) in level pixels; negative or past the
            level image where a window is larger than it (black there).
        min_box, max_box: box widths (image pixels) this level keeps.
    """

    scale: float
    window: tuple[int, int]
    origins: np.ndarray
    min_box: float
    max_box: float


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, int(math.ceil(value / multiple - 1e-9)) * multiple)


def _axis_windows(length: int, tile: int, overlap: float, multiple: int) -> tuple[int, np.ndarray]:
    """Window side and starts along one axis of a level image `length` pixels long."""
    if length <= tile:
        return _round_up(length, multiple), np.zeros(1)
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return tile, np.round(np.linspace(0, length - tile, count))


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(width, height) in whole pixels of an image resized by `scale`."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def level_scales(first_scale: float, last_scale: float, max_step: float) -> list[float]:
    """Scales from `first_scale` to `last_scale`, spaced geometrically, at most `max_step` apart."""
    if last_scale <= first_scale:
        return [first_scale]
    steps = math.ceil(math.log(last_scale / first_scale) / math.log(max_step) - 1e-9)
    return [first_scale * (last_scale / first_scale) ** (k / steps) for k in range(steps + 1)]


# Black border (pixels) around the image at level 0. MediaPipe letterboxes into the whole
# model input; what matters to the network is the black context around the image, not the
# input's size: with 16 px the detector found exactly the same faces on 28 synthetic group
# photos and collages (docs/detection.md) for under half of level 0's pixels at 640x480.
FIRST_MARGIN = 16


def first_window(scaled_w: int, scaled_h: int, spec: BlazeFaceSpec) -> tuple[int, int]:
    """The window of level 0: the scaled image with `FIRST_MARGIN` pixels of black border on
    every side, rounded up to the size multiple, at most the model's input."""
    return tuple(min(spec.input_size, _round_up(side + 2 * FIRST_MARGIN, spec.size_multiple))
                 for side in (scaled_w, scaled_h))


def plan_levels(height: int, width: int, spec: BlazeFaceSpec, min_face_size: float,
                size_range: tuple[float, float], tile_size: int = 1024,
                first_fraction: float | None = None, letterbox: bool = False) -> list[Level]:
    """The pyramid for an image of `height` x `width` (see the module docstring).

    Args:
        spec: the model (input side, size multiple).
        min_face_size: smallest box width (image pixels) to find.
        size_range: (min_fraction, max_fraction) of the model input a box may span.
        tile_size: largest window side at levels >= 1 (rounded to the size multiple).
        first_fraction: the share of the input side the image's long side spans at level 0
            (default max_fraction, so that a face filling the image is still in range;
            1.0 is MediaPipe's letterbox).
        letterbox: level 0 is the image centred in a model-sized input (MediaPipe's way)
            rather than in `first_window` (the image and a `FIRST_MARGIN` black border).
    """
    min_fraction, max_fraction = size_range
    size = spec.input_size
    tile = _round_up(tile_size, spec.size_multiple)
    largest_kept = max_fraction * size * BAND_MARGIN  # level pixels
    overlap = largest_kept + 2 * EDGE_TOLERANCE
    if tile <= overlap:
        raise InputError(f"tile_size {tile_size} is too small for this model; use at least {int(overlap) * 2}")
    # level 0: by default a face as large as the whole image spans max_fraction of the input
    first_scale = (max_fraction if first_fraction is None else first_fraction) * size / max(height, width)
    # the scale at which a min_face_size box spans min_fraction of the input; levels step
    # geometrically towards it, each step at most max_fraction / (min_fraction * BAND_MARGIN)
    last_scale = min_fraction * size / min_face_size
    max_step = max_fraction / (min_fraction * BAND_MARGIN)
    scales = level_scales(first_scale, last_scale, max_step)
    levels = []
    for index, scale in enumerate(scales):
        finest = index == len(scales) - 1
        smallest = min_fraction * size / scale  # image pixels
        scaled_w, scaled_h = scaled_size(height, width, scale)
        if index == 0:  # the whole image centred in black borders (letterboxed) in one window
            window = (size, size) if letterbox else first_window(scaled_w, scaled_h, spec)
            origins = np.array([[(scaled_w - window[0]) // 2, (scaled_h - window[1]) // 2]])
            max_box = math.inf
        else:
            window_w, xs = _axis_windows(scaled_w, tile, overlap, spec.size_multiple)
            window_h, ys = _axis_windows(scaled_h, tile, overlap, spec.size_multiple)
            window = (window_w, window_h)
            origins = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
            max_box = largest_kept / scale
        levels.append(Level(scale, window, origins.astype(np.int64),
                            0.0 if finest else smallest / BAND_MARGIN, max_box))
    return levels


def level_images(image_rgb: np.ndarray, levels: list[Level]) -> list[np.ndarray]:
    """Each level's resized image, in the order of `levels`.

    Shrinking uses area interpolation (no aliasing of small faces), enlarging bilinear.
    (Bilinear shrinking would be several times cheaper at mild ratios, but it moves
    borderline scores across the threshold: faces cut by the image border.) Area
    interpolation costs by the pixels it reads, so each level is shrunk from the smallest
    finer level's image that covers it rather than from the photo: at 640x480 the three
    levels read 0.4 instead of 0.9 million pixels.
    """
    height, width = image_rgb.shape[:2]
    made: dict[int, np.ndarray] = {}
    for index in sorted(range(len(levels)), key=lambda i: -levels[i].scale):
        new_w, new_h = scaled_size(height, width, levels[index].scale)
        if (new_w, new_h) == (width, height):
            made[index] = image_rgb
            continue
        if new_w > width or new_h > height:
            made[index] = cv2.resize(image_rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            continue
        sources = [made[i] for i in made if made[i].shape[1] >= new_w and made[i].shape[0] >= new_h]
        source = min(sources, key=lambda image: image.shape[0] * image.shape[1], default=image_rgb)
        made[index] = source if source.shape[:2] == (new_h, new_w) else cv2.resize(
            source, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return [made[index] for index in range(len(levels))]


def cut_windows(image_rgb: np.ndarray, level: Level, scaled: np.ndarray | None = None) -> np.ndarray:
    """(T, window_h, window_w, 3) uint8 windows of the image resized for `level` (`scaled`,
    when `level_images` made it already); black outside."""
    if scaled is None:
        (scaled,) = level_images(image_rgb, [level])
    window_w, window_h = level.window
    windows = np.zeros((len(level.origins), window_h, window_w, 3), np.uint8)
    for index, (x0, y0) in enumerate(level.origins):
        src_x0, src_y0 = max(x0, 0), max(y0, 0)
        src_x1, src_y1 = min(x0 + window_w, scaled.shape[1]), min(y0 + window_h, scaled.shape[0])
        if src_x1 > src_x0 and src_y1 > src_y0:
            windows[index, src_y0 - y0:src_y1 - y0, src_x0 - x0:src_x1 - x0] = scaled[src_y0:src_y1, src_x0:src_x1]
    return windows


def to_input_array(windows_rgb: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> contiguous (T, 3, H, W) float32 in [-1, 1], as MediaPipe's
    image-to-tensor. (Transposed as bytes first, then scaled in place: four times fewer
    bytes moved than transposing floats.)"""
    values = np.ascontiguousarray(np.asarray(windows_rgb).transpose(0, 3, 1, 2)).astype(np.float32)
    values /= np.float32(127.5)
    values -= np.float32(1.0)
    return values


def not_cut_by_window_edge(boxes: np.ndarray, origin: np.ndarray, window: tuple[int, int],
                           scaled_width: int, scaled_height: int, tolerance: float = EDGE_TOLERANCE
                           ) -> np.ndarray:
    """(K,) False for boxes (K, 4) in window pixels that reach within `tolerance` of a window
    edge lying inside the level image: such a face is cut, and the neighbour holds it whole.

    Edges on or past the image border do not count: faces may be cut by the image itself.
    """
    x0, y0 = int(origin[0]), int(origin[1])
    window_w, window_h = window
    cut = np.zeros(len(boxes), dtype=bool)
    if x0 > 0:
        cut |= boxes[:, 0] < tolerance
    if y0 > 0:
        cut |= boxes[:, 1] < tolerance
    if x0 + window_w < scaled_width:
        cut |= boxes[:, 2] > window_w - tolerance
    if y0 + window_h < scaled_height:
        cut |= boxes[:, 3] > window_h - tolerance
    return ~cut


class BlazeFaceDetector(Detector):
    """Faces with BlazeFace over an image pyramid (see the module docstring).

    Args:
        model: `full` (192x192, faces at any distance; default) or `short` (128x128, near faces).
        score_threshold: keep detections scoring at least this (default 0.6 full, 0.65 short).
        nms: `weighted` (MediaPipe's; default), `hard`, or `none`.
        iou_threshold: overlap above which boxes are merged (weighted) or suppressed (hard).
        min_face_size: width (image pixels) of the smallest BlazeFace box the pyramid is
            planned for (a face box that wide gives a wider BlazeFace box, so it is covered);
            smaller costs more (the finest level grows with 1 / min_face_size squared).
        multiscale: False runs one pass on the whole image letterboxed into the model's
            input, exactly as MediaPipe does (no pyramid; faces below ~10 % of the image's
            long side are missed).
        tile_size: largest window side at levels >= 1.
        max_candidates: at most this many candidates (the best scores) go to the
            suppression (and are returned with `nms="none"`).
        backend: `auto` (default: onnxruntime where installed and on the CPU, else PyTorch),
            `onnxruntime` or `torch`; see `runtime`.
        device: torch device (the `torch` backend).
    """

    name = "blazeface"

    def __init__(self, model: str = "full", score_threshold: float | None = None, nms: str = "weighted",
                 iou_threshold: float = 0.3, min_face_size: float = 24.0, multiscale: bool = True,
                 tile_size: int = 1024, max_candidates: int = MAX_CANDIDATES, backend: str = "auto",
                 device: str = "cpu") -> None:
        if model not in SPECS:
            raise InputError(f"unknown BlazeFace model {model!r}; choose one of {sorted(SPECS)}")
        if nms not in ("weighted", "hard", "none"):
            raise InputError(f"nms must be 'weighted', 'hard' or 'none', not {nms!r}")
        if not (isinstance(min_face_size, (int, float)) and min_face_size > 0):
            raise InputError(f"min_face_size must be a positive number of pixels, not {min_face_size!r}")
        if score_threshold is not None and not 0 <= score_threshold <= 1:
            raise InputError(f"score_threshold must be within [0, 1], not {score_threshold!r}")
        if not (isinstance(max_candidates, int) and max_candidates > 0):
            raise InputError(f"max_candidates must be a positive whole number, not {max_candidates!r}")
        self.spec: BlazeFaceSpec = SPECS[model]
        self.score_threshold = DEFAULT_THRESHOLDS[model] if score_threshold is None else float(score_threshold)
        self.nms = nms
        self.iou_threshold = float(iou_threshold)
        self.min_face_size = float(min_face_size)
        self.multiscale = multiscale
        self.tile_size = int(tile_size)
        self.max_candidates = max_candidates
        self.device = torch.device(device)
        self.runtime = make_runtime(backend, model, self.device)
        self._anchors: dict[tuple[int, int], np.ndarray] = {}
        self._levels: dict[tuple[int, int], list[Level]] = {}

    @property
    def backend(self) -> str:
        """The runtime in use: `onnxruntime` or `torch`."""
        return self.runtime.name

    def levels(self, height: int, width: int) -> list[Level]:
        """The pyramid this detector runs on an image of this size (planned once a size)."""
        if (height, width) not in self._levels:
            if len(self._levels) >= 64:  # many image sizes (a folder of photos): memory stays bounded
                self._levels.clear()
            self._levels[(height, width)] = self._plan(height, width)
        return self._levels[(height, width)]

    def _plan(self, height: int, width: int) -> list[Level]:
        if not self.multiscale:  # MediaPipe's way: the image letterboxed into one input
            first = plan_levels(height, width, self.spec, math.inf, SIZE_RANGES[self.spec.name], first_fraction=1.0,
                                letterbox=True)[0]
            return [Level(first.scale, first.window, first.origins, 0.0, math.inf)]
        return plan_levels(height, width, self.spec, self.min_face_size, SIZE_RANGES[self.spec.name],
                           self.tile_size)

    def anchors(self, window: tuple[int, int]) -> np.ndarray:
        """(N, 2) anchor centres in pixels of a window of (width, height)."""
        if window not in self._anchors:
            self._anchors[window] = anchor_centres(self.spec, *window)
        return self._anchors[window]

    def run_window(self, window_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Network + decoding of the anchors scoring at least the threshold, on one
        (H, W, 3) uint8 window.

        Returns boxes (K, 4) corners, keypoints (K, 6, 2), scores (K,), in window pixels.
        """
        regressors, logits = self.runtime(to_input_array(window_rgb[None]))
        candidates = np.flatnonzero(logits[0] >= min_logit(self.score_threshold))
        anchors = self.anchors((window_rgb.shape[1], window_rgb.shape[0]))[candidates]
        boxes, points, scores = decode(regressors[0, candidates], logits[0, candidates], anchors)
        keep = scores >= self.score_threshold
        return boxes[keep], points[keep], scores[keep]

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Faces in a BGR image, best score first; boxes and keypoints in image pixels."""
        image_rgb = cv2.cvtColor(as_bgr(image_bgr), cv2.COLOR_BGR2RGB)
        height, width = image_rgb.shape[:2]
        found = _Candidates(self.max_candidates)
        levels = self.levels(height, width)
        logger.debug("BlazeFace %s (%s) on %dx%d: %s", self.spec.name, self.backend, width, height,
                     ", ".join(f"x{lv.scale:.3f} {len(lv.origins)} window(s) {lv.window}" for lv in levels))
        for level, scaled in zip(levels, level_images(image_rgb, levels)):
            scaled_w, scaled_h = scaled_size(height, width, level.scale)
            # the actual per-axis scale of the whole-pixel resize (corner-origin coordinates)
            axis_scale = np.array([scaled_w / width, scaled_h / height])
            for origin, window in zip(level.origins, cut_windows(image_rgb, level, scaled)):
                boxes, points, scores = self.run_window(window)
                keep = not_cut_by_window_edge(boxes, origin, level.window, scaled_w, scaled_h)
                image_boxes = (boxes[keep] + np.tile(origin, 2)) / np.tile(axis_scale, 2)
                widths = image_boxes[:, 2] - image_boxes[:, 0]
                in_band = (widths >= level.min_box) & (widths <= level.max_box)
                found.add(image_boxes[in_band], ((points[keep] + origin) / axis_scale)[in_band], scores[keep][in_band])
        boxes, points, scores = found.best()
        if self.nms != "none" and len(boxes):
            boxes, scores, points = non_max_suppression(boxes, scores, self.iou_threshold, points,
                                                        weighted=self.nms == "weighted",
                                                        max_candidates=self.max_candidates)
            keep = drop_contained(boxes)
            boxes, scores, points = boxes[keep], scores[keep], points[keep]
        order = np.argsort(-scores, kind="stable")
        return [Detection((float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])), float(s),
                          np.asarray(p, dtype=np.float64), self.name)
                for b, s, p in zip(boxes[order], scores[order], points[order])]


class _Candidates:
    """Candidates gathered over windows, pruned to the best `limit` scores whenever they
    reach twice that (memory stays bounded however many anchors fire)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.count = 0

    def add(self, boxes: np.ndarray, points: np.ndarray, scores: np.ndarray) -> None:
        if len(scores):
            self.parts.append((boxes.astype(np.float64), points.astype(np.float64), scores.astype(np.float64)))
            self.count += len(scores)
            if self.count >= 2 * self.limit:
                self.parts = [self.best()]
                self.count = len(self.parts[0][2])

    def best(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """boxes (K, 4), keypoints (K, 6, 2), scores (K,): the best `limit`, best first."""
        if not self.parts:
            return np.zeros((0, 4)), np.zeros((0, 6, 2)), np.zeros(0)
        boxes, points, scores = (np.concatenate([part[i] for part in self.parts]) for i in range(3))
        order = best_first(scores, self.limit)
        return boxes[order], points[order], scores[order]
