"""Files: JSON read with clear errors, and atomic writes (a reader never sees half a file).

Every file spiga writes (checkpoints, JSON, drawings, CSV, mean faces, plots) goes through
`write_atomic`: a temporary file in the same folder, fsync, then a rename.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from ..errors import DatasetError, SpigaError


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


def _create_temporary(folder: Path, name: str) -> tuple[int, Path]:
    """Open a new, uniquely named file in `folder` for writing.

    It is created with mode 0o666 and the kernel applies the process umask (and a
    folder's default ACL) exactly as for a plain `open(path, "w")`, so the renamed file
    gets the mode the user expects. This replaces `mkstemp` (always 0600) followed by a
    chmod, whose only way to learn the umask is `os.umask`, which sets it process-wide
    for a moment and races with other threads creating files.
    """
    for _ in range(100):
        tmp = folder / f".{name[:200]}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, _TEMPORARY_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name for {name}")


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename,
    so readers never see a half-written file. The file gets the mode a plain `open`
    would give it (0o666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w" if isinstance(data, str) else "wb"
    fd, tmp = _create_temporary(path.parent, path.name)
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    """Write JSON to `path` atomically: serialised first (a value that cannot be written
    raises before the file is touched), then `write_atomic`."""
    write_atomic(path, json.dumps(data, indent=indent) + "\n")
