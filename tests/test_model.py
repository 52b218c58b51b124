"""The network: official layout, configurable sizes, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spiga.checkpoint import build_model
from spiga.errors import SpigaError
from spiga.landmarks import IBUG_68, WFLW_98
from spiga.model import SPIGA, ModelConfig, official_to_own, own_to_official
from spiga.model.cascade import feature_table

from conftest import shared_path


@pytest.mark.parametrize("landmarks", [WFLW_98, IBUG_68], ids=["98", "68"])
def test_official_state_dict_layout(landmarks):
    """In the official layout, every key, shape and dtype of the official checkpoints, and
    nothing else; and an official state_dict loads strictly and maps back unchanged."""
    rows = shared_path("fixtures", "equivalence", f"state_dict_keys_{landmarks.num_landmarks}.tsv").read_text()
    expected = {}
    for row in rows.splitlines()[1:]:
        key, shape, dtype = row.split("\t")
        expected[key] = (tuple(int(s) for s in shape.split(",") if s), dtype)
    config = ModelConfig.official(landmarks.num_landmarks, landmarks.num_edges)
    model = SPIGA(config, torch.from_numpy(landmarks.edge_matrix()))
    official = own_to_official(model.state_dict(), config.channels, config.window_kernel)
    got = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in official.items()}
    assert got == expected
    # an official file's tensors (made distinct here) load strictly into a fresh model ...
    torch.manual_seed(0)
    official = {k: torch.rand_like(v, dtype=torch.float32).to(v.dtype) if v.is_floating_point() else v
                for k, v in official.items()}
    fresh = SPIGA(config, torch.from_numpy(landmarks.edge_matrix()))
    fresh.load_state_dict(official, strict=True)
    # ... and come back out, bit for bit, in the official layout
    back = own_to_official(fresh.state_dict(), config.channels, config.window_kernel)
    assert back.keys() == official.keys()
    assert all(torch.equal(back[k], official[k]) for k in official)


def test_layout_conversion_is_idempotent():
    config = ModelConfig.sized("tiny", 20, 3)
    model = SPIGA(config, torch.zeros(20, 4))
    state = model.state_dict()
    converted = dict(state)
    official_to_own(converted)  # already in the model's layout: nothing to do
    assert converted.keys() == state.keys() and all(converted[k] is state[k] for k in state)


def test_incomplete_official_projections_are_reported():
    config = ModelConfig.sized("tiny", 20, 3)
    model = SPIGA(config, torch.zeros(20, 4))
    official = own_to_official(model.state_dict(), config.channels, config.window_kernel)
    del official["gcn.0.gat.0.attention.attn.proj.2.weight"]
    with pytest.raises(RuntimeError, match="proj.0.weight|qkv.weight"):
        SPIGA(config, torch.zeros(20, 4)).load_state_dict(official, strict=True)


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


def _grid_sample_windows(points, features, offsets, weight, bias):
    """The official window features: an affine_grid window per point through grid_sample
    (border padding, align_corners=False) and the K x K window convolution."""
    batch, num_points, _ = points.shape
    channels, size = features.shape[1], features.shape[-1]
    kernel = offsets.shape[0]
    scale = offsets[-1] / ((kernel - 1) / kernel) / (size / 2)  # affine_grid's theta scale
    centres = (points + 0.5 / size) * 2 - 1
    theta = torch.zeros(batch * num_points, 2, 3, dtype=points.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = centres.reshape(-1, 2)
    grid = F.affine_grid(theta, [batch * num_points, channels, kernel, kernel], align_corners=False)
    grid = grid.view(batch, num_points * kernel, kernel, 2)
    windows = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    windows = windows.view(batch, channels, num_points, kernel, kernel).permute(0, 2, 1, 3, 4)
    return torch.einsum("blckm,dckm->bld", windows, weight) + bias


@pytest.mark.parametrize("sampler", ["embedding_bag", "gather"])
def test_window_sampler_is_grid_sample_with_border_padding(sampler):
    """The model's window reading equals affine_grid + grid_sample + Conv2d (the official
    computation), values and gradients, border padding included (windows past every edge)."""
    torch.manual_seed(2)
    config = ModelConfig.sized("tiny", 20, 3)
    model = SPIGA(config, torch.zeros(20, 4)).double()
    model.window_sampler = sampler
    size, channels, kernel = config.feature_size, config.channels, config.window_kernel
    features = torch.randn(2, channels, size, size, dtype=torch.float64, requires_grad=True)
    points = torch.rand(2, 20, 2, dtype=torch.float64) * 1.4 - 0.2
    points[0, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-0.5, 0.5], [0.999, 0.001]])
    points.requires_grad_(True)
    official = model.state_dict()
    from spiga.model import own_to_official

    official = own_to_official(official, channels, kernel)
    for step in range(config.cascade_steps):
        weight, bias = official[f"conv_window.{step}.weight"], official[f"conv_window.{step}.bias"]
        expected = _grid_sample_windows(points, features, model.window_offsets(step), weight, bias)
        got = model.window_features(points, feature_table(features), step)
        assert (got - expected).abs().max() < 1e-9
        # gradients away from the samples placed exactly on the border (where the function has
        # a kink and each implementation picks a one-sided derivative)
        probe = torch.randn_like(got)
        probe[0, :4] = 0
        grads = torch.autograd.grad((got * probe).sum(), (points, features))
        expected_grads = torch.autograd.grad((expected * probe).sum(), (points, features))
        for ours, theirs in zip(grads, expected_grads):
            assert (ours - theirs).abs().max() < 1e-8 * max(1.0, theirs.abs().max().item())


def test_cascade_trains_through_the_window_positions():
    """Gradients reach earlier cascade steps through the later steps' sampling positions (as
    grid_sample's grid gradient does in the original)."""
    torch.manual_seed(3)
    config = ModelConfig.sized("tiny", 20, 3)
    model = SPIGA(config, torch.zeros(20, 4), torch.randn(20, 3) * 0.3).train()
    out = model(torch.rand(2, 3, config.image_size, config.image_size))
    out["landmarks"][-1].sum().backward()
    assert model.gcn[0].decoder.decoder[-1].weight.grad.abs().sum() > 0
    assert model.conv_window[0].weight.grad.abs().sum() > 0
