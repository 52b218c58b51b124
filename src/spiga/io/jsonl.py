"""JSON Lines output: append-only, one line per record, safe to resume.

`JsonlWriter` writes and flushes one line at a time, so a crash loses nothing already
written (the file is written in place, not replaced: `-` is standard output, a FIFO or
device is written through, a link's target is written); `read_jsonl_records` reads back
the complete lines and leaves out a last line cut short (a crash in the middle of a
write), which the writer then truncates.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from ..errors import InputError, OutputError
from .files import is_stdout, open_in_place, output_target

log = logging.getLogger(__name__)


def read_jsonl_records(path: str | os.PathLike) -> tuple[list[dict], int]:
    """The complete lines of a JSON Lines file and the byte length they span.

    A last line without its newline or that is not valid JSON (a write cut short by a
    crash) is left out of both; a malformed line elsewhere raises `InputError`.
    """
    path = Path(path)
    data = path.read_bytes()
    records: list[dict] = []
    good_end = 0
    position = 0
    number = 0
    while position < len(data):
        number += 1
        newline = data.find(b"\n", position)
        last = newline < 0 or newline == len(data) - 1
        end = len(data) if newline < 0 else newline + 1
        line = data[position:end].strip()
        if line:
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                if last:
                    log.warning("%s: line %d is incomplete (an interrupted run?); it will be rewritten", path, number)
                    break
                raise InputError(f"{path}: line {number} is not a JSON object ({exc}); "
                                 "not an output of spiga, or damaged") from None
            if newline < 0:
                log.warning("%s: line %d has no newline (an interrupted run?); it will be rewritten", path, number)
                break
            records.append(record)
        good_end = end
        position = end
    return records, good_end


class JsonlWriter:
    """Append-only JSON Lines output: one `write` + `flush` per line.

    Args:
        path: the file, or None (or `-`) for standard output.
        resume: keep the complete lines already there (a truncated last line is cut off);
            otherwise the file starts empty.
    Attributes:
        existing: the records already in the file (with `resume`).
    """

    def __init__(self, path: str | os.PathLike | None, resume: bool = False) -> None:
        self.path = None if path is None or is_stdout(path) else output_target(path, "--jsonl")
        self.existing: list[dict] = []
        self._handle: TextIO
        if self.path is None:
            self._handle = sys.stdout
            self._owned = False
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists() and not self.path.is_file():
            raise OutputError(f"--jsonl {path}: --resume needs a regular file to read back, not a device or FIFO")
        if resume and self.path.exists():
            self.existing, good_end = read_jsonl_records(self.path)
            with open(self.path, "r+b") as raw:
                raw.truncate(good_end)
            self._handle = open_in_place(self.path, append=True)
        else:
            self._handle = open_in_place(self.path)
        self._owned = True

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._owned and not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
