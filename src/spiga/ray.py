"""Many machines: batch alignment on a Ray cluster (the `ray` extra, `ray[data]`).

    import ray
    from spiga.ray import align_dataset, iter_records
    images = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    aligned = align_dataset(images, model="wflw", concurrency=8, num_gpus=1)
    for record in iter_records(aligned):
        ...

`align_dataset` maps a Dataset of image files (rows `{"path", "bytes"}`) through a pool
of actors; each loads the model once and runs the path of `spiga align` on its batches:
decode (`spiga.io.read_image_bytes`), detect, crop, network, faces (`Aligner.face_boxes`
-> `crop_faces` -> `predict_crops` -> `faces_from_crops`). Its rows hold the records of the
one-machine runner (`spiga.io.image_record`): a bad image is a record
with an error, not a failed task. Ray retries the batch of a worker that dies (its actor is
restarted and loads the model again).

`align_files_on_ray` is `spiga align INPUTS --ray ADDRESS`: it lists the inputs (local
files, folders, globs, or object-store URIs), leaves out those already done (`--resume`),
and streams the records into the outputs of the one-machine run (JSON Lines, CSV, .pts,
drawings), in the order they finish. A record whose image was already written in this run
(a retried batch) is written once.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .about import install_hint
from .errors import InputError, SpigaError
from .inference.many_images import IMAGE_SUFFIXES, BatchSummary, done_paths, expand_inputs, image_error, output_stems
from .io import (FaceCsvWriter, JsonlWriter, check_run_outputs, image_record, read_image, read_image_bytes,
                 write_output, write_pts_files)

log = logging.getLogger(__name__)

#: The columns of `align_dataset`'s rows: the image's path, its record as JSON text (one
#: JSON Lines line; text, so that records with and without faces share one schema and
#: floats arrive exactly), its drawing as PNG bytes (empty unless asked for), and the
#: model's number of landmarks (for CSV headers).
RECORD_COLUMNS = ("path", "record", "drawing", "num_landmarks")


def require_ray():
    """The `ray` module with Ray Data, or `SpigaError` naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the part spiga uses
    except ImportError as exc:
        raise SpigaError(f"running on Ray needs Ray Data: {install_hint('ray')} ({exc})") from None
    return ray


# --- the workers -----------------------------------------------------------------------


@dataclass
class _Prepared:
    """One image of a batch: decoded and cropped, or the reason it failed."""

    path: str
    image: np.ndarray | None = None
    crops: Any = None  # spiga.inference.aligner.FaceCrops
    faces: list = field(default_factory=list)
    error: str | None = None


class AlignActor:
    """A Ray Data actor: loads the model once (`spiga.load(**load_options)`), then turns
    batches of `{"path", "bytes"}` rows into rows of `RECORD_COLUMNS`.

    Args:
        load_options: keyword arguments of `spiga.load` (model, precision, backend, ...).
        boxes: face boxes for every image (rarely useful), or None for the detector's.
        draw: also return a drawing of each image (PNG bytes).
        mesh: drawings show the mean-face mesh.
        threads: PyTorch threads (None: PyTorch's default).
    """

    def __init__(self, load_options: dict, boxes: Any = None, draw: bool = False, mesh: bool = False,
                 threads: int | None = None) -> None:
        import spiga

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.aligner = spiga.load(**load_options)
        self.boxes = boxes
        self.draw = draw
        self.mesh_points = self.aligner.mean_face_world() if draw and mesh else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [self._prepare(str(path), data) for path, data in zip(batch["path"], batch["bytes"])]
        self._align(items)
        records = [image_record(item.path, error=item.error) if item.error is not None
                   else image_record(item.path, item.image.shape[1], item.image.shape[0], item.faces)
                   for item in items]
        drawings = [self._drawing(item, record) for item, record in zip(items, records)]
        count = self.aligner.landmark_set.num_landmarks
        return {"path": np.array([item.path for item in items], dtype=object),
                "record": np.array([json.dumps(record) for record in records], dtype=object),
                "drawing": np.array(drawings, dtype=object),
                "num_landmarks": np.full(len(items), count, dtype=np.int64)}

    def _prepare(self, path: str, data: bytes) -> _Prepared:
        """Decode and crop one image, as the one-machine runner does (same messages)."""
        aligner = self.aligner
        try:
            image = read_image_bytes(data, source=path, depth_scaling=aligner.depth_scaling,
                                     allow_damaged=aligner.allow_damaged)
        except SpigaError as exc:
            return _Prepared(path, error=str(exc))
        try:
            return _Prepared(path, image, aligner.crop_faces(image, aligner.face_boxes(image, self.boxes, path=path)))
        except SpigaError as exc:
            return _Prepared(path, error=image_error(path, exc))

    def _align(self, items: list[_Prepared]) -> None:
        """Run the network once on the faces of all good images of the batch."""
        good = [item for item in items if item.error is None]
        if not any(len(item.crops) for item in good):
            return
        try:
            landmarks, poses = self.aligner.predict_crops(np.concatenate([item.crops.crops for item in good]))
        except SpigaError as exc:
            for item in good:
                item.error = str(exc)
            return
        start = 0
        for item in good:
            end = start + len(item.crops)
            item.faces = self.aligner.faces_from_crops(item.crops, landmarks[start:end], poses[start:end])
            start = end

    def _drawing(self, item: _Prepared, record: dict) -> bytes:
        """PNG bytes of the image with its faces (empty when not asked for, or on errors)."""
        if not self.draw or item.error is not None:
            return b""
        import cv2

        from .draw import draw_faces

        try:
            drawing = draw_faces(item.image, item.faces, self.aligner.landmark_set, mesh_points=self.mesh_points)
            ok, encoded = cv2.imencode(".png", drawing)
            if not ok:
                raise SpigaError("PNG encoding failed")
        except (SpigaError, cv2.error) as exc:
            record.clear()
            record.update(image_record(item.path, error=f"drawing: {exc}"))
            return b""
        return encoded.tobytes()


def align_dataset(dataset: Any, model: str | os.PathLike = "wflw", precision: str = "float32",
                  backend: str = "torch", max_batch: int = 32, detector: Any = "blazeface",
                  concurrency: int = 1, num_gpus: float = 0, num_cpus: float = 1, batch_size: int = 16,
                  device: str | None = None, depth_scaling: str | None = None, boxes: Any = None,
                  draw: bool = False, mesh: bool = False, compile: bool = False, allow_damaged: bool = False) -> Any:
    """Align the faces of a Ray Dataset of image files on a pool of actors.

    Args:
        dataset: a `ray.data.Dataset` with rows `{"path": str, "bytes": bytes}`, e.g. from
            `ray.data.read_binary_files(paths, include_paths=True)`.
        model: a named model or a checkpoint (or .onnx file), as for `spiga.load`; it must be
            readable on every node (a named model, or a file on a shared file system).
        precision: as for `spiga.load`.
        backend: as for `spiga.load`.
        max_batch: faces per network call.
        detector: the face detector (a name, `file:BOXES`, or a picklable `Detector`).
        device: as for `spiga.load`; None: CUDA where the actor has a GPU, else the CPU.
        depth_scaling: as for `spiga.load`.
        compile: as for `spiga.load`.
        concurrency: actors (each loads the model once).
        num_gpus: GPUs per actor (fractions share a GPU between actors).
        num_cpus: CPUs per actor (also its PyTorch threads, rounded, at least 1).
        batch_size: images per batch handed to an actor (its faces run as one network call,
            split by `max_batch`).
        boxes: face boxes for every image, or None for the detector's.
        draw: also return drawings (PNG bytes).
        mesh: drawings show the mean-face mesh.
        allow_damaged: as for `spiga.load` (JPEG files with damaged data are decoded, not refused).
    Returns:
        a Dataset with rows of `RECORD_COLUMNS`; `iter_records` gives the records as dicts.
    """
    import ray.data

    if concurrency < 1 or batch_size < 1 or max_batch < 1:
        raise InputError("concurrency, batch_size and max_batch must be >= 1")
    load_options = {"model": os.fspath(model), "device": device, "precision": precision, "backend": backend,
                    "max_batch": max_batch, "detector": detector, "depth_scaling": depth_scaling,
                    "compile": compile, "allow_damaged": allow_damaged}
    return dataset.map_batches(
        AlignActor, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency), num_gpus=num_gpus or None, num_cpus=num_cpus,
        fn_constructor_kwargs={"load_options": load_options, "boxes": boxes, "draw": draw, "mesh": mesh,
                               "threads": max(1, round(num_cpus))})


def iter_records(dataset: Any) -> Iterator[dict]:
    """The per-image records (dicts) of `align_dataset`'s rows, as they arrive."""
    for row in dataset.iter_rows():
        yield json.loads(row["record"])


# --- the driver ------------------------------------------------------------------------


def is_uri(text: str) -> bool:
    """Whether an input names a file system by scheme (`s3://`, `gs://`, `file://`, ...)."""
    return "://" in text


def _remote_images(uri: str, recursive: bool) -> list[str]:
    """The image files (by suffix) of an object-store folder, sorted, or the URI itself when
    it names a file; listed with pyarrow's file systems (Ray Data's own readers)."""
    import pyarrow.fs

    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
        if info.type == pyarrow.fs.FileType.File:
            return [uri]
        if info.type != pyarrow.fs.FileType.Directory:
            raise InputError(f"{uri}: no such file or folder")
        listed = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=recursive))
    except (OSError, ValueError) as exc:
        raise InputError(f"{uri}: cannot list ({exc})") from None
    prefix = uri[: len(uri) - len(uri.split("://", 1)[1])] + root.rstrip("/")
    found = sorted(prefix + item.path[len(root.rstrip("/")):] for item in listed
                   if item.type == pyarrow.fs.FileType.File and Path(item.path).suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise InputError(f"{uri}: folder holds no image files{'' if recursive else ' (not recursive)'}")
    return found


def list_inputs(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[str]:
    """Image paths from local files, folders and globs (`expand_inputs`) and object-store
    URIs (files, or folders listed), in the order given, each once."""
    paths: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        paths.extend(_remote_images(text, recursive) if is_uri(text)
                     else (str(p) for p in expand_inputs([text], recursive=recursive)))
    return list(dict.fromkeys(paths))


def _with_scheme(scheme: str, row: dict) -> dict:
    return {"path": scheme + row["path"], "bytes": row["bytes"]}


def read_images(paths: Sequence[str]) -> Any:
    """A Dataset of `{"path", "bytes"}` rows for `paths` (read by Ray's workers), each row's
    path spelled as given (Ray reports `s3://b/k` as `b/k`); one reader per file system."""
    import ray.data

    by_scheme: dict[str, list[str]] = {}
    for path in paths:
        by_scheme.setdefault(path.split("://", 1)[0] + "://" if is_uri(path) else "", []).append(path)
    # reading asks for no CPU: the actors may hold them all (an actor pool as large as the
    # machine), and reads that wait for a CPU would then wait for ever
    no_cpu = ({"num_cpus": 0} if "num_cpus" in inspect.signature(ray.data.read_binary_files).parameters
              else {"ray_remote_args": {"num_cpus": 0}})  # Ray before named remote parameters
    datasets = []
    for scheme, group in by_scheme.items():
        dataset = ray.data.read_binary_files(group, include_paths=True, **no_cpu)
        datasets.append(dataset.map(functools.partial(_with_scheme, scheme)) if scheme else dataset)
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


@contextlib.contextmanager
def connect(address: str) -> Iterator[None]:
    """Ray for the length of the block: `local` starts it on this machine, `auto` joins the
    running cluster, anything else is a cluster's address. A Ray already started in this
    process is used as it is (and left running)."""
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SpigaError(f"cannot start or join Ray at {address!r}: {exc}") from None
    ray.data.DataContext.get_current().enable_progress_bars = False  # spiga's own bar counts images
    if not log.isEnabledFor(logging.INFO):  # Ray Data's plans and timings only with --verbose
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _output_stems(paths: Sequence[str]) -> dict[str, str]:
    """`output_stems` (the one-machine runner's names of drawings and .pts files) for paths
    that may be URIs (which `Path` would respell)."""
    as_paths = [Path(p) for p in paths]
    stems = output_stems(as_paths)
    return {text: stems[str(path)] for text, path in zip(paths, as_paths)}


class _Outputs:
    """The driver's side: records (in any order) into the one-machine runner's outputs,
    each image once."""

    def __init__(self, paths: Sequence[str], jsonl: Any, resume: bool, draw_dir: Any, pts_dir: Any, csv: Any):
        self.out = JsonlWriter(jsonl, resume=resume)
        self.skip = done_paths(self.out.existing) if resume else set()
        self.draw_dir, self.pts_dir, self.csv = draw_dir, pts_dir, csv
        self.stems = _output_stems(paths) if draw_dir or pts_dir else {}
        self.table: list[tuple[str, list]] = [(r["path"], r["faces"]) for r in self.out.existing
                                               if "faces" in r and r.get("path") in self.skip] if csv else []
        self.written: set[str] = set()
        self.summary = BatchSummary(skipped=len(set(paths) & self.skip))
        self.num_landmarks: int | None = None

    def write(self, record: dict, drawing: bytes = b"", num_landmarks: int | None = None) -> None:
        path = record["path"]
        if path in self.written:  # a batch that Ray ran twice (a worker died after finishing it)
            return
        self.written.add(path)
        self.num_landmarks = self.num_landmarks or num_landmarks
        if "error" not in record:
            record = self._files(record, drawing)
        if "error" in record:
            self.summary.failed[path] = record["error"]
        else:
            self.summary.images += 1
            self.summary.faces += len(record["faces"])
            if self.csv:
                self.table.append((path, record["faces"]))
        self.out.write(record)

    def _files(self, record: dict, drawing: bytes) -> dict:
        """Write the drawing and .pts files of a record; an error record if that fails."""
        path = record["path"]
        try:
            if self.draw_dir:
                write_output(Path(self.draw_dir) / f"{self.stems[path]}.png", drawing, option="--draw-dir")
        except OSError as exc:
            return image_record(path, error=f"drawing: {exc}")
        try:
            if self.pts_dir:
                write_pts_files(self.pts_dir, path, record["faces"], stem=self.stems[path])
        except OSError as exc:
            return image_record(path, error=f"pts: {exc}")
        return record

    def close(self) -> None:
        self.out.close()

    def write_csv(self) -> None:
        """The CSV of all faces, resumed ones included (written when the run ends, as `align_files` does)."""
        if self.csv:
            faces = [face for _, faces in self.table for face in faces]
            count = len(faces[0]["landmarks"]) if faces else self.num_landmarks or 0
            with FaceCsvWriter(self.csv, count) as table:
                for path, faces in self.table:
                    table.write(path, faces)


def _missing_local(paths: Sequence[str]) -> dict[str, str]:
    """Local inputs that are not readable files, with the one-machine runner's message."""
    errors = {}
    for path in paths:
        if not is_uri(path) and not Path(path).is_file():
            try:
                read_image(path)
                errors[path] = f"{path}: cannot read"
            except SpigaError as exc:
                errors[path] = str(exc)
    return errors


def align_files_on_ray(inputs: Sequence[str | os.PathLike], address: str = "local", jsonl: Any = None,
                       draw_dir: Any = None, pts_dir: Any = None, csv: Any = None, resume: bool = False,
                       recursive: bool = False, progress: bool = True, **options: Any) -> BatchSummary:
    """`spiga align INPUTS --ray ADDRESS`: align many images on Ray; the outputs of the
    one-machine runner (`align_files`), written as records arrive (in any order).

    Args:
        inputs: local files, folders and globs, or object-store URIs (`list_inputs`).
        address: `local`, `auto` or a Ray address (`connect`).
        jsonl: output file, or None for standard output.
        draw_dir: folder for drawings (as `align_files` names them), or None.
        pts_dir: folder for `.pts` files, or None.
        csv: CSV file of all faces (written when the run ends), or None.
        resume: skip the images that already have a result in `jsonl`.
        recursive: take images from sub-folders too.
        progress: show a progress bar on stderr.
        options: keyword arguments of `align_dataset` (model, concurrency, num_gpus, ...).
    Returns:
        a `BatchSummary`.
    """
    from tqdm import tqdm

    require_ray()
    if resume and jsonl is None:
        raise InputError("--resume needs an output file (--jsonl)")
    start = time.perf_counter()
    paths = list_inputs(inputs, recursive)
    local = [path for path in paths if not is_uri(path)]
    check_run_outputs(local, jsonl=jsonl, csv=csv, draw_dir=draw_dir, pts_dir=pts_dir,
                      stems=_output_stems(local))  # before any work: no output over an input
    outputs = _Outputs(paths, jsonl, resume, draw_dir, pts_dir, csv)
    try:
        todo = [p for p in paths if p not in outputs.skip]
        if outputs.summary.skipped:
            log.info("resuming: %d of %d images already done", outputs.summary.skipped, len(paths))
        missing = _missing_local(todo)
        for path, message in missing.items():
            outputs.write(image_record(path, error=message))
        readable = [p for p in todo if p not in missing]
        with tqdm(total=len(todo), initial=len(missing), unit="img", disable=not progress, dynamic_ncols=True,
                  file=sys.stderr) as bar:
            if readable:
                with connect(address):
                    aligned = align_dataset(read_images(readable), draw=bool(draw_dir), **options)
                    for batch in aligned.iter_batches(batch_format="numpy", batch_size=None):
                        for text, drawing, count in zip(batch["record"], batch["drawing"], batch["num_landmarks"]):
                            outputs.write(json.loads(text), bytes(drawing), int(count))
                            bar.update(1)
    finally:
        outputs.close()
    outputs.write_csv()
    outputs.summary.seconds = time.perf_counter() - start
    return outputs.summary
