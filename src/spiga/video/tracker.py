"""Face tracking across video frames: detect now and then, follow the landmarks otherwise.

The rule (`Tracker.step`):
- **Detect** on the first frame, every `redetect_every` frames, whenever no face is
  tracked (at most every `empty_redetect_every` frames), and at once on a frame where a
  tracked face looks lost.
- **Otherwise propagate**: each face's box for the next frame comes from its landmarks in
  this frame: their bounding box, mapped back to a face box by the relation between
  box and landmarks measured on the model's own prediction when the face was detected
  (centre offset and size ratio, in units of the landmarks' extent). A moving face carries
  its box along. Within a dead band (`box_deadband`, 2 % of the box size in centre shift
  and in scale) the box stays put: otherwise each frame's small landmark error would move
  the next crop, and a still face's box would drift in a slow random walk.
- **Lost**: a propagated box whose size changed by more than `max_scale_change` or whose
  centre moved by more than `max_shift` box sizes in one frame, that lies less than
  `min_inside` inside the image, or has non-finite values.
- **Identity**: detections are matched to the tracked faces by IoU (Hungarian assignment,
  IoU >= `match_iou`). A matched face keeps its id; if its tracked box still agrees with the
  detection (IoU >= `keep_iou`) tracking goes on undisturbed (no jump every K frames),
  otherwise it restarts from the detected box. A new detection gets a new id (0, 1, 2, ...
  never reused); a tracked face the detector misses is kept `max_missed` detections in a
  row while its propagation is not lost, then dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..face import Face
from ..geometry.boxes import box_iou
from .smoothing import FaceSmoother, SmoothingConfig

if TYPE_CHECKING:
    from ..inference import Aligner

log = logging.getLogger(__name__)

#: Box relative to its landmarks' extent: centre offset (dx, dy) and size ratio (sw, sh).
DEFAULT_RELATION = np.array([0.0, 0.0, 1.0, 1.0])


@dataclass(frozen=True)
class TrackerConfig:
    """Tracking parameters (see the module docstring)."""

    redetect_every: int = 15
    empty_redetect_every: int = 1
    match_iou: float = 0.3
    keep_iou: float = 0.7
    max_missed: int = 0
    box_deadband: float = 0.02
    max_scale_change: float = 1.35
    max_shift: float = 0.5
    min_inside: float = 0.5
    smoothing: SmoothingConfig | None = field(default_factory=SmoothingConfig)


def landmark_extent(landmarks: np.ndarray) -> np.ndarray:
    """(L, 2) points -> (x0, y0, x1, y1), each side at least 1 pixel."""
    low, high = landmarks.min(0), landmarks.max(0)
    high = np.maximum(high, low + 1.0)
    return np.concatenate([low, high])


def measure_relation(box: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """How a face box relates to its landmarks: (dx, dy, sw, sh) with the box centre at
    the landmarks' centre + (dx, dy) times their extent and the box size (sw, sh) times it.
    None when that relation is implausible (landmarks collapsed or far off the box)."""
    x0, y0, x1, y1 = landmark_extent(landmarks)
    width, height = x1 - x0, y1 - y0
    x, y, w, h = box
    relation = np.array([(x + w / 2 - (x0 + x1) / 2) / width, (y + h / 2 - (y0 + y1) / 2) / height,
                         w / width, h / height])
    if not np.all(np.isfinite(relation)) or np.any(np.abs(relation[:2]) > 1.0) or \
            np.any(relation[2:] < 0.5) or np.any(relation[2:] > 4.0):
        return None
    return relation


def box_from_landmarks(landmarks: np.ndarray, relation: np.ndarray) -> np.ndarray:
    """(L, 2) landmarks and a relation (see `measure_relation`) -> box (x, y, w, h)."""
    x0, y0, x1, y1 = landmark_extent(landmarks)
    width, height = x1 - x0, y1 - y0
    dx, dy, sw, sh = relation
    cx, cy = (x0 + x1) / 2 + dx * width, (y0 + y1) / 2 + dy * height
    w, h = sw * width, sh * height
    return np.array([cx - w / 2, cy - h / 2, w, h])


def inside_fraction(box: np.ndarray, width: int, height: int) -> float:
    """Share of the box's area that lies inside a width x height image."""
    x, y, w, h = box
    iw = max(0.0, min(x + w, width) - max(x, 0.0))
    ih = max(0.0, min(y + h, height) - max(y, 0.0))
    return float(iw * ih / max(w * h, 1e-12))


@dataclass
class Track:
    """One tracked face."""

    id: int
    box: np.ndarray                 # the box used on the current frame
    relation: np.ndarray            # box vs landmarks (see `measure_relation`)
    score: float | None = None
    missed: int = 0                 # detections in a row that did not find it
    next_box: np.ndarray | None = None
    lost: bool = False
    smoother: FaceSmoother | None = None


@dataclass
class FrameResult:
    """Faces of one frame (with ids; smoothed when smoothing is on) and whether the
    detector ran on it."""

    faces: list[Face]
    detected: bool


class Tracker:
    """Follows faces through frames with an `Aligner` (see the module docstring).

    Args:
        aligner: `Aligner` (its `detect` and `align_array` are used).
        config: `TrackerConfig`; `config.smoothing=None` turns smoothing off.
    """

    def __init__(self, aligner: Aligner, config: TrackerConfig = TrackerConfig()) -> None:
        if config.redetect_every < 0 or config.empty_redetect_every < 1:
            raise ValueError("redetect_every must be >= 0 (0: only when lost) and empty_redetect_every >= 1")
        self.aligner = aligner
        self.config = config
        self.tracks: list[Track] = []
        self.next_id = 0
        self.frame_index = -1
        self.last_detection = -10 ** 9
        self.detections = 0

    def _detection_due(self) -> bool:
        since = self.frame_index - self.last_detection
        if not self.tracks:
            return since >= self.config.empty_redetect_every
        return self.config.redetect_every > 0 and since >= self.config.redetect_every

    def step(self, frame_bgr: np.ndarray, t: float) -> FrameResult:
        """Faces in the next frame (BGR uint8), at time `t` seconds."""
        self.frame_index += 1
        height, width = frame_bgr.shape[:2]
        for track in self.tracks:  # this frame starts from the boxes the last one propagated
            if track.next_box is not None:
                track.box = track.next_box
        detect = self._detection_due()
        faces: list[Face] = []
        if not detect and self.tracks:
            usable = [tr for tr in self.tracks if inside_fraction(tr.box, width, height) >= self.config.min_inside]
            if len(usable) < len(self.tracks):
                detect = True
            else:
                faces = self.aligner.align_array(frame_bgr, np.array([tr.box for tr in self.tracks]))
                for track, face in zip(self.tracks, faces):
                    self._propagate(track, face, width, height)
                    face.score = track.score
                detect = any(track.lost for track in self.tracks)
        if detect:
            faces = self._detect_and_align(frame_bgr)
        out = []
        for track, face in zip(self.tracks, faces):
            face = replace(face, id=track.id)
            if track.smoother is not None:
                face = track.smoother(face, t)
            out.append(face)
        return FrameResult(out, detect)

    def _propagate(self, track: Track, face: Face, width: int, height: int) -> None:
        """Set the track's next box from the face's landmarks; flag it lost if implausible."""
        new = box_from_landmarks(face.landmarks, track.relation)
        old = track.box
        scale = np.sqrt(new[2] * new[3] / max(old[2] * old[3], 1e-12))
        shift = np.hypot(new[0] + new[2] / 2 - old[0] - old[2] / 2, new[1] + new[3] / 2 - old[1] - old[3] / 2)
        track.lost = bool(
            not np.all(np.isfinite(new))
            or not (1 / self.config.max_scale_change <= scale <= self.config.max_scale_change)
            or shift > self.config.max_shift * max(old[2], old[3])
            or inside_fraction(new, width, height) < self.config.min_inside)
        if track.lost:
            track.next_box = old
        elif shift <= self.config.box_deadband * max(old[2], old[3]) and \
                abs(np.log(scale)) <= np.log1p(self.config.box_deadband):
            # within the dead band: keep the box. Without it a still face's box drifts: each
            # frame's small landmark error moves the next crop, which moves the landmarks...
            track.next_box = old
        else:
            track.next_box = new
        if track.lost:
            log.debug("frame %d: face %d looks lost (scale x%.2f, shift %.1f px)", self.frame_index, track.id,
                      scale, shift)

    def _detect_and_align(self, frame_bgr: np.ndarray) -> list[Face]:
        """Run the detector, match its boxes to the tracks, align every kept face."""
        height, width = frame_bgr.shape[:2]
        self.last_detection = self.frame_index
        self.detections += 1
        boxes, scores = self.aligner.detect(frame_bgr)
        previous = [tr.box for tr in self.tracks]
        iou = box_iou(np.array(previous).reshape(-1, 4), boxes) if len(previous) and len(boxes) else \
            np.zeros((len(previous), len(boxes)))
        matched_track_of = {}
        if iou.size:
            rows, cols = linear_sum_assignment(-iou)
            matched_track_of = {c: r for r, c in zip(rows, cols) if iou[r, c] >= self.config.match_iou}
        kept: list[Track] = []
        restart: list[bool] = []
        matched_tracks = set(matched_track_of.values())
        for d, box in enumerate(boxes):
            if d in matched_track_of:
                track = self.tracks[matched_track_of[d]]
                track.score, track.missed = scores[d], 0
                follow = not track.lost and iou[matched_track_of[d], d] >= self.config.keep_iou
                if not follow:
                    track.box = box
                kept.append(track)
                restart.append(not follow)
            else:
                kept.append(Track(self.next_id, box, DEFAULT_RELATION.copy(), scores[d],
                                  smoother=FaceSmoother(self.config.smoothing) if self.config.smoothing else None))
                self.next_id += 1
                restart.append(True)
        for index, track in enumerate(self.tracks):
            if index in matched_tracks or track.lost:
                continue
            track.missed += 1
            if track.missed <= self.config.max_missed and \
                    inside_fraction(track.box, width, height) >= self.config.min_inside:
                kept.append(track)
                restart.append(False)
        # tracks in a stable order: by id
        order = sorted(range(len(kept)), key=lambda i: kept[i].id)
        self.tracks = [kept[i] for i in order]
        restart = [restart[i] for i in order]
        if not self.tracks:
            return []
        faces = self.aligner.align_array(frame_bgr, np.array([tr.box for tr in self.tracks]))
        for track, face, fresh in zip(self.tracks, faces, restart):
            face.score = track.score
            if fresh:
                relation = measure_relation(track.box, face.landmarks)
                track.relation = relation if relation is not None else DEFAULT_RELATION.copy()
            self._propagate(track, face, width, height)
        return faces
