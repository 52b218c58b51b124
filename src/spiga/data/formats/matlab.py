"""A strict reader for the numeric matrices of MATLAB v5 (`-v6`/`-v7`) MAT-files.

COFW68's annotations are MAT-files. scipy's `loadmat` reads them, but its v5 reader is
not hardened against damaged input (scipy documents this): a few flipped bytes in a tag
crash the interpreter with a segmentation fault, found by our fuzzing (tests/corpus/cofw68).
A dataset reader must instead name the file and the problem, so the small part of the
format that annotations use is read here, with every size checked against the bytes left:

- the 128-byte header (either byte order; v7.3 HDF5 files are refused with a hint),
- top-level `miMATRIX` elements, optionally `miCOMPRESSED` (zlib, bounded output),
- numeric and logical classes (double, single, (u)int8..64) with real data, any rank.

Other variables (char, cell, struct, sparse, objects, complex) are skipped; they hold
nothing a landmark reader uses. The file format is MathWorks' "MAT-File Format" (2019).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

#: MAT-file header: 116 bytes of text, 8 of subsystem offset, version, endian indicator.
_HEADER_BYTES = 128
#: Data types of the elements (MAT-File Format, table 1-1), as NumPy dtypes without byte order.
_DATA_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8",
               12: "i8", 13: "u8"}
_MI_MATRIX = 14
_MI_COMPRESSED = 15
#: Array classes holding plain numbers (MAT-File Format, table 1-3): double .. uint64.
_NUMERIC_CLASSES = range(6, 16)
_FLAG_COMPLEX = 0x0800
#: Limits for a file to be refused rather than exhaust memory.
MAX_BYTES = 1 << 28
MAX_ELEMENTS = 1 << 26


class MatFileError(ValueError):
    """The bytes are not a MAT-file this reader understands; the message says why."""


class _Reader:
    """Reads tags and data from one buffer, never past its end."""

    def __init__(self, data: bytes, byte_order: str) -> None:
        self.data = data
        self.byte_order = byte_order

    def uint32(self, offset: int) -> int:
        return int(np.frombuffer(self.data, self.byte_order + "u4", 1, offset)[0])

    def tag(self, offset: int, end: int) -> tuple[int, int, int, int]:
        """(data type, byte count, data offset, offset after the element) of the tag at `offset`."""
        if offset + 8 > end:
            raise MatFileError(f"truncated element tag at byte {offset}")
        first = self.uint32(offset)
        if first >> 16:  # small data element: count and type share 4 bytes, data in the next 4
            data_type, count = first & 0xFFFF, first >> 16
            if count > 4:
                raise MatFileError(f"small data element at byte {offset} declares {count} bytes (at most 4)")
            return data_type, count, offset + 4, offset + 8
        count = self.uint32(offset + 4)
        start = offset + 8
        if count > end - start:
            raise MatFileError(f"element at byte {offset} declares {count} bytes, "
                               f"{end - start} are left")
        return first, count, start, start + count + (-count % 8)

    def numbers(self, offset: int, end: int) -> tuple[np.ndarray, int]:
        """The numeric data element at `offset` and the offset after it."""
        data_type, count, start, after = self.tag(offset, end)
        if data_type not in _DATA_TYPES:
            raise MatFileError(f"element at byte {offset} has data type {data_type}, not a number type")
        dtype = np.dtype(self.byte_order + _DATA_TYPES[data_type])
        if count % dtype.itemsize:
            raise MatFileError(f"element at byte {offset}: {count} bytes is not a whole number "
                               f"of {dtype.itemsize}-byte values")
        return np.frombuffer(self.data, dtype, count // dtype.itemsize, start), min(after, end)


def _matrix(reader: _Reader, start: int, end: int) -> tuple[str, np.ndarray | None]:
    """Name and value of the `miMATRIX` whose subelements lie in [start, end); None if skipped."""
    if start == end:  # an empty placeholder MATLAB writes for some empty values
        return "", None
    flags, after_flags = reader.numbers(start, end)
    if flags.size < 2:
        raise MatFileError(f"array flags at byte {start} hold {flags.size} values (expected 2)")
    array_class, flag_bits = int(flags[0]) & 0xFF, int(flags[0])
    dims, after_dims = reader.numbers(after_flags, end)
    if dims.size < 2 or np.any(dims < 0):
        raise MatFileError(f"dimensions at byte {after_flags} are {dims.tolist()}")
    shape = tuple(int(d) for d in dims)
    name_type, name_count, name_start, after_name = reader.tag(after_dims, end)
    if name_type not in (1, 2):
        raise MatFileError(f"array name at byte {after_dims} has data type {name_type}")
    name = reader.data[name_start:name_start + name_count].decode("latin-1")
    if array_class not in _NUMERIC_CLASSES or flag_bits & _FLAG_COMPLEX:
        return name, None
    size = int(np.prod(shape, dtype=np.float64))
    if size > MAX_ELEMENTS:
        raise MatFileError(f"variable {name!r} declares {shape} values, more than this reader accepts")
    values, _ = reader.numbers(min(after_name, end), end)
    if values.size != size:
        raise MatFileError(f"variable {name!r} declares shape {shape} but holds {values.size} values")
    return name, values.astype(np.float64).reshape(shape, order="F")


def _decompress(data: bytes, offset: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_BYTES)
    except zlib.error as exc:
        raise MatFileError(f"compressed element at byte {offset} is damaged ({exc})") from None
    if inflater.unconsumed_tail:
        raise MatFileError(f"compressed element at byte {offset} inflates past {MAX_BYTES} bytes")
    if not inflater.eof:
        raise MatFileError(f"compressed element at byte {offset} is truncated")
    return out


def _variables(reader: _Reader, offset: int, end: int, variables: dict[str, np.ndarray],
               nested: bool = False) -> None:
    while offset < end:
        if end - offset < 8 and not nested:
            break  # trailing padding
        data_type, count, start, after = reader.tag(offset, end)
        if data_type == _MI_COMPRESSED and not nested:
            inner = _Reader(_decompress(reader.data[start:start + count], start), reader.byte_order)
            _variables(inner, 0, len(inner.data), variables, nested=True)
            after = start + count  # compressed elements are not padded
        elif data_type == _MI_MATRIX:
            name, value = _matrix(reader, start, start + count)
            if value is not None:
                variables[name] = value
        else:
            raise MatFileError(f"element at byte {offset} has data type {data_type}, "
                               "expected a matrix")
        offset = after


def parse_mat(data: bytes) -> dict[str, np.ndarray]:
    """Numeric variables of MAT-file bytes, as float64 arrays in MATLAB's shape.

    >>> sorted(parse_mat(open("1_points.mat", "rb").read()))  # doctest: +SKIP
    ['Occ', 'Points']

    Raises MatFileError naming the problem for anything but a well-formed v5 file.
    """
    if len(data) < _HEADER_BYTES:
        raise MatFileError(f"{len(data)} bytes, shorter than the 128-byte MAT-file header")
    if data.startswith(b"MATLAB 7.3") or data[:8] == b"\x89HDF\r\n\x1a\n":
        raise MatFileError("MATLAB v7.3 (HDF5) files are not supported; save it with "
                           "`save(..., '-v7')`")
    indicator = data[126:128]
    if indicator not in (b"IM", b"MI"):
        raise MatFileError("not a MATLAB v5 MAT-file (no endian indicator at bytes 126-127)")
    reader = _Reader(data, "<" if indicator == b"IM" else ">")
    version = int(np.frombuffer(data, reader.byte_order + "u2", 1, 124)[0])
    if version != 0x0100:
        raise MatFileError(f"MAT-file version {version:#06x}, expected 0x0100 (v5)")
    variables: dict[str, np.ndarray] = {}
    _variables(reader, _HEADER_BYTES, len(data), variables)
    return variables


def read_mat(path: Path) -> dict[str, np.ndarray]:
    """`parse_mat` of a file; raises MatFileError (problem only) or OSError."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise MatFileError(f"{size} bytes, larger than this reader accepts ({MAX_BYTES})")
    return parse_mat(path.read_bytes())
