"""Files: JSON read with clear errors, and the one way spiga writes an output.

Every file spiga writes (JSON, JSON Lines, CSV, .pts, drawings, videos, ONNX graphs,
checkpoints, metrics, plots, mean faces) goes through `open_output` / `write_output`,
which respect what is already at the path:

- absent or a regular file: a temporary file in the same folder, fsync, then a rename
  (a reader never sees half a file), with the mode a plain `open` gives (umask);
- a symbolic link: the same, on the link's target (the link stays a link);
- anything else that exists (a character device, a FIFO, a socket): opened and written
  through, never renamed over;
- `-`: standard output, for the stream formats only (`stream_ok=True`);
- a folder: refused in one line naming the option.

`check_outputs_apart` refuses, before any work, an output that would overwrite an input.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping

from ..errors import DatasetError, OutputError, SpigaError

#: The path that means standard output (stream formats only).
STDOUT = "-"


def parse_json(text: str, source: str, error: type[SpigaError] = DatasetError) -> Any:
    """`json.loads(text)`; anything that is not readable JSON raises `error` naming `source`
    (and the line), including nesting too deep for the parser and numbers too long to read."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source}, line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except (ValueError, RecursionError):
        raise error(f"{source}: JSON that cannot be read (too deeply nested, or a number too long)") from None


def is_file(path: Path) -> bool:
    """`path.is_file()`, False (not an exception) for a name the system cannot even look up
    (too long, invalid characters): paths written in annotation files can be anything."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def read_json_file(path: str | os.PathLike, error: type[SpigaError] = DatasetError) -> Any:
    """Parse a JSON file; a missing, unreadable, empty or malformed file raises `error`
    naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a JSON file") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror})") from None
    if not text.strip():
        raise error(f"{path}: the file is empty")
    return parse_json(text, str(path), error)


#: Flags of the temporary file: created here or not at all (O_EXCL: never through a
#: link someone placed), not inherited by child processes.
_TEMPORARY_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
                    | getattr(os, "O_CLOEXEC", 0))


def _create_temporary(folder: Path, name: str, suffix: str = ".tmp") -> tuple[int, Path]:
    """Open a new, uniquely named file in `folder` for writing.

    It is created with mode 0o666 and the kernel applies the process umask (and a
    folder's default ACL) exactly as for a plain `open(path, "w")`, so the renamed file
    gets the mode the user expects. This replaces `mkstemp` (always 0600) followed by a
    chmod, whose only way to learn the umask is `os.umask`, which sets it process-wide
    for a moment and races with other threads creating files.
    """
    for _ in range(100):
        tmp = folder / f".{name[:200]}.{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(tmp, _TEMPORARY_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name for {name}")


def is_stdout(path: str | os.PathLike | None) -> bool:
    """Whether `path` is `-` (standard output)."""
    return path is not None and os.fspath(path) == STDOUT


def _what(path: str | os.PathLike, option: str | None) -> str:
    return f"{option} {os.fspath(path)}" if option else os.fspath(path)


def output_target(path: str | os.PathLike, option: str | None = None, stream_ok: bool = False) -> Path:
    """The file an output named `path` writes: a link's target (resolved), else `path`.

    Raises `OutputError` (one line naming `option`) for `-` where only a file will do,
    and for a folder, or a path under a file, where a file is expected.
    """
    if is_stdout(path):
        if not stream_ok:
            raise OutputError(f"{option or 'output'}: '-' (standard output) is only for the stream formats "
                              "(--json, --jsonl, --csv); give a file name")
        return Path(STDOUT)
    given = Path(path)
    if _is_special(given) or _descriptor_of(given) is not None:  # opened as named: `open` follows the link
        return given
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    if target.is_dir():
        raise OutputError(f"{_what(path, option)}: is a folder; give a file name")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{_what(path, option)}: {parent} is a file, not a folder")
        if parent.exists():
            break
    return target


def _descriptor_of(path: Path) -> int | None:
    """The open file descriptor a link such as `/dev/stdout` (-> `/proc/self/fd/1`) stands
    for, or None: what the process already has open is written through that descriptor
    (sharing its position), never replaced, even a regular file a shell redirected to."""
    for _ in range(40):
        try:
            target = os.readlink(path)
        except (OSError, ValueError):  # not a link (or no such path)
            return None
        found = re.fullmatch(r"/(?:proc/(?:self|thread-self|%d)/fd|dev/fd)/(\d+)" % os.getpid(), target)
        if found:
            return int(found.group(1))
        path = path.parent / target
    return None


def check_folder(path: str | os.PathLike, option: str | None = None) -> Path:
    """`path` as a folder output, without creating it: `OutputError` when it is a file."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{_what(path, option)}: is a file; give a folder")
    return folder


def output_folder(path: str | os.PathLike, option: str | None = None) -> Path:
    """A folder outputs go into (`--draw-dir`, `--pts`), created if needed; `OutputError`
    when `path` (or a folder above it) is a file."""
    folder = check_folder(path, option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{_what(path, option)}: a part of this path is a file, not a folder") from None
    return folder


def _is_special(target: Path) -> bool:
    """Whether `target` exists and is not a regular file (a device, a FIFO, a socket)."""
    try:
        mode = os.stat(target).st_mode
    except (OSError, ValueError):  # absent, or a name the system cannot look up: not a device
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


@contextlib.contextmanager
def _write_through(target: Path, text: bool) -> Iterator[IO]:
    """Open an existing non-regular file (device, FIFO; a socket is connected to) for writing."""
    if stat.S_ISSOCK(os.stat(target).st_mode):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(os.fspath(target))
            with sock.makefile("w" if text else "wb", encoding="utf-8" if text else None) as handle:
                yield handle
        return
    with open(target, "w" if text else "wb", encoding="utf-8" if text else None) as handle:
        yield handle


@contextlib.contextmanager
def _write_to_descriptor(descriptor: int, text: bool) -> Iterator[IO]:
    """Write through a copy of an open descriptor (its position shared with the original),
    after what Python has buffered for standard output and error."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    with os.fdopen(os.dup(descriptor), "w" if text else "wb", encoding="utf-8" if text else None) as handle:
        yield handle


@contextlib.contextmanager
def _write_replacing(target: Path, text: bool) -> Iterator[IO]:
    """Write a temporary file beside `target`, fsync, rename over `target` when the block
    ends without an exception (removed otherwise)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(target.parent, target.name)
    try:
        with os.fdopen(fd, "w" if text else "wb", encoding="utf-8" if text else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _standard_output(text: bool) -> Iterator[IO]:
    handle = sys.stdout if text else sys.stdout.buffer
    yield handle
    handle.flush()


def open_output(path: str | os.PathLike, *, text: bool = True, stream_ok: bool = False,
                option: str | None = None) -> contextlib.AbstractContextManager[IO]:
    """A handle to write the output `path` through, as a context manager (see the module
    docstring for what it does with what is already there).

    Args:
        path: the output; `-` is standard output where `stream_ok`.
        text: a text (UTF-8) handle, else binary.
        stream_ok: whether `-` is allowed (the stream formats: JSON, JSON Lines, CSV).
        option: the option that named `path` (e.g. "--json"), for the error messages.
    Raises:
        OutputError: `-` without `stream_ok`; a folder where a file is expected.
    """
    target = output_target(path, option, stream_ok)
    if is_stdout(target):
        return _standard_output(text)
    descriptor = _descriptor_of(target)
    if descriptor is not None:
        return _write_to_descriptor(descriptor, text)
    if _is_special(target):
        return _write_through(target, text)
    return _write_replacing(target, text)


def open_in_place(path: str | os.PathLike, append: bool = False) -> IO[str]:
    """A text handle that writes the output `path` in place, as it goes (JSON Lines: no
    temporary file, so lines written before a crash stay): a descriptor link (`/dev/stdout`)
    through its descriptor, anything else opened (truncated unless `append`)."""
    target = output_target(path)
    descriptor = _descriptor_of(target)
    if descriptor is not None:
        sys.stdout.flush()
        return os.fdopen(os.dup(descriptor), "w", encoding="utf-8")
    return open(target, "a" if append else "w", encoding="utf-8")


def write_output(path: str | os.PathLike, data: bytes | str, *, stream_ok: bool = False,
                 option: str | None = None) -> None:
    """Write `data` (text or bytes) to the output `path` in one go (see `open_output`)."""
    if not isinstance(data, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"write_output takes str or bytes, not {type(data).__name__}")
    with open_output(path, text=isinstance(data, str), stream_ok=stream_ok, option=option) as handle:
        handle.write(data)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 1, *, stream_ok: bool = False,
               option: str | None = None) -> None:
    """Write JSON to the output `path`: serialised first (a value that cannot be written
    raises before the file is touched), then `write_output`."""
    write_output(path, json.dumps(data, indent=indent) + "\n", stream_ok=stream_ok, option=option)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """`write_output` (the earlier name: regular files are still replaced atomically)."""
    write_output(path, data)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    """`write_json` (the earlier name)."""
    write_json(path, data, indent)


class NamedOutput:
    """For writers that only take a file name (OpenCV's `VideoWriter`): a temporary file
    `name` beside the output, created with the umask's mode like every other output, that
    becomes the output on `commit` (renamed over a regular file or a link's target, copied
    through a device or FIFO) or is removed on `discard`. As a context manager: committed
    when the block ends without an exception."""

    def __init__(self, path: str | os.PathLike, option: str | None = None) -> None:
        self.target = output_target(path, option)
        self._through = _is_special(self.target) or _descriptor_of(self.target) is not None
        folder = Path(tempfile.gettempdir()) if self._through else self.target.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, self.name = _create_temporary(folder, self.target.name, suffix=self.target.suffix or ".tmp")
        os.close(fd)

    def commit(self) -> None:
        try:
            if self._through:
                with open_output(self.target, text=False) as out, open(self.name, "rb") as data:
                    while chunk := data.read(1 << 20):
                        out.write(chunk)
            else:
                os.replace(self.name, self.target)
        finally:
            self.discard()

    def discard(self) -> None:
        self.name.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.name

    def __exit__(self, kind, *rest) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


# --- outputs against inputs ---------------------------------------------------------------


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """What makes two paths the same file: its device and inode (links, hard links and `..`
    all resolved); None for a path that names no file (nothing there to overwrite)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def check_outputs_apart(inputs: Iterable[str | os.PathLike | None],
                        outputs: Mapping[str, "str | os.PathLike | Iterable[str | os.PathLike] | None"]) -> None:
    """Refuse, before any work, an output that would overwrite one of the run's inputs.

    Args:
        inputs: the files the run reads (None entries are ignored).
        outputs: option name -> the path it writes, or every file it will write (a folder
            option's file names); None and `-` are ignored. A non-regular file (a device,
            a FIFO) is written through, not replaced, and is not compared.
    Raises:
        OutputError: naming the option, the output and the input.
    """
    known: dict[tuple[int, int], str] = {}
    for item in inputs:
        if item is not None and not is_stdout(item) and not _is_special(Path(item)):
            identity = _identity(item)
            if identity is not None:
                known.setdefault(identity, os.fspath(item))
    if not known:
        return
    for option, value in outputs.items():
        paths = [value] if isinstance(value, (str, os.PathLike)) or value is None else list(value)
        for path in paths:
            if path is None or is_stdout(path) or _is_special(Path(path)):
                continue
            source = known.get(_identity(path))  # type: ignore[arg-type]
            if source is not None:
                raise OutputError(f"{option} {os.fspath(path)} would overwrite the input {source}; "
                                  "write the output somewhere else")

