"""Our checkpoint format, conversion of official files, safe loading."""

from __future__ import annotations

import copy
import json
import pickle
import re

import numpy as np
import pytest
import torch

from spiga.checkpoint import build_model, convert_official, load_checkpoint, load_official_state_dict, save_checkpoint
from spiga.errors import CheckpointError
from spiga.landmarks import IBUG_68, WFLW_98
from spiga.model import ModelConfig
from spiga.testing import random_checkpoint, random_model


def test_round_trip_keeps_everything(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)
    assert loaded.landmarks == WFLW_98
    assert loaded.config == ModelConfig.sized("tiny", 98, 15)
    assert loaded.metadata["version"] == 1
    assert loaded.model.mean_face_3d.abs().sum() > 0
    again = tiny_checkpoint.parent / "again.safetensors"
    save_checkpoint(again, loaded.model, loaded.landmarks)
    second = load_checkpoint(again)
    for (k, a), (_, b) in zip(loaded.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.equal(loaded.model.mean_face_3d, second.model.mean_face_3d)


def test_truncated_file_is_named(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 10):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"cut{cut}.safetensors"):
            load_checkpoint(bad)


def test_corrupted_header_is_refused(tiny_checkpoint, tmp_path):
    data = bytearray(tiny_checkpoint.read_bytes())
    data[10:30] = b"#" * 20
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        load_checkpoint(bad)


def test_wrong_shapes_are_reported(tmp_path):
    path = random_checkpoint(tmp_path / "m.safetensors", "tiny", IBUG_68)
    # a header that promises a different size than the tensors have
    import json
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        header = json.loads(handle.metadata()["spiga"])
    header["model_config"]["embed_dim"] = 32  # smaller than stored: the shapes, not the count, disagree
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata={"spiga": json.dumps(header)})
    with pytest.raises(CheckpointError, match=r"bad.safetensors: weights do not fit the model: .*wrong shape"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_missing_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def test_pickle_checkpoint_is_pointed_to_convert(tmp_path):
    path = tmp_path / "official.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="spiga convert"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_code_carrying_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_official_state_dict(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError, match="raw.pt"):
        load_official_state_dict(raw)


def test_truncated_official_file(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="w.pt: corrupt or truncated"):
        load_official_state_dict(path)


def _write_mean_face(path, landmarks, seed=0):
    rng = np.random.default_rng(seed)
    lines = [f"{i}|{x}|{y}|{z}" for i, (x, y, z) in zip(landmarks.ids, rng.normal(size=(landmarks.num_landmarks, 3)))]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_convert_checks_layout_constants(tmp_path):
    config = ModelConfig.sized("tiny", 98, 15)
    state = random_model("tiny", WFLW_98)[0].state_dict()
    torch.save(state, tmp_path / "ok.pt")
    mean_face = _write_mean_face(tmp_path / "mf.txt", WFLW_98)
    out = convert_official(tmp_path / "ok.pt", "wflw", mean_face, tmp_path / "ok.safetensors", config)
    assert load_checkpoint(out).landmarks == WFLW_98
    state["visual_cnn.E2Ptransform.edge2point"] = torch.ones_like(state["visual_cnn.E2Ptransform.edge2point"])
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="edge2point differs"):
        convert_official(tmp_path / "other.pt", "wflw", mean_face, tmp_path / "x.safetensors", config)


def test_convert_rejects_mean_face_for_another_layout(tmp_path):
    from spiga.errors import SpigaError

    config = ModelConfig.sized("tiny", 98, 15)
    torch.save(random_model("tiny", WFLW_98)[0].state_dict(), tmp_path / "w.pt")
    mean_face = _write_mean_face(tmp_path / "mf68.txt", IBUG_68)
    with pytest.raises(SpigaError, match="mf68.txt: mean face has 68 points but lacks ids"):
        convert_official(tmp_path / "w.pt", "wflw", mean_face, tmp_path / "x.safetensors", config)


# --------------------------------------------------------------------------- malformed headers


@pytest.fixture(scope="module")
def stored(tiny_checkpoint):
    """(tensors, header) of the tiny checkpoint, to write variants of."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(tiny_checkpoint), "pt") as handle:
        header = json.loads(handle.metadata()["spiga"])
    return load_file(str(tiny_checkpoint)), header


def _with_header(path, tensors, header) -> str:
    from safetensors.torch import save_file

    text = header if isinstance(header, str) else json.dumps(header)
    save_file(tensors, str(path), metadata={"spiga": text})
    return str(path)


def _changed(header: dict, change) -> dict:
    header = copy.deepcopy(header)
    change(header)
    return header


def _set(section: str | None, key: str, value):
    def change(header):
        (header[section] if section else header)[key] = value
    return change


def _drop(key: str):
    return lambda header: header.pop(key)


MALFORMED_HEADERS = {
    "json-list": ('[1, 2, 3]', r"header 'spiga' is a list, expected a JSON object"),
    "json-string": ('"spiga"', r"header 'spiga' is a string, expected a JSON object"),
    "not-json": ('{"format": ', r"header 'spiga', line 1: invalid JSON"),
    "deep-json": ('[' * 100_000 + ']' * 100_000, r"header 'spiga': JSON that cannot be read"),
    "version-string": (_set(None, "version", "1"), r"header field 'version' must be an integer, got a string"),
    "version-float": (_set(None, "version", 1.0), r"header field 'version' must be an integer, got a number"),
    "version-bool": (_set(None, "version", True), r"header field 'version' must be an integer, got a boolean"),
    "version-zero": (_set(None, "version", 0), r"header field 'version' is 0; versions start at 1"),
    "version-newer": (_set(None, "version", 99), r"format version 99 is newer .*upgrade spiga"),
    "version-missing": (_drop("version"), r"header field 'version' is missing"),
    "format-missing": (_drop("format"), r"header field 'format' is missing"),
    "format-other": (_set(None, "format", ["x"]), r"header field 'format' is \['x'\], expected 'spiga-checkpoint'"),
    "config-missing": (_drop("model_config"), r"header field 'model_config' is missing"),
    "config-list": (_set(None, "model_config", [256]), r"header field 'model_config' is a list, expected a JSON"),
    "config-huge-channels": (_set("model_config", "channels", 10**6),
                             r"'model_config': .*channels = 1000000 is outside the supported range 2\.\.512"),
    "config-huge-landmarks": (_set("model_config", "num_landmarks", 10**9),
                              r"'model_config': .*num_landmarks = 1000000000 is outside .*2\.\.1000"),
    "config-huge-stacks": (_set("model_config", "num_stacks", 2**40), r"num_stacks = 1099511627776 is outside"),
    "config-huge-widths": (_set("model_config", "decoder_hidden", [4096] * 3),
                           r"decoder_hidden = \[4096, 4096, 4096\]: every width must be an integer in 1\.\.1024"),
    "config-many-layers": (_set("model_config", "shape_hidden", [8] * 1000),
                           r"shape_hidden must be a list of 1 to 8 integers"),
    "config-string-size": (_set("model_config", "image_size", "128"),
                           r"'model_config': .*image_size must be an integer, got '128'"),
    "config-nan-scale": (_set("model_config", "window_scale", float("nan")),
                         r"window_scale = nan is outside the supported range"),
    "config-unknown-field": (_set("model_config", "layers", 3), r"'model_config': .*unknown fields \['layers'\]"),
    "config-bigger-than-file": (_set("model_config", "channels", 512),
                                r"describes a network of \d+ parameters, but the file holds only \d+ values"),
    "landmarks-missing": (_drop("landmarks"), r"header field 'landmarks' is missing"),
    "landmarks-number": (_set(None, "landmarks", 98), r"header field 'landmarks' is an integer, expected"),
    "landmarks-bad-ids": (_set("landmarks", "ids", ["x"] * 98), r"header field 'landmarks': .*malformed"),
    "landmarks-infinite": (_set("landmarks", "ids", [float("inf")] * 98), r"header field 'landmarks'"),
    "landmarks-other-count": (_set("model_config", "num_landmarks", 68),
                              r"header fields 'model_config' \(68 points.*'landmarks' \(98 points.*disagree"),
    "preprocessing-list": (_set(None, "preprocessing", [1.6]), r"'preprocessing': preprocessing must be a JSON"),
    "preprocessing-bad-rule": (_set("preprocessing", "depth_scaling", "gamma:2"),
                               r"'preprocessing': depth scaling 'gamma:2'"),
    "preprocessing-other-size": (_set("preprocessing", "crop_size", 256),
                                 r"'preprocessing': preprocessing crop_size 256 differs .* input size 128"),
    "preprocessing-bilinear": (_set("preprocessing", "interpolation", "cubic"),
                               r"'preprocessing': .*interpolation must be one of nearest"),
    "preprocessing-huge-enlarge": (_set("preprocessing", "enlarge", 1e9), r"enlarge must be a number in 0\.1\.\.10"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_HEADERS))
def test_malformed_headers_name_the_file_and_the_field(tmp_path, stored, case):
    tensors, header = stored
    change, problem = MALFORMED_HEADERS[case]
    text = change if isinstance(change, str) else json.dumps(_changed(header, change))
    path = _with_header(tmp_path / f"{case}.safetensors", tensors, text)
    with pytest.raises(CheckpointError, match=re.escape(path) + ": .*" + problem) as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_files_that_are_no_checkpoint(tmp_path, stored, tiny_checkpoint):
    from safetensors.torch import save_file

    tensors, header = stored
    cases = {
        "text.safetensors": (b"just some text, not a checkpoint at all\n", "not a safetensors file"),
        "zeros.safetensors": (bytes(64), "not a safetensors file"),
        "huge-header.safetensors": ((2**62).to_bytes(8, "little") + b"{}", "not a safetensors file"),
        "tiny.safetensors": (b"\x01\x02", "too short to be a checkpoint"),
        "cut.safetensors": (tiny_checkpoint.read_bytes()[:-1000], "truncated"),
    }
    for name, (data, problem) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name}: .*{problem}"):
            load_checkpoint(tmp_path / name)
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="plain.safetensors: safetensors file without a spiga header"):
        load_checkpoint(tmp_path / "plain.safetensors")
    without_face = {k: v for k, v in tensors.items() if k != "spiga.mean_face_3d"}
    _with_header(tmp_path / "faceless.safetensors", without_face, header)
    with pytest.raises(CheckpointError, match="faceless.safetensors: no 3D mean face stored"):
        load_checkpoint(tmp_path / "faceless.safetensors")


def test_checkpoint_is_memory_mapped_not_read_whole(tiny_checkpoint, monkeypatch):
    from pathlib import Path

    def no_whole_reads(self, *args, **kwargs):
        raise AssertionError("the checkpoint was read into memory whole")

    monkeypatch.setattr(Path, "read_bytes", no_whole_reads)
    assert load_checkpoint(tiny_checkpoint).config == ModelConfig.sized("tiny", 98, 15)


@pytest.mark.parametrize("case", ["json-list", "version-string", "config-huge-channels", "config-missing",
                                  "truncated", "not-safetensors"])
def test_cli_align_with_a_malformed_checkpoint_exits_2_with_one_line(tmp_path, stored, tiny_checkpoint, capsys,
                                                                    case):
    import cv2

    from spiga.cli import main

    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 90, np.uint8))
    model = tmp_path / "BAD.safetensors"
    tensors, header = stored
    if case == "truncated":
        model.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 3])
    elif case == "not-safetensors":
        model.write_text("<html>404 Not Found</html>")
    else:
        change = MALFORMED_HEADERS[case][0]
        _with_header(model, tensors, change if isinstance(change, str) else json.dumps(_changed(header, change)))
    code = main(["align", str(image), "--model", str(model), "--box", "8", "8", "40", "40", "--device", "cpu",
                 "--detector", "none"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("spiga: error: ") and str(model) in err, err


def test_model_config_bounds_cover_every_named_size():
    from spiga.model.config import BOUNDS, MODEL_SIZES

    for size in MODEL_SIZES:
        for landmarks, edges in ((98, 15), (68, 13), (5, 2)):
            ModelConfig.sized(size, landmarks, edges)  # no error
    assert ModelConfig.official().channels * 2 <= BOUNDS["channels"][1]
    from spiga.errors import SpigaError

    with pytest.raises(SpigaError, match="num_stacks = 9 is outside the supported range 1..8"):
        ModelConfig(num_stacks=9)
    with pytest.raises(SpigaError, match="channels must be an integer, got True"):
        ModelConfig(channels=True)


# --------------------------------------------------------------------------- preprocessing


def test_preprocessing_round_trips_through_a_checkpoint(tmp_path):
    """The preprocessing object is saved with the weights and read back equal."""
    from dataclasses import replace

    from spiga.io import DepthScaling
    from spiga.preprocess import Preprocessing

    config = ModelConfig.sized("tiny", 98, 15)
    preprocessing = Preprocessing(config.image_size, enlarge=1.4, focal_ratio=2.0,
                                  depth_scaling=DepthScaling.parse("range:29315:31315"))
    model = build_model(config.with_preprocessing(preprocessing), WFLW_98)
    path = save_checkpoint(tmp_path / "p.safetensors", model, WFLW_98)
    loaded = load_checkpoint(path)
    assert loaded.config.preprocessing == preprocessing
    assert Preprocessing.from_dict(loaded.metadata["preprocessing"]) == preprocessing
    assert Preprocessing.from_dict(json.loads(json.dumps(preprocessing.to_dict()))) == preprocessing
    assert replace(preprocessing, depth_scaling=None).to_dict()["depth_scaling"] is None


def test_checkpoint_of_the_earlier_format_loads_with_the_defaults(tmp_path, stored):
    """A header written before the `preprocessing` field (crop and camera sections, a
    top-level depth rule, no preprocessing fields in model_config) loads as it meant."""
    from spiga.io import DepthScaling
    from spiga.preprocess import Preprocessing

    tensors, header = stored
    old = copy.deepcopy(header)
    del old["preprocessing"]
    for name in ("crop_interpolation", "depth_scaling"):
        del old["model_config"][name]
    size = old["model_config"]["image_size"]
    old["crop"] = {"size": size, "enlarge": old["model_config"]["crop_enlarge"]}
    old["camera"] = {"focal_ratio": old["model_config"]["focal_ratio"], "feature_size": size // 4}
    plain = load_checkpoint(_with_header(tmp_path / "old.safetensors", tensors, old))
    assert plain.config.preprocessing == Preprocessing(crop_size=size)
    old["depth_scaling"] = "percentile:2:98"
    thermal = load_checkpoint(_with_header(tmp_path / "old-thermal.safetensors", tensors, old))
    assert thermal.config.preprocessing == Preprocessing(crop_size=size,
                                                         depth_scaling=DepthScaling("percentile", 2.0, 98.0))
