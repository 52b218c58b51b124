"""Many images: expand inputs, decode ahead in threads, batch faces across images,
write one JSON line per image as it finishes.

    from spiga.inference.many_images import expand_inputs, align_files
    paths = expand_inputs(["photos/", "more/*.jpg", "one.png"])
    summary = align_files(aligner, paths, jsonl="faces.jsonl", draw_dir="drawn")

The outputs go through `spiga.io.ResultSink` (JSON Lines, JSON, CSV, `.pts`, drawings),
checked against the inputs before any work. The JSON Lines output (`spiga.io.JsonlWriter`)
is append-only: one `write` and one `flush` per line, so a crash loses nothing already
written; a truncated last line (a crash in the middle of a
write) is cut off when the file is opened again. A line is either the record of one
image, `{"path", "width", "height", "faces": [...]}` (`spiga.io.image_record`, the
single-image JSON's record), or an error, `{"path", "error"}`.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..draw import face_drawer
from ..errors import InputError, SpigaError
from ..io import STDOUT, ResultSink, check_run_outputs, read_image
from .aligner import Aligner

log = logging.getLogger(__name__)

#: File suffixes taken from a folder (case-insensitive); other files there are ignored.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                            ".pbm", ".jp2", ".gif"})
_GLOB_CHARS = set("*?[")


def is_glob(text: str) -> bool:
    """Whether `text` is a glob pattern (has `*`, `?` or `[`) rather than a plain path."""
    return bool(_GLOB_CHARS & set(text))


def expand_inputs(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Image paths from files, folders and glob patterns, in the order given.

    A folder gives its image files (by suffix, see `IMAGE_SUFFIXES`) sorted by name, and
    those of its sub-folders with `recursive`; a glob pattern gives its matches sorted
    (`**` matches sub-folders); a plain path is kept as it is, even when it does not exist
    (it then gets an error line). A path listed twice is kept once.

    Raises:
        InputError: a pattern or folder that matches no image, or no input at all.
    """
    paths: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            walk = path.rglob("*") if recursive else path.iterdir()
            found = sorted(p for p in walk if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"{text}: folder holds no image files "
                                 f"({', '.join(sorted(IMAGE_SUFFIXES))}){'' if recursive else ' (not recursive)'}")
            paths.extend(found)
        elif is_glob(text) and not path.exists():
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise InputError(f"{text}: no file matches this pattern")
            paths.extend(found)
        else:
            paths.append(path)
    if not paths:
        raise InputError("no input images given")
    unique: dict[str, Path] = {}
    for path in paths:
        unique.setdefault(str(path), path)
    return list(unique.values())


def done_paths(records: Iterable[dict]) -> set[str]:
    """Paths whose last line in `records` is a result (not an error): what `--resume` skips."""
    last: dict[str, bool] = {}
    for record in records:
        if "path" in record:
            last[str(record["path"])] = "error" not in record
    return {path for path, ok in last.items() if ok}


def image_error(path: str | os.PathLike, exc: BaseException) -> str:
    """An error message that names the image `path` (once)."""
    return str(exc) if str(path) in str(exc) else f"{path}: {exc}"


# --- decoding ahead ------------------------------------------------------------------


def decode_ahead(paths: Sequence[Path], threads: int = 2, ahead: int = 8,
                 reader: Callable[[Path], np.ndarray] = read_image
                 ) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
    """(path, BGR image, None) or (path, None, error message), in input order, with up to
    `ahead` images decoded in `threads` threads in advance (OpenCV decodes without the GIL).
    Errors that are not `SpigaError`s (a bug, not a bad file) are raised."""
    if threads <= 0:
        for path in paths:
            try:
                yield path, reader(path), None
            except SpigaError as exc:
                yield path, None, str(exc)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="spiga-decode") as pool:
        pending: deque[tuple[Path, Future]] = deque()
        queue = iter(paths)
        for path in queue:
            pending.append((path, pool.submit(reader, path)))
            if len(pending) >= ahead:
                break
        while pending:
            path, future = pending.popleft()
            next_path = next(queue, None)
            if next_path is not None:
                pending.append((next_path, pool.submit(reader, next_path)))
            try:
                yield path, future.result(), None
            except SpigaError as exc:
                yield path, None, str(exc)


# --- the run -------------------------------------------------------------------------


def output_stems(paths: Sequence[Path]) -> dict[str, str]:
    """Names for the files written per input (drawings, .pts): the input's stem, with a
    short hash of its path added where two inputs share a stem (so names do not depend on
    which images a run processes)."""
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    stems = {}
    for path in paths:
        if counts[path.stem] == 1:
            stems[str(path)] = path.stem
        else:
            stems[str(path)] = f"{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    return stems


def drawing_names(paths: Sequence[Path]) -> dict[str, str]:
    """File names for drawings: `<stem>.png` (see `output_stems`)."""
    return {path: f"{stem}.png" for path, stem in output_stems(paths).items()}


@dataclass
class BatchSummary:
    """What a run did: counts and the paths that failed, with their messages."""

    images: int = 0
    faces: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def exit_status(self) -> int:
        """The number of failed images, capped at 125 (0: all went well)."""
        return min(len(self.failed), 125)


@dataclass
class _Pending:
    """An image waiting for its batch, or an error waiting for the images before it."""

    path: Path
    image: np.ndarray | None = None
    boxes: np.ndarray | None = None
    scores: list | None = None
    error: str | None = None


def align_files(aligner: Aligner, paths: Sequence[Path], jsonl: str | os.PathLike | None = None,
                draw_dir: str | os.PathLike | None = None, resume: bool = False, boxes: Any = None,
                decode_threads: int = 2, batch_faces: int = 32, batch_images: int = 16, progress: bool = True,
                mesh: bool = False, pts_dir: str | os.PathLike | None = None,
                csv: str | os.PathLike | None = None, *, sink: ResultSink | None = None,
                raise_errors: bool = False, on_no_face: Callable[[Path], None] | None = None) -> BatchSummary:
    """Align the faces of many images; one JSON line per image, in input order, written as
    soon as the image's batch is done.

    Args:
        aligner: an `Aligner`.
        paths: image paths (see `expand_inputs`).
        jsonl: output file, or None (or `-`) for standard output.
        draw_dir: folder for drawings (`<stem>.png`, see `drawing_names`), or None.
        resume: skip the paths that already have a result line in `jsonl`; paths with an
            error line are tried again (a new line is appended: the last line of a path counts).
        boxes: face boxes for every image (rarely useful); None: the aligner's detector
            (a `file:` box file is asked for each image's boxes by its path or file name).
        decode_threads: decoding threads (0: decode in the calling thread).
        batch_faces: the model runs once the gathered images hold this many faces ...
        batch_images: ... or number this many.
        progress: show a progress bar (images/s, faces/s) on stderr.
        mesh: draw the mean-face mesh in the drawings.
        pts_dir: folder for one iBUG `.pts` per face (`<stem>_<face>.pts`), or None.
        csv: a CSV file with one row per face (`spiga.io.FaceCsvWriter`; written when the
            run ends, with the faces of resumed lines too), or None.
        sink: the outputs, built by the caller (then `jsonl`, `draw_dir`, `pts_dir`, `csv`
            and `mesh` are not used; `resume` still skips what `sink.existing` holds), after
            checking them against the inputs (`spiga.io.check_run_outputs`).
        raise_errors: raise the first image's error (a `SpigaError`) instead of recording it.
        on_no_face: called with the path of each image in which no face was found.
    Returns:
        a `BatchSummary`; `exit_status` is the number of failed images (capped at 125).
    Raises:
        OutputError: an output that would overwrite an input (checked before any work).
    """
    if resume and jsonl is None and sink is None:
        raise InputError("--resume needs an output file (--jsonl)")
    if sink is None:
        stems = output_stems(paths)
        check_run_outputs(paths, jsonl=jsonl, csv=csv, draw_dir=draw_dir, pts_dir=pts_dir, stems=stems)
        drawing = face_drawer(aligner.landmark_set, aligner.mean_face_world() if mesh else None)
        sink = ResultSink(aligner.landmark_set.num_landmarks, jsonl=STDOUT if jsonl is None else jsonl, csv=csv,
                          pts_dir=pts_dir, draw_dir=draw_dir, drawing=drawing if draw_dir else None, stems=stems,
                          resume=resume)
    with sink:
        run = _Run(aligner, sink, raise_errors, on_no_face)
        todo = run.skip_done(paths, resume)
        run.align(todo, boxes, decode_threads, batch_faces, batch_images, progress)
    summary = run.summary
    if summary.failed:
        log.info("%d of %d images failed", len(summary.failed), len(todo))
    return summary


class _Run:
    """One run of `align_files`: its sink, its summary and the batch being gathered."""

    def __init__(self, aligner: Aligner, sink: ResultSink, raise_errors: bool,
                 on_no_face: Callable[[Path], None] | None) -> None:
        self.aligner, self.sink = aligner, sink
        self.raise_errors, self.on_no_face = raise_errors, on_no_face
        self.summary = BatchSummary()
        self.start = time.perf_counter()
        self.bar: Any = None

    def skip_done(self, paths: Sequence[Path], resume: bool) -> list[Path]:
        """The paths still to do; with `resume`, the CSV gets the faces of those done."""
        skip = done_paths(self.sink.existing) if resume else set()
        if self.sink.table is not None:
            for record in self.sink.existing:
                if "faces" in record and record.get("path") in skip:
                    self.sink.table.write(record["path"], record["faces"])
        todo = [p for p in paths if str(p) not in skip]
        self.summary.skipped = len(paths) - len(todo)
        if self.summary.skipped:
            log.info("resuming: %d of %d images already done", self.summary.skipped, len(paths))
        return todo

    def fail(self, path: Path, message: str) -> None:
        if self.raise_errors:
            raise SpigaError(message)
        self.summary.failed[str(path)] = message
        self.sink.fail(path, message)
        self.bar.update(1)

    def flush(self, batch: list[_Pending]) -> None:
        """Run the model on the batch's images; write every record in input order."""
        images = [item for item in batch if item.error is None]
        try:
            results = self.aligner.align_many([p.image for p in images], [p.boxes for p in images],
                                              [p.scores for p in images]) if images else []
        except SpigaError as exc:
            if self.raise_errors:
                raise
            results = [exc] * len(images)
        by_item = {id(item): faces for item, faces in zip(images, results)}
        for item in batch:
            faces = by_item.get(id(item))
            if item.error is not None or isinstance(faces, SpigaError):
                self.fail(item.path, item.error if item.error is not None else str(faces))
                continue
            try:
                self.sink.write(item.path, item.image, faces)
            except SpigaError as exc:
                self.fail(item.path, str(exc))
                continue
            if not faces and self.on_no_face is not None:
                self.on_no_face(item.path)
            self.summary.images += 1
            self.summary.faces += len(faces)
            self.bar.update(1)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.summary.faces / elapsed:.1f} faces/s", refresh=False)
        batch.clear()

    def gather(self, path: Path, image: np.ndarray | None, error: str | None, boxes: Any) -> tuple[_Pending, int]:
        """The pending entry of a decoded image (its boxes found) or of its error."""
        if error is None:
            try:
                found = self.aligner.face_boxes(image, boxes, path=path)
                return _Pending(path, image, found.boxes, found.scores), len(found)
            except SpigaError as exc:
                if self.raise_errors:
                    raise
                error = image_error(path, exc)
        return _Pending(path, error=error), 0

    def align(self, todo: Sequence[Path], boxes: Any, decode_threads: int, batch_faces: int, batch_images: int,
              progress: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=len(todo), unit="img", disable=not progress, dynamic_ncols=True, file=sys.stderr)
        batch: list[_Pending] = []
        faces_in_batch = 0
        try:
            reader = functools.partial(read_image, depth_scaling=self.aligner.depth_scaling,
                                       allow_damaged=getattr(self.aligner, "allow_damaged", False))
            for path, image, error in decode_ahead(todo, threads=decode_threads, reader=reader):
                pending, count = self.gather(path, image, error, boxes)
                batch.append(pending)
                faces_in_batch += count
                if faces_in_batch >= batch_faces or len(batch) >= batch_images:
                    self.flush(batch)
                    faces_in_batch = 0
            self.flush(batch)
        finally:
            self.bar.close()
        self.summary.seconds = time.perf_counter() - self.start
