"""Property-based tests of every file reader: any input gives a result or spiga's own error.

The targets are those of the atheris fuzzer (tests/fuzz/targets.py): each writes the
input where its reader expects a file and reads it; `run_target` lets only `SpigaError`
through as a refusal, and stops an input that runs past its hang bound. Inputs are
random bytes and structures close to each format (so that the deeper checks are
reached), and the kept corpus of tricky inputs in tests/corpus/<target>/.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fuzz.targets import TARGETS, as_json_bytes, run_target

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "corpus"

#: Examples per test; SPIGA_FUZZ_EXAMPLES=2000 for a longer hunt by hand.
FUZZ = settings(max_examples=int(os.environ.get("SPIGA_FUZZ_EXAMPLES", "40")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def quiet_skip_warnings():
    logging.disable(logging.WARNING)  # skip_bad warns per bad entry
    yield
    logging.disable(logging.NOTSET)


flags = st.integers(0, 15)

# --------------------------------------------------------------------------- building blocks

numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 1e999, -1e999, 10**400, 1e-320, 2**63]))
number_text = st.one_of(numbers.map(str), st.sampled_from(["nan", "inf", "-inf", "1e999", "", "x", "-1", "0x10",
                                                           "١٢", "1_000", " 3 ", "9" * 5000]))
json_leaf = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_values = st.recursive(json_leaf, lambda children: st.one_of(
    st.lists(children, max_size=6), st.dictionaries(st.text(max_size=8), children, max_size=5)), max_leaves=30)
paths = st.sampled_from(["a.jpg", "img/b.png", "../outside.jpg", "/etc/passwd", "a/../../b.jpg", "", ".", "..",
                         "a\x00b.jpg", "C:\\x.jpg", "ünï.jpg"])


def point_lists(count: st.SearchStrategy[int]) -> st.SearchStrategy[list]:
    return count.flatmap(lambda n: st.lists(st.one_of(st.lists(numbers, min_size=2, max_size=2), json_leaf,
                                                      st.lists(numbers, max_size=3)), min_size=n, max_size=n))


near_counts = st.sampled_from([0, 1, 4, 5, 6, 67, 68, 69, 98])


def lines(strategy, max_size: int = 6) -> st.SearchStrategy[str]:
    return st.lists(strategy, max_size=max_size).map("\n".join)


def with_flags(text_strategy) -> st.SearchStrategy[bytes]:
    return st.tuples(flags, text_strategy).map(lambda t: bytes([t[0]]) + t[1].encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------- format-shaped inputs

spiga_entry = st.fixed_dictionaries({}, optional={
    "imgpath": st.one_of(paths, json_leaf), "bbox": st.one_of(st.lists(numbers, max_size=5), json_values),
    "headpose": st.one_of(st.lists(numbers, max_size=7), json_values),
    "ids": st.one_of(st.lists(st.one_of(st.integers(-2, 120), json_leaf), max_size=70), json_values),
    "landmarks": st.one_of(point_lists(near_counts), json_values),
    "visible": st.one_of(st.lists(st.one_of(numbers, json_leaf), max_size=70), json_values),
})
custom_entry = st.fixed_dictionaries({}, optional={
    "image": st.one_of(paths, json_leaf), "landmarks": st.one_of(point_lists(st.sampled_from([4, 5, 6])), json_values),
    "box": st.one_of(st.lists(numbers, max_size=5), json_values), "visible": st.lists(json_leaf, max_size=6),
    "headpose": st.lists(numbers, max_size=7), "tags": st.one_of(st.lists(st.text(max_size=5), max_size=3), json_values),
})
align_face = st.fixed_dictionaries({}, optional={
    "box": st.one_of(st.lists(numbers, max_size=5), json_values),
    "landmarks": st.one_of(point_lists(st.sampled_from([4, 5, 6])), json_values),
    "headpose": st.one_of(st.dictionaries(st.sampled_from(["yaw", "pitch", "roll", "tx", "ty", "tz"]),
                                          st.one_of(numbers, json_leaf)), json_values),
})
align_doc = st.fixed_dictionaries({"images": st.lists(st.fixed_dictionaries({}, optional={
    "path": st.one_of(paths, json_leaf), "width": json_leaf, "height": json_leaf,
    "faces": st.one_of(st.lists(align_face, max_size=3), json_values)}), max_size=3)})
db_info_doc = st.fixed_dictionaries({}, optional={
    "norm": st.one_of(st.dictionaries(st.text(max_size=6), st.one_of(numbers, json_leaf), max_size=3), json_values),
    "test_subsets": st.one_of(st.dictionaries(st.text(max_size=6), st.one_of(
        st.lists(st.one_of(st.integers(-3, 10), json_leaf), max_size=4), json_values), max_size=3), json_values)})
box_doc = st.one_of(
    st.lists(st.lists(numbers, max_size=6), max_size=4),
    st.fixed_dictionaries({"bbox": st.one_of(st.lists(numbers, max_size=6), json_values)},
                          optional={"score": st.one_of(numbers, json_leaf)}),
    st.fixed_dictionaries({"boxes": json_values}),
    st.dictionaries(paths, st.one_of(st.lists(st.lists(numbers, max_size=5), max_size=3), json_values), max_size=3),
    json_values)
landmark_set_doc = st.fixed_dictionaries({}, optional={
    "name": json_leaf, "points": st.one_of(st.lists(st.text(max_size=4), max_size=8), json_values),
    "num_points": st.one_of(st.integers(-2, 12), json_leaf, st.just(10**12)),
    "ids": st.one_of(st.lists(st.integers(-2, 12), max_size=8), json_values),
    "mirror_pairs": st.one_of(st.lists(st.lists(st.integers(-2, 12), max_size=3), max_size=4), json_values),
    "edges": st.one_of(st.dictionaries(st.text(max_size=5), st.lists(st.integers(-2, 12), max_size=6), max_size=3),
                       json_values),
    "eye_corners": st.one_of(st.lists(st.integers(-2, 12), max_size=3), json_values),
    "eyes": st.one_of(st.lists(st.lists(st.integers(-2, 12), max_size=4), max_size=3), json_values)})

pts_text = st.tuples(
    st.sampled_from(["version: 1\n", "", "version 1\n"]),
    st.one_of(st.integers(-1, 70).map(lambda n: f"n_points: {n}\n"), st.sampled_from(["n_points:\n", "n_points: x\n",
                                                                                       "n_points: 1e3\n", ""])),
    st.sampled_from(["{\n", "", "{ \n"]),
    lines(st.tuples(number_text, number_text).map(" ".join), max_size=70),
    st.sampled_from(["\n}\n", "", "\n}", "\n} extra\n"]),
).map("".join)
wflw_line = st.tuples(st.lists(number_text, min_size=200, max_size=210), paths).map(lambda t: " ".join(t[0] + [t[1]]))
csv_text = st.tuples(
    st.sampled_from(["image,x0,y0,x1,y1,x2,y2,x3,y3,x4,y4", "image,x0,y0,x1,y1,x2,y2,x3,y3,x4,y4,v0,v1,v2,v3,v4",
                     "image,x0,y0,x1,y1,x2,y2,x3,y3,x4,y4,box_x,box_y,box_w,box_h,tags", "x0,y0", "image,x0",
                     "image,x0,y0,x1,y1,x2,y2,x3,y3,x4,y4,box_x"]),
    lines(st.tuples(paths, st.lists(number_text, max_size=17)).map(lambda t: ",".join([t[0]] + t[1]))),
).map("\n".join)
mean_face_text = lines(st.lists(number_text, min_size=1, max_size=5).map("|".join), max_size=8)
box_text = lines(st.tuples(st.one_of(st.just(""), paths), st.lists(number_text, max_size=6)).map(
    lambda t: " ".join(([t[0]] if t[0] else []) + t[1])))



def _damaged_mat(flags_byte: int, variables: dict, compress: bool, flips: list[tuple[int, int]]) -> bytes:
    """A MAT-file scipy writes, with some bytes overwritten (the damage that crashed scipy's reader)."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, do_compression=compress)
    data = bytearray(buffer.getvalue())
    for position, value in flips:
        data[position % len(data)] = value
    return bytes([flags_byte]) + bytes(data)


mat_file = st.builds(
    _damaged_mat, flags,
    st.dictionaries(st.sampled_from(["Points", "Occ", "bboxes", "x"]),
                    hnp.arrays(st.sampled_from([np.float64, np.float32, np.uint8, np.int32]),
                               hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=70)), max_size=3),
    st.booleans(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4))

SHAPED = {
    "cofw68": mat_file,
    "spiga_json": st.tuples(flags, st.lists(spiga_entry, max_size=4)).map(lambda t: as_json_bytes(t[1], t[0])),
    "eval_json": st.tuples(flags, st.one_of(st.lists(spiga_entry, max_size=4), align_doc)).map(
        lambda t: as_json_bytes(t[1], t[0])),
    "align_json": align_doc.map(as_json_bytes),
    "db_info": db_info_doc.map(as_json_bytes),
    "custom_json": st.tuples(flags, st.lists(custom_entry, max_size=4)).map(lambda t: as_json_bytes(t[1], t[0])),
    "custom_jsonl": with_flags(lines(custom_entry.map(json.dumps), max_size=4)),
    "custom_csv": with_flags(csv_text),
    "box_file": st.one_of(box_doc.map(lambda v: as_json_bytes(v, 8)), with_flags(box_text)),
    "landmark_set": landmark_set_doc.map(as_json_bytes),
    "mean_face": with_flags(mean_face_text),
    "300w": with_flags(pts_text),
    "merlrav": with_flags(pts_text),
    "wflw": with_flags(lines(wflw_line, max_size=3)),
}


# --------------------------------------------------------------------------- the properties


@pytest.mark.parametrize("target", sorted(TARGETS))
@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes_give_a_result_or_a_clear_error(target, data):
    run_target(target, data)


@pytest.mark.parametrize("target", sorted(SHAPED))
@FUZZ
@given(data=st.data())
def test_format_shaped_inputs_give_a_result_or_a_clear_error(target, data):
    run_target(target, data.draw(SHAPED[target]))


@pytest.mark.parametrize("target", sorted(set(SHAPED) & {"spiga_json", "custom_json", "eval_json", "db_info",
                                                         "landmark_set", "align_json", "box_file"}))
@FUZZ
@given(value=json_values, flag=flags)
def test_any_json_value_gives_a_result_or_a_clear_error(target, value, flag):
    run_target(target, as_json_bytes(value, flag | (8 if target == "box_file" else 0)))


def _corpus_cases():
    cases = []
    for folder in sorted(CORPUS.iterdir()) if CORPUS.is_dir() else []:
        if not folder.is_dir():
            continue
        for file in sorted(folder.iterdir()):
            cases.append(pytest.param(folder.name, file, id=f"{folder.name}/{file.name}"))
    return cases


def test_every_target_has_a_corpus():
    assert {folder.name for folder in CORPUS.iterdir() if folder.is_dir()} >= set(TARGETS)


@pytest.mark.parametrize("target, file", _corpus_cases())
def test_corpus_regressions(target, file):
    outcome = run_target(target, file.read_bytes())
    if file.name.startswith("refuse-"):  # inputs that must be refused, not silently accepted
        assert outcome.startswith("refused: "), outcome
    if file.name.startswith("ok-"):  # well-formed inputs: the readers do not refuse everything
        assert outcome == "ok", outcome


def test_atheris_entry_point_runs():
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris): the hypothesis "
                                          "tests above drive the same targets")
    result = subprocess.run([sys.executable, str(REPO / "tests" / "fuzz" / "fuzz.py"), "all", "-runs=300",
                             "-seed=1"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 300 runs" in result.stderr


def test_mat_seeds_hold_the_header_right_after_the_options_byte():
    """A finding of `all` copied by hand into a target's folder is shifted by one byte (its
    target selector); for the MAT-files that shows as a header one byte late."""
    for file in sorted((CORPUS / "cofw68").iterdir()):
        data = file.read_bytes()
        if file.name != "refuse-text":
            assert data[1:7] == b"MATLAB", f"cofw68/{file.name} starts {data[:8]!r}"


def test_keep_strips_the_target_selector_of_all_findings(tmp_path, monkeypatch):
    from fuzz import fuzz

    monkeypatch.setattr(fuzz, "CORPUS", tmp_path)
    (tmp_path / "cofw68").mkdir()
    content = (CORPUS / "cofw68" / "ok-points-and-occlusion").read_bytes()
    finding = tmp_path / "crash-0123"
    finding.write_bytes(bytes([sorted(TARGETS).index("cofw68")]) + content)
    kept = fuzz.keep("all", finding, "case-found-by-all")
    assert kept == tmp_path / "cofw68" / "case-found-by-all" and kept.read_bytes() == content
    assert fuzz.split_all_input(finding.read_bytes(), sorted(TARGETS)) == ("cofw68", content)
    finding.write_bytes(content)
    assert fuzz.keep("cofw68", finding, "ok-found-by-cofw68").read_bytes() == content
    with pytest.raises(ValueError, match="exists already"):
        fuzz.keep("cofw68", finding, "ok-found-by-cofw68")
    with pytest.raises(ValueError, match="start with refuse-, ok- or case-"):
        fuzz.keep("cofw68", finding, "crash-0123")
