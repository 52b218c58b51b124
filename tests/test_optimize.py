"""Inference-only transforms: the optimised copy computes what SPIGA computes."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import spiga
from spiga.checkpoint import build_model, load_checkpoint
from spiga.cli import main as cli
from spiga.errors import SpigaError
from spiga.inference.backends import TorchBackend, batch_bucket
from spiga.inference.optimize import (FusedResidual, InferenceSPIGA, StemConv, fold_batch_norms,
                                      onednn_fusion_available, prepare_for_inference)
from spiga.landmarks import IBUG_68, WFLW_98
from spiga.model import ModelConfig

needs_onednn = pytest.mark.skipif(not onednn_fusion_available(), reason="this torch has no oneDNN fused operators")


def _model(size: str, landmarks, seed: int = 0, negative_scales: bool = False):
    """A random model whose batch norms are not the identity (so that folding is exercised)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = ModelConfig.sized(size, landmarks.num_landmarks, landmarks.num_edges)
    n = landmarks.num_landmarks
    mean_face = np.column_stack([rng.uniform(-0.3, 0.1, n), rng.uniform(-0.8, 0.8, n), rng.uniform(-1, 1, n)])
    model = build_model(config, landmarks, mean_face).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                channels = module.num_features
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(-1.0 if negative_scales else 0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                assert module.weight.shape == (channels,)
        # a plausible pose (the face 3 units in front of the camera), so that the projected
        # mean face is not near-singular and the landmarks stay around the crop
        model.pose_fc.weight.mul_(0.01)
        model.pose_fc.bias.copy_(torch.tensor([5.0, -3.0, 2.0, 0.0, 0.0, 3.0]))
    return model


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(3, 3, 128, 128)


@pytest.mark.parametrize("fuse", [False, pytest.param(True, marks=needs_onednn)], ids=["plain", "fused"])
@pytest.mark.parametrize("sampler", ["embedding_bag", "gather"])
@pytest.mark.parametrize("landmarks, negative", [(WFLW_98, False), (IBUG_68, True)], ids=["98", "68-negative-bn"])
def test_optimised_copy_matches_model(images, fuse, sampler, landmarks, negative):
    model = _model("tiny", landmarks, negative_scales=negative)
    with torch.inference_mode():
        expected = model(images)
        optimised = prepare_for_inference(model, "float32", "cpu", fuse=fuse, sampler=sampler)
        points, pose = optimised(images)
    assert isinstance(optimised, InferenceSPIGA)
    assert points.shape == (3, landmarks.num_landmarks, 2) and pose.shape == (3, 6)
    assert (pose - expected["pose"]).abs().max() < 1e-3
    assert (points - expected["landmarks"][-1]).abs().max() * 128 < 0.01  # crop pixels
    if fuse:
        residuals = [m for m in optimised.modules() if isinstance(m, FusedResidual)]
        assert residuals
        # one-pass pre-activation only where every batch-norm scale is positive
        assert all(r.clamp_only for r in residuals) is not negative


def test_prepare_leaves_the_model_alone(images):
    model = _model("tiny", WFLW_98)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepare_for_inference(model, "float32", "cpu")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("sampler", ["embedding_bag", "gather"])
def test_window_sampling_matches_grid_sample(sampler):
    """The gathered windows + reordered window weights equal affine_grid/grid_sample + conv,
    border padding included (points near and beyond the feature map's edges)."""
    model = _model("tiny", WFLW_98)
    optimised = prepare_for_inference(model, "float32", "cpu", fuse=False, sampler=sampler)
    torch.manual_seed(2)
    batch, size, channels = 2, model.config.feature_size, model.config.channels
    features = torch.randn(batch, channels, size, size)
    points = torch.rand(batch, 98, 2) * 1.4 - 0.2  # some windows reach past every edge
    points[0, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-0.5, 0.5], [0.999, 0.001]])
    table = features.permute(0, 2, 3, 1).reshape(batch * size * size, channels)
    with torch.inference_mode():
        for step_index, step in enumerate(optimised.steps):
            expected = model.window_features(points, features, step_index)
            got = step.window(step.sample_windows(points, table, batch))
            assert (got - expected).abs().max() < 1e-4 * max(1.0, expected.abs().max().item())


def test_stem_conv_matches_coord_channels_and_conv():
    model = _model("tiny", WFLW_98)
    pre = model.visual_cnn.pre
    folded = fold_batch_norms(copy.deepcopy(model.visual_cnn)).pre
    stem = StemConv(folded[0], folded[1])
    torch.manual_seed(3)
    x = torch.rand(2, 3, 128, 128)
    with torch.inference_mode():
        assert (stem(x) - pre[1](pre[0](x))).abs().max() < 1e-4


def test_batch_norm_folding_is_exact_in_float64():
    """Folding changes only rounding: in float64 the folded copy equals the model to 1e-9."""
    model = _model("tiny", WFLW_98).double()
    optimised = InferenceSPIGA(model, torch.float64, torch.float64, channels_last=False)
    x = torch.rand(2, 3, 128, 128, dtype=torch.float64)
    with torch.inference_mode():
        features = model.visual_cnn(x)
        visual, core = optimised.run_backbone(x)
    assert (visual - features["visual"][-1]).abs().max() < 1e-9
    assert (core - features["core"][-1]).abs().max() < 1e-9


def test_precision_names_and_devices(tiny_checkpoint):
    with pytest.raises(SpigaError, match="needs a CUDA device"):
        spiga.load(tiny_checkpoint, device="cpu", precision="float16")
    with pytest.raises(SpigaError, match="unknown precision 'float64'"):
        spiga.load(tiny_checkpoint, device="cpu", precision="float64")
    with pytest.raises(SpigaError, match="unknown backend"):
        spiga.load(tiny_checkpoint, device="cpu", backend="tensorrt")


def test_bfloat16_aligner(tiny_checkpoint, face_image):
    boxes = [(70, 35, 100, 130), (120, 60, 60, 70)]
    reduced = spiga.load(tiny_checkpoint, device="cpu", precision="bfloat16")
    full = spiga.load(tiny_checkpoint, device="cpu")
    assert reduced.precision == "bfloat16" and "bfloat16" in repr(reduced)
    faces, reference = reduced.align(face_image, boxes), full.align(face_image, boxes)
    for face, ref in zip(faces, reference):
        assert face.landmarks.dtype == np.float64 and np.isfinite(face.landmarks).all()
        # the geometry stays float32: the landmarks stay in the crop, near the float32 ones
        # (a random tiny model; 8-bit mantissas move its outputs by a fraction of the box)
        assert np.abs(face.landmarks - ref.landmarks).mean() < 0.25 * max(face.box[2:])


def test_bfloat16_keeps_geometry_in_float32(tiny_checkpoint):
    optimised = prepare_for_inference(load_checkpoint(tiny_checkpoint).model, "bfloat16", "cpu")
    assert optimised.mean_face_3d.dtype == torch.float32 and optimised.pose_fc.weight.dtype == torch.float32
    assert all(step.window_offsets.dtype == torch.float32 for step in optimised.steps)
    with torch.inference_mode():
        points, pose = optimised(torch.rand(1, 3, 128, 128))
    assert points.dtype == torch.float32 and pose.dtype == torch.float32


def test_backend_splits_large_inputs(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint).model
    rng = np.random.default_rng(4)
    crops = rng.integers(0, 256, (5, 128, 128, 3), dtype=np.uint8)
    small = TorchBackend(model, torch.device("cpu"), max_batch=2).predict_crops(crops)
    large = TorchBackend(model, torch.device("cpu"), max_batch=8).predict_crops(crops)
    assert small[0].shape == (5, 98, 2)
    assert np.abs(small[0] - large[0]).max() < 1e-3 and np.abs(small[1] - large[1]).max() < 1e-4
    empty = TorchBackend(model, torch.device("cpu")).predict_crops(crops[:0])
    assert empty[0].shape == (0, 98, 2) and empty[1].shape == (0, 6)


@pytest.mark.parametrize("size, expected", [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16), (31, 32), (40, 32)])
def test_batch_buckets(size, expected):
    assert batch_bucket(size, 32) == expected


@pytest.mark.skipif(not os.environ.get("SPIGA_TEST_COMPILE"),
                    reason="torch.compile takes minutes on a small CPU; set SPIGA_TEST_COMPILE=1 to run")
def test_compiled_backend_matches_eager(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint).model
    rng = np.random.default_rng(5)
    crops = rng.integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    eager = TorchBackend(model, torch.device("cpu")).predict_crops(crops)
    compiled = TorchBackend(model, torch.device("cpu"), max_batch=4, compile=True)
    for _ in range(2):  # the second call runs the compiled graph again (frozen weights stay intact)
        points, pose = compiled.predict_crops(crops)  # batch of 3 padded to 4
        assert np.abs(points - eager[0]).max() < 0.01 and np.abs(pose - eager[1]).max() < 1e-3


def test_cli_precision(tiny_checkpoint, tmp_path, face_image, capsys):
    import cv2

    image = tmp_path / "face.png"
    cv2.imwrite(str(image), face_image)
    args = ["align", str(image), "--model", str(tiny_checkpoint), "--box", "70", "35", "100", "130", "--device", "cpu"]
    assert cli(args + ["--precision", "float16"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert cli(args + ["--precision", "bfloat16", "--json", str(tmp_path / "out.json")]) == 0
    assert (tmp_path / "out.json").is_file()


def test_functional_grid_sample_convention():
    """The convention the sampler reproduces: grid g -> pixel ((g + 1) F - 1) / 2, border clamp."""
    features = torch.arange(16.0).view(1, 1, 4, 4)
    grid = torch.tensor([[[[-1.0, -1.0], [1.0, 1.0], [-0.75, -0.75]]]])  # corners and a pixel centre
    values = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert values.flatten().tolist() == [0.0, 15.0, 0.0]


@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"),
                    reason="torch flushes denormals on x86 only")
def test_cpu_backend_flushes_denormals(tiny_checkpoint, face_image):
    torch.set_flush_denormal(False)
    spiga.load(tiny_checkpoint, device="cpu").align(face_image, [(70, 35, 100, 130)])
    denormal = torch.tensor([1e-39], dtype=torch.float32)
    assert (denormal * 1.0).item() == 0.0  # flushed to zero (x86 with SSE; the switch is process-wide)
