"""The network: official layout, configurable sizes, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spiga.checkpoint import build_model
from spiga.errors import SpigaError
from spiga.landmarks import IBUG_68, WFLW_98
from spiga.model import SPIGA, ModelConfig

from conftest import shared_path


@pytest.mark.parametrize("landmarks", [WFLW_98, IBUG_68], ids=["98", "68"])
def test_official_state_dict_layout(landmarks):
    """Every key, shape and dtype of the official checkpoints, and nothing else."""
    rows = shared_path("fixtures", "equivalence", f"state_dict_keys_{landmarks.num_landmarks}.tsv").read_text()
    expected = {}
    for row in rows.splitlines()[1:]:
        key, shape, dtype = row.split("\t")
        expected[key] = (tuple(int(s) for s in shape.split(",") if s), dtype)
    with torch.device("meta"):
        model = SPIGA(ModelConfig.official(landmarks.num_landmarks, landmarks.num_edges),
                      torch.from_numpy(landmarks.edge_matrix()))
    got = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}
    assert got == expected


def test_official_parameter_count():
    with torch.device("meta"):
        model = SPIGA(ModelConfig.official(98, 15), torch.zeros(98, 16))
    count = sum(p.numel() for p in model.parameters())
    assert 60e6 < count < 66e6  # the paper's 63.3M parameters (buffers not counted)


@pytest.mark.parametrize("size", ["tiny", "small"])
@pytest.mark.parametrize("num_landmarks", [54, 98])
def test_variant_forward_shapes(size, num_landmarks):
    torch.manual_seed(0)
    config = ModelConfig.sized(size, num_landmarks, 5)
    model = SPIGA(config, torch.zeros(num_landmarks, 6)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, config.image_size, config.image_size))
    assert out["pose"].shape == (2, 6)
    assert len(out["landmarks"]) == config.cascade_steps
    for step in out["landmarks"]:
        assert step.shape == (2, num_landmarks, 2)
        assert torch.isfinite(step).all()


def test_cascade_offsets_are_bounded():
    """Each step moves a point by at most window_scale / 2**step / 2 (hardtanh bound)."""
    torch.manual_seed(1)
    config = ModelConfig.sized("tiny", 20, 3)
    model = SPIGA(config, torch.zeros(20, 4), torch.randn(20, 3) * 0.3).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 3, config.image_size, config.image_size))
    previous = out["projected"]
    for step, points in enumerate(out["landmarks"]):
        bound = config.window_scale / 2 ** step / 2
        assert (points - previous).abs().max() <= bound + 1e-6
        previous = points


def test_training_mode_returns_every_stack():
    torch.manual_seed(2)
    config = ModelConfig.sized("small", 10, 2)
    model = SPIGA(config, torch.zeros(10, 3)).train()
    out = model(torch.rand(2, 3, 256, 256))
    assert len(out["backbone"]["core"]) == 1
    assert len(out["backbone"]["points"]) == config.num_stacks - 1
    out["landmarks"][-1].sum().backward()
    # the cascade trains the CNN through its windows, not the pose head through the projection
    assert model.pose_fc.weight.grad is None
    assert model.visual_cnn.hgs[-1].up1.conv1.conv.weight.grad is not None
    out = model(torch.rand(2, 3, 256, 256))
    out["pose"].sum().backward()
    assert model.pose_fc.weight.grad is not None


def test_invalid_configs_are_refused():
    with pytest.raises(SpigaError, match="image_size"):
        ModelConfig(image_size=200)
    with pytest.raises(SpigaError, match="unknown model size"):
        ModelConfig.sized("huge", 98, 15)
    with pytest.raises(SpigaError, match="landmark set"):
        build_model(ModelConfig.official(68, 13), WFLW_98)


def test_mean_face_shape_is_checked():
    model = SPIGA(ModelConfig.sized("tiny", 10, 2), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="mean face"):
        model.set_mean_face(torch.zeros(9, 3))
    model.set_mean_face(np.zeros((10, 3)))
