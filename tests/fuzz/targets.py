"""Fuzz targets: bytes in, a file reader run on them; only spiga's own errors may come out.

Each target writes the bytes where its reader expects a file (a WFLW list, a `.pts`
below a 300W folder, a COFW `.mat`, SPIGA JSON, ...) in a fresh temporary folder and
reads it. `run_target(name, data)` swallows `SpigaError` (a clear refusal is a pass) and
lets anything else out: a crash is any other exception, or a run longer than
`HANG_SECONDS` (`Hang`).

The same functions are driven by atheris (`tests/fuzz/fuzz.py`, coverage-guided, by
hand or in CI's smoke run) and by hypothesis (`tests/test_fuzz_readers.py`), and the
tricky inputs kept in `tests/corpus/<target>/` are replayed as regression cases.

The first byte of an input sets reading options (bit 0 skip_bad, bit 1 require_images,
bit 2 allow_outside_root); the rest is the file.
"""

from __future__ import annotations

import json
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from spiga.errors import SpigaError

#: A single input taking longer than this is a hang.
HANG_SECONDS = 20


class Hang(Exception):
    """A reader ran longer than HANG_SECONDS on one input."""


#: A 5-point custom landmark set: small enough that fuzzed files can fit it.
FIVE_POINTS = {
    "name": "five", "points": ["right_eye", "left_eye", "nose", "mouth_right", "mouth_left"],
    "mirror_pairs": [[0, 1], [3, 4]], "edges": {"eyes": [0, 1], "mouth": [3, 4]},
}


def _five():
    from spiga.landmarks.set_files import landmark_set_from_description

    return landmark_set_from_description(FIVE_POINTS, "five")


def split_options(data: bytes) -> tuple[dict, bytes]:
    """A target's input -> (reading options from its first byte, the file's bytes)."""
    flags = data[0] if data else 0
    return {"skip_bad": bool(flags & 1), "require_images": bool(flags & 2),
            "allow_outside_root": bool(flags & 4)}, data[1:]


def _bad(options: dict):
    from spiga.data.sample import BadEntries

    return BadEntries(**options)


def _reader(fmt: str, path: Path, options: dict, landmark_set=None) -> None:
    from spiga.data.formats import READERS

    READERS[fmt].read(path, None, landmark_set, _bad(options))


# --------------------------------------------------------------------------- the targets


def image(data: bytes, tmp: Path) -> None:
    from spiga.io import read_image_bytes

    read_image_bytes(data, "fuzz", max_pixels=4_000_000)


def wflw(data: bytes, tmp: Path) -> None:
    options, content = split_options(data)
    (tmp / "list.txt").write_bytes(content)
    _reader("wflw", tmp / "list.txt", options)


def pts_300w(data: bytes, tmp: Path) -> None:
    options, content = split_options(data)
    folder = tmp / "helen" / "testset"
    folder.mkdir(parents=True)
    (folder / "face.pts").write_bytes(content)
    (folder / "face.jpg").write_bytes(b"")
    _reader("300w", tmp, options)


def merlrav(data: bytes, tmp: Path) -> None:
    options, content = split_options(data)
    folder = tmp / "frontal" / "trainset"
    folder.mkdir(parents=True)
    (folder / "face.pts").write_bytes(content)
    _reader("merlrav", tmp, options)


def cofw68(data: bytes, tmp: Path) -> None:
    options, content = split_options(data)
    (tmp / "1_points.mat").write_bytes(content)
    _reader("cofw68", tmp, options)


def spiga_json(data: bytes, tmp: Path) -> None:
    options, content = split_options(data)
    (tmp / "test.json").write_bytes(content)
    _reader("spiga-json", tmp / "test.json", options)


def custom_jsonl(data: bytes, tmp: Path) -> None:
    options, content = split_options(data)
    (tmp / "faces.jsonl").write_bytes(content)
    _reader("custom", tmp / "faces.jsonl", options, _five())


def custom_json(data: bytes, tmp: Path) -> None:
    options, content = split_options(data)
    (tmp / "faces.json").write_bytes(content)
    _reader("custom", tmp / "faces.json", options, _five())


def custom_csv(data: bytes, tmp: Path) -> None:
    options, content = split_options(data)
    (tmp / "faces.csv").write_bytes(content)
    _reader("custom", tmp / "faces.csv", options, _five())


def eval_json(data: bytes, tmp: Path) -> None:
    """evaluate.formats: ground truth (SPIGA JSON or align JSON), then predictions against it."""
    from spiga.evaluate.formats import read_annotations, read_predictions
    from spiga.landmarks import IBUG_68

    _, content = split_options(data)
    path = tmp / "annotations.json"
    path.write_bytes(content)
    landmark_set = _five() if data[:1] and data[0] & 8 else IBUG_68
    gt = read_annotations(path, landmark_set)
    read_predictions(path, gt)


def align_json(data: bytes, tmp: Path) -> None:
    from spiga.evaluate.formats import read_align_json

    _, content = split_options(data)
    (tmp / "align.json").write_bytes(content)
    read_align_json(tmp / "align.json", _five())


def db_info(data: bytes, tmp: Path) -> None:
    from spiga.evaluate.formats import read_db_info

    _, content = split_options(data)
    (tmp / "db_info.json").write_bytes(content)
    read_db_info(tmp / "db_info.json")


def box_file(data: bytes, tmp: Path) -> None:
    """spiga.detection.filebox: JSON (flag bit 3) or text box files."""
    from spiga.detection.filebox import FileBoxDetector

    _, content = split_options(data)
    path = tmp / ("boxes.json" if data[:1] and data[0] & 8 else "boxes.txt")
    path.write_bytes(content)
    detector = FileBoxDetector(path)
    try:
        detector.faces_for(None)
    except SpigaError:
        pass
    for name in list(detector.boxes)[:3]:
        detector.faces_for(name)


def landmark_set(data: bytes, tmp: Path) -> None:
    from spiga.landmarks.set_files import read_landmark_set

    _, content = split_options(data)
    (tmp / "set.json").write_bytes(content)
    read_landmark_set(tmp / "set.json")


def mean_face(data: bytes, tmp: Path) -> None:
    from spiga.landmarks import read_mean_face

    _, content = split_options(data)
    (tmp / "mean_face.txt").write_bytes(content)
    read_mean_face(tmp / "mean_face.txt", _five())


TARGETS: dict[str, Callable[[bytes, Path], None]] = {
    "image": image, "wflw": wflw, "300w": pts_300w, "merlrav": merlrav, "cofw68": cofw68,
    "spiga_json": spiga_json, "custom_jsonl": custom_jsonl, "custom_json": custom_json,
    "custom_csv": custom_csv, "eval_json": eval_json, "align_json": align_json, "db_info": db_info,
    "box_file": box_file, "landmark_set": landmark_set, "mean_face": mean_face,
}


# --------------------------------------------------------------------------- the harness


@contextmanager
def _hang_guard(seconds: float | None):
    """Raise `Hang` in the main thread after `seconds` (no guard elsewhere, or for None:
    under libFuzzer, whose own -timeout uses SIGALRM)."""
    if (seconds is None or threading.current_thread() is not threading.main_thread()
            or not hasattr(signal, "setitimer")):
        yield
        return

    def alarm(signum, frame):
        raise Hang(f"one input took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_target(name: str, data: bytes, hang_seconds: float | None = HANG_SECONDS) -> str:
    """Run target `name` on `data`: 'ok', or 'refused: <message>' for a SpigaError.

    Anything else (another exception, a `Hang`) propagates: that is a finding.
    """
    target = TARGETS[name]
    with tempfile.TemporaryDirectory(prefix=f"spiga-fuzz-{name}-") as tmp, _hang_guard(hang_seconds):
        try:
            target(data, Path(tmp))
        except SpigaError as exc:
            message = str(exc)
            if not message.strip():
                raise AssertionError(f"{type(exc).__name__} without a message") from None
            return f"refused: {message}"
    return "ok"


def as_json_bytes(value, flags: int = 0) -> bytes:
    """A JSON value as a target input (flags byte first)."""
    return bytes([flags]) + json.dumps(value, allow_nan=True).encode()
