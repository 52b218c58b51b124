"""spiga.data.formats.matlab: our strict MAT v5 reader agrees with scipy on what scipy writes,
and refuses damaged files with a message instead of crashing."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from packaging.version import Version

from fuzz.targets import split_options
from spiga.data.formats.matlab import MatFileError, parse_mat, read_mat

CORPUS = Path(__file__).parent / "corpus" / "cofw68"


def _saved(variables: dict, compress: bool) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, do_compression=compress)
    return buffer.getvalue()


@pytest.mark.parametrize("compress", [False, True])
def test_reads_what_scipy_writes(compress: bool) -> None:
    rng = np.random.default_rng(0)
    variables = {
        "Points": rng.uniform(0, 500, (68, 2)),
        "Occ": (rng.uniform(size=(68, 1)) > 0.5).astype(np.uint8),
        "bboxes": rng.integers(-5, 400, (7, 4)).astype(np.int32),
        "single": rng.normal(size=(3, 4, 2)).astype(np.float32),
        "flag": np.array([[True, False, True]]),
        "big": np.array([[2**40, -(2**40)]], dtype=np.int64),
        "empty": np.zeros((0, 2)),
        "label": "a string variable is skipped",
        "cell": np.array([[1, "x"]], dtype=object),
        "nested": {"a": 1.0},
    }
    ours = parse_mat(_saved(variables, compress))
    theirs = scipy.io.loadmat(io.BytesIO(_saved(variables, compress)))
    assert set(ours) == {"Points", "Occ", "bboxes", "single", "flag", "big", "empty"}
    for name, value in ours.items():
        assert value.dtype == np.float64
        np.testing.assert_array_equal(value, np.asarray(theirs[name], dtype=np.float64), err_msg=name)


@settings(max_examples=40, deadline=None)
@given(array=hnp.arrays(hnp.floating_dtypes(sizes=(32, 64), endianness="="),
                        hnp.array_shapes(min_dims=2, max_dims=4, min_side=0, max_side=5)),
       compress=st.booleans())
def test_matches_scipy_on_random_arrays(array: np.ndarray, compress: bool) -> None:
    ours = parse_mat(_saved({"x": array}, compress))["x"]
    theirs = scipy.io.loadmat(io.BytesIO(_saved({"x": array}, compress)))["x"]
    np.testing.assert_array_equal(ours, theirs.astype(np.float64))


def _big_endian_file() -> bytes:
    """A 2 x 3 double matrix `M` = [[1, 2, 3], [4, 5, 6]] written by hand in big-endian order."""
    def element(data_type: int, payload: bytes) -> bytes:
        return struct.pack(">II", data_type, len(payload)) + payload + b"\0" * (-len(payload) % 8)

    body = (element(6, struct.pack(">II", 6, 0))          # array flags: class double
            + element(5, struct.pack(">ii", 2, 3))         # dimensions
            + struct.pack(">HH", 1, 1) + b"M\0\0\0"          # small element: the name
            + element(9, struct.pack(">6d", 1, 4, 2, 5, 3, 6)))  # column-major values
    header = b"MATLAB 5.0 MAT-file, written by hand".ljust(116) + b"\0" * 8 + b"\x01\x00MI"
    return header + element(14, body)


def test_big_endian_column_major_and_small_elements() -> None:
    np.testing.assert_array_equal(parse_mat(_big_endian_file())["M"], [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("damage, problem", [
    (lambda d: d[:100], "shorter than the 128-byte"),
    (lambda d: d[:-8], "declares .* bytes"),
    (lambda d: d[:126] + b"XX" + d[128:], "no endian indicator"),
    (lambda d: b"MATLAB 7.3 MAT-file".ljust(128, b" ") + d[128:], "v7.3"),
    (lambda d: d[:128] + struct.pack(">I", 8) + d[132:], "data type 8, expected a matrix"),
    (lambda d: d[:-56] + struct.pack(">II", 9, 40) + d[-48:], "holds 5 values"),
])
def test_damaged_files_are_refused_with_the_problem(damage, problem: str) -> None:
    with pytest.raises(MatFileError, match=problem):
        parse_mat(damage(_big_endian_file()))


def test_compressed_garbage_is_refused() -> None:
    data = bytearray(_saved({"Points": np.ones((68, 2))}, compress=True))
    data[140:150] = b"\xff" * 10
    with pytest.raises(MatFileError, match="compressed element"):
        parse_mat(bytes(data))


def test_truncated_compressed_stream_is_refused() -> None:
    data = _saved({"Points": np.arange(136.0).reshape(68, 2)}, compress=True)
    count = int(np.frombuffer(data, "<u4", 1, 132)[0])
    cut = data[:136 + count - 4]  # the stream loses its last 4 bytes; the tag is made to agree
    cut = cut[:132] + np.array([count - 4], "<u4").tobytes() + cut[136:]
    with pytest.raises(MatFileError, match="truncated"):
        parse_mat(cut)


def _crash_findings() -> list[Path]:
    findings = sorted(CORPUS.glob("case-scipy-crash-*"))
    assert findings, "the kept findings are missing from tests/corpus/cofw68"
    return findings


#: The newest scipy seen crashing on the kept findings; a newer one that does not crash
#: has fixed its reader (the check below then skips instead of failing).
SCIPY_SEEN_CRASHING = "1.17.1"


def _no_core_dumps() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def test_kept_crash_findings_are_mat_files_behind_the_options_byte() -> None:
    """A corpus file is the options byte, then the file the reader sees; a finding of the
    `all` fuzzer carries one byte more (the target selector), which `fuzz.py keep` strips."""
    for finding in _crash_findings():
        _, content = split_options(finding.read_bytes())
        assert content.startswith(b"MATLAB 5.0 MAT-file"), f"{finding.name} is shifted: {content[:8]!r}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash is shown in a POSIX child process")
def test_scipy_crashes_on_the_kept_findings_and_we_refuse_them(tmp_path: Path) -> None:
    """The very bytes scipy.io.loadmat dies on (a signal, so a negative return code) are
    refused here with a message."""
    from spiga.data.formats import READERS
    from spiga.data.sample import BadEntries
    from spiga.errors import DatasetError

    for finding in _crash_findings():
        _, content = split_options(finding.read_bytes())
        folder = tmp_path / finding.name
        folder.mkdir()
        path = folder / "1_points.mat"
        path.write_bytes(content)
        with pytest.raises(MatFileError):
            read_mat(path)
        with pytest.raises(DatasetError, match=r"1_points.mat: not a readable MATLAB file"):
            READERS["cofw68"].read(folder, None, None, BadEntries())
        # what scipy reads past the data depends on the child's memory layout: a few children
        # with fixed, different environments; the first that dies of a signal is the proof
        codes = []
        keep = {name: os.environ[name] for name in ("PATH", "PYTHONPATH", "SYSTEMROOT") if name in os.environ}
        for padding in ("", "x" * 100, "y" * 3000):
            child = subprocess.run([sys.executable, "-c", "import sys, scipy.io; scipy.io.loadmat(sys.argv[1])",
                                    path.name], capture_output=True, timeout=300, cwd=folder, preexec_fn=_no_core_dumps,
                                   env={**keep, "LC_ALL": "C.UTF-8", "PADDING": padding})
            codes.append(child.returncode)
            if child.returncode < 0:
                break
        if child.returncode >= 0 and Version(scipy.__version__) > Version(SCIPY_SEEN_CRASHING):
            pytest.skip(f"scipy {scipy.__version__} no longer crashes on {finding.name}: its reader was fixed")
        assert child.returncode < 0, (f"scipy {scipy.__version__} did not crash on {finding.name} (exits "
                                      f"{codes}: {child.stderr.decode()[-300:]})")
