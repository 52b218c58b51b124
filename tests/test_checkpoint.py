"""Our checkpoint format, conversion of official files, safe loading."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from spiga.checkpoint import build_model, convert_official, load_checkpoint, load_official_state_dict, save_checkpoint
from spiga.errors import CheckpointError
from spiga.landmarks import IBUG_68, WFLW_98
from spiga.model import ModelConfig


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
    model = build_model(ModelConfig.sized("tiny", 68, 13), IBUG_68)
    path = save_checkpoint(tmp_path / "m.safetensors", model, IBUG_68)
    # a header that promises a different size than the tensors have
    import json
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        header = json.loads(handle.metadata()["spiga"])
    header["model_config"]["embed_dim"] = 96
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
    model = build_model(config, WFLW_98)
    state = model.state_dict()
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
    torch.save(build_model(config, WFLW_98).state_dict(), tmp_path / "w.pt")
    mean_face = _write_mean_face(tmp_path / "mf68.txt", IBUG_68)
    with pytest.raises(SpigaError, match="mf68.txt: mean face has 68 points but lacks ids"):
        convert_official(tmp_path / "w.pt", "wflw", mean_face, tmp_path / "x.safetensors", config)
