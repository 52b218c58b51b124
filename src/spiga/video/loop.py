"""The frame loop: read a video file or a camera with OpenCV, track and align the faces
of every frame, write an annotated video and one JSON line per frame.

JSON line of a frame: `{"frame": i, "time": t, "detected": bool, "faces": [face, ...]}`
where `time` is seconds (frame index / the file's frame rate; for a camera, seconds
since the first frame), `detected` says whether the detector ran on this frame, and each
face is `Face.to_dict()` with its track `id`.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import cv2
import numpy as np

from ..errors import InputError
from ..io import JsonlWriter, check_outputs_apart
from ..io.files import NamedOutput, output_target
from ..io.records import face_records
from .tracker import Tracker, TrackerConfig

if TYPE_CHECKING:  # the video loop needs an aligner, not the inference package at import
    from ..inference import Aligner

log = logging.getLogger(__name__)

#: Frame rate assumed when a file or camera reports none.
DEFAULT_FPS = 30.0


def parse_source(text: str | int) -> str | int:
    """A camera index for an integer (or a string of digits that is not a file), else a path."""
    if isinstance(text, int):
        return text
    if text.isdigit() and not Path(text).exists():
        return int(text)
    return text


def open_capture(source: str | int) -> cv2.VideoCapture:
    """An opened `cv2.VideoCapture`, or `InputError` naming the source."""
    if isinstance(source, str) and not Path(source).exists():
        raise InputError(f"{source}: no such video file")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        capture.release()
        what = f"camera {source}" if isinstance(source, int) else source
        raise InputError(f"{what}: cannot open as a video (unknown format, damaged file or no such camera)")
    return capture


def _read_ahead(capture: cv2.VideoCapture, depth: int = 4) -> Iterator[np.ndarray]:
    """Frames of `capture`, decoded in a background thread up to `depth` ahead."""
    frames: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                ok, frame = capture.read()
                if not ok:
                    break
                while not stop.is_set():
                    try:
                        frames.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        finally:
            frames.put(None)

    thread = threading.Thread(target=reader, name="spiga-video-reader", daemon=True)
    thread.start()
    try:
        while True:
            frame = frames.get()
            if frame is None:
                return
            yield frame
    finally:
        stop.set()
        while thread.is_alive():  # unblock the reader if it waits on a full queue
            try:
                frames.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)


class AtomicVideoWriter:
    """`cv2.VideoWriter` (mp4v) into a temporary name beside `path` (created with the
    umask's mode, like every other output: `spiga.io.files.NamedOutput`), which becomes
    the output on `close`, so the output is either a complete video or absent (a device or
    FIFO gets the finished video written through)."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], fourcc: str = "mp4v") -> None:
        self.path = Path(path)
        self._output = NamedOutput(self.path, "--out")
        self.tmp = self._output.name
        self.frames = 0
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if not self.writer.isOpened():
            self._output.discard()
            raise InputError(f"{self.path}: cannot write a {fourcc} video with this name "
                             "(use a .mp4 or .avi extension)")

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        self.writer.release()
        if keep:
            self._output.commit()
        else:
            self._output.discard()


@dataclass
class VideoSummary:
    """What a run did."""

    frames: int = 0
    faces: int = 0
    detections: int = 0
    ids: set[int] = field(default_factory=set)
    seconds: float = 0.0
    source_fps: float = DEFAULT_FPS
    interrupted: bool = False

    @property
    def fps(self) -> float:
        """Frames processed per second of wall time."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _check_outputs(source: str | int, out: str | os.PathLike | None, jsonl: str | os.PathLike | None) -> None:
    """Before the run: a folder or `-` as `--out`, or an output that is the input video, is refused."""
    if out is not None:
        output_target(out, "--out")
    if isinstance(source, str):
        check_outputs_apart([source], {"--out": out, "--jsonl": jsonl})


def _rate_and_length(capture: cv2.VideoCapture, camera: bool, max_frames: int | None) -> tuple[float, int | None]:
    """The frame rate (`DEFAULT_FPS` when the source reports none) and the number of frames
    the run expects (None: unknown)."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if 0 < fps < 1000 else DEFAULT_FPS
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not camera else 0
    return fps, min(total, max_frames) if total > 0 and max_frames else (total or max_frames)


def run_video(aligner: Aligner, source: str | int, out: str | os.PathLike | None = None,
              jsonl: str | os.PathLike | None = None, config: TrackerConfig = TrackerConfig(),
              draw: bool = True, mesh: bool = False, progress: bool = True, max_frames: int | None = None,
              stdout_jsonl: bool = False) -> VideoSummary:
    """Track and align the faces of every frame of a video file or camera.

    Args:
        aligner: an `Aligner`.
        source: a video path or a camera index (see `parse_source`).
        out: annotated video to write (mp4v; frame rate and size of the input), or None.
        jsonl: JSON Lines file, one line per frame (see the module docstring), or None.
        config: tracking and smoothing (`TrackerConfig`; `smoothing=None` for raw output).
        draw: annotate the frames of `out` (landmarks, box, id, pose axes); False copies them.
        mesh: also draw the mean-face mesh.
        progress: progress bar with frames per second on stderr.
        max_frames: stop after this many frames (None: until the end; a camera runs until
            interrupted with Ctrl+C, which ends the run normally).
        stdout_jsonl: write the lines to standard output (when `jsonl` is None).
    Returns:
        a `VideoSummary`. Every frame read is written (frames in = frames out).
    """
    from tqdm import tqdm

    from ..draw import draw_faces

    _check_outputs(source, out, jsonl)
    capture = open_capture(source)
    camera = isinstance(source, int)
    fps, total = _rate_and_length(capture, camera, max_frames)
    tracker = Tracker(aligner, config)
    mesh_points = aligner.mean_face_world() if mesh else None
    summary = VideoSummary(source_fps=fps)
    writer: AtomicVideoWriter | None = None
    lines = JsonlWriter(jsonl) if (jsonl is not None or stdout_jsonl) else None
    bar = tqdm(total=total or None, unit="frame", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    start = time.perf_counter()
    ok = False
    frames = _read_ahead(capture)
    try:
        try:
            for index, frame in enumerate(frames):
                if max_frames is not None and index >= max_frames:
                    break
                t = (time.perf_counter() - start) if camera else index / fps
                result = tracker.step(frame, t)
                if lines is not None:
                    lines.write({"frame": index, "time": round(t, 6), "detected": result.detected,
                                 "faces": face_records(result.faces)})
                if out is not None:
                    if writer is None:
                        writer = AtomicVideoWriter(out, fps, (frame.shape[1], frame.shape[0]))
                    writer.write(draw_faces(frame, result.faces, aligner.landmark_set, mesh_points=mesh_points)
                                 if draw else frame)
                summary.frames += 1
                summary.faces += len(result.faces)
                summary.ids.update(face.id for face in result.faces if face.id is not None)
                bar.update(1)
                if summary.frames % 10 == 0:
                    bar.set_postfix_str(f"{len(result.faces)} faces", refresh=False)
        except KeyboardInterrupt:
            summary.interrupted = True
            log.warning("interrupted after %d frames; the outputs hold them", summary.frames)
        ok = True
    finally:
        frames.close()  # stops and joins the reader thread before the capture is released
        bar.close()
        capture.release()
        if lines is not None:
            lines.close()
        if writer is not None:
            writer.close(keep=ok)
    summary.seconds = time.perf_counter() - start
    summary.detections = tracker.detections
    if summary.frames == 0:
        log.warning("%s: no frame could be read", source)
    elif total and not camera and summary.frames < total and not summary.interrupted:
        log.warning("%s: read %d of the %d frames the file announces", source, summary.frames, total)
    return summary
