"""Many images: expand inputs, decode ahead in threads, batch faces across images,
write one JSON line per image as it finishes.

    from spiga.inference.many_images import expand_inputs, align_files
    paths = expand_inputs(["photos/", "more/*.jpg", "one.png"])
    summary = align_files(aligner, paths, jsonl="faces.jsonl", draw_dir="drawn")

The output (`spiga.io.JsonlWriter`) is append-only: one `write` and one `flush` per line, so a
crash loses nothing already written; a truncated last line (a crash in the middle of a
write) is cut off when the file is opened again. A line is either the record of one
image, `{"path", "width", "height", "faces": [...]}` (the single-image JSON's record), or
an error, `{"path", "error"}`.
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

from ..errors import InputError, SpigaError
from .aligner import Aligner
from ..io import FaceCsvWriter, JsonlWriter, read_image, write_image, write_pts_files

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


# --- decoding ahead ------------------------------------------------------------------


def decode_ahead(paths: Sequence[Path], workers: int = 2, ahead: int = 8,
                 reader: Callable[[Path], np.ndarray] = read_image
                 ) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
    """(path, BGR image, None) or (path, None, error message), in input order, with up to
    `ahead` images decoded in `workers` threads in advance (OpenCV decodes without the GIL).
    Errors that are not `SpigaError`s (a bug, not a bad file) are raised."""
    if workers <= 0:
        for path in paths:
            try:
                yield path, reader(path), None
            except SpigaError as exc:
                yield path, None, str(exc)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spiga-decode") as pool:
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
                workers: int = 2, batch_faces: int = 32, batch_images: int = 16, progress: bool = True,
                mesh: bool = False, pts_dir: str | os.PathLike | None = None,
                csv: str | os.PathLike | None = None) -> BatchSummary:
    """Align the faces of many images; one JSON line per image, in input order, written as
    soon as the image's batch is done.

    Args:
        aligner: an `Aligner`.
        paths: image paths (see `expand_inputs`).
        jsonl: output file, or None for standard output.
        draw_dir: folder for drawings (`<stem>.png`, see `drawing_names`), or None.
        resume: skip the paths that already have a result line in `jsonl`; paths with an
            error line are tried again (a new line is appended: the last line of a path counts).
        boxes: face boxes for every image (rarely useful); None: the aligner's detector
            (a `file:` box file is asked for each image's boxes by its path or file name).
        workers: decoding threads (0: decode in the calling thread).
        batch_faces: the model runs once the gathered images hold this many faces ...
        batch_images: ... or number this many.
        progress: show a progress bar (images/s, faces/s) on stderr.
        mesh: draw the mean-face mesh in the drawings.
        pts_dir: folder for one iBUG `.pts` per face (`<stem>_<face>.pts`), or None.
        csv: a CSV file with one row per face (`spiga.io.FaceCsvWriter`; written when the
            run ends, with the faces of resumed lines too), or None.
    Returns:
        a `BatchSummary`; `exit_status` is the number of failed images (capped at 125).
    """
    from tqdm import tqdm

    from ..draw import draw_faces

    summary = BatchSummary()
    start = time.perf_counter()
    names = drawing_names(paths) if draw_dir else {}
    stems = output_stems(paths) if pts_dir else {}
    table = FaceCsvWriter(csv, aligner.landmark_set.num_landmarks) if csv else None
    mesh_points = aligner.mean_face_world() if mesh else None
    if resume and jsonl is None:
        raise InputError("--resume needs an output file (--jsonl)")
    with JsonlWriter(jsonl, resume=resume) as out:
        skip = done_paths(out.existing) if resume else set()
        todo = [p for p in paths if str(p) not in skip]
        if table is not None:
            for record in out.existing:
                if "faces" in record and record.get("path") in skip:
                    table.write(record["path"], record["faces"])
        summary.skipped = len(paths) - len(todo)
        if summary.skipped:
            log.info("resuming: %d of %d images already done", summary.skipped, len(paths))
        bar = tqdm(total=len(todo), unit="img", disable=not progress, dynamic_ncols=True, file=sys.stderr)

        def fail(path: Path, message: str) -> None:
            summary.failed[str(path)] = message
            out.write({"path": str(path), "error": message})
            bar.update(1)

        def flush(batch: list[_Pending]) -> None:
            """Run the model on the batch's images; write every line in input order."""
            images = [item for item in batch if item.error is None]
            try:
                results = aligner.align_many([p.image for p in images], [p.boxes for p in images],
                                             [p.scores for p in images]) if images else []
            except SpigaError as exc:
                results = [exc] * len(images)
            by_item = {id(item): faces for item, faces in zip(images, results)}
            for item in batch:
                if item.error is not None:
                    fail(item.path, item.error)
                    continue
                faces = by_item[id(item)]
                if isinstance(faces, SpigaError):
                    fail(item.path, str(faces))
                    continue
                if draw_dir:
                    try:
                        drawing = draw_faces(item.image, faces, aligner.landmark_set, mesh_points=mesh_points)
                        write_image(Path(draw_dir) / names[str(item.path)], drawing)
                    except (SpigaError, OSError) as exc:
                        fail(item.path, f"drawing: {exc}")
                        continue
                if pts_dir:
                    try:
                        write_pts_files(pts_dir, item.path, faces, stem=stems[str(item.path)])
                    except OSError as exc:
                        fail(item.path, f"pts: {exc}")
                        continue
                records = [face.to_dict() for face in faces]
                if table is not None:
                    table.write(item.path, records)
                out.write({"path": str(item.path), "width": int(item.image.shape[1]),
                           "height": int(item.image.shape[0]), "faces": records})
                summary.images += 1
                summary.faces += len(faces)
                bar.update(1)
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{summary.faces / elapsed:.1f} faces/s", refresh=False)
            batch.clear()

        batch: list[_Pending] = []
        faces_in_batch = 0
        try:
            reader = functools.partial(read_image, depth_scaling=aligner.depth_scaling,
                                       allow_damaged=getattr(aligner, "allow_damaged", False))
            for path, image, error in decode_ahead(todo, workers=workers, reader=reader):
                if error is None:
                    try:
                        found = aligner.face_boxes(image, boxes, path=path)
                        batch.append(_Pending(path, image, found.boxes, found.scores))
                        faces_in_batch += len(found)
                    except SpigaError as exc:
                        error = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                if error is not None:
                    batch.append(_Pending(path, error=error))
                if faces_in_batch >= batch_faces or len(batch) >= batch_images:
                    flush(batch)
                    faces_in_batch = 0
            flush(batch)
        finally:
            bar.close()
    if table is not None:
        table.close()
    summary.seconds = time.perf_counter() - start
    if summary.failed:
        log.info("%d of %d images failed", len(summary.failed), len(todo))
    return summary
