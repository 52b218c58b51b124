"""Inference transforms: the transformed `SPIGA` computes what the model computes, on every
branch of the CPU probe (fused oneDNN operators or public ones), in every precision."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import spiga
from spiga.checkpoint import load_checkpoint
from spiga.cli import main as cli
from spiga.errors import SpigaError
from spiga.inference import optimize
from spiga.inference.backends import TorchBackend, batch_bucket
from spiga.inference.cpu import FusedConvBlock, FusedLinear, _probe, cpu_features, forced_cpu_features
from spiga.inference.optimize import ChannelClamp, StemConv, fold_batch_norms, prepare_for_inference
from spiga.landmarks import IBUG_68, WFLW_98
from spiga.model import SPIGA
from spiga.model.layers import Residual
from spiga.testing import random_model

PROBED = _probe()
needs_fused = pytest.mark.skipif(not PROBED.onednn, reason=f"no fused oneDNN operators here ({PROBED.describe()})")
needs_fused_bf16 = pytest.mark.skipif(not PROBED.onednn_bfloat16,
                                      reason=f"no fused bfloat16 oneDNN operators here ({PROBED.describe()})")
PUBLIC = {"onednn": False, "onednn_bfloat16": False}
# the operator paths of the probe: the public operators run everywhere (forced), the fused
# ones wherever this machine has them
PATHS = [pytest.param({}, marks=needs_fused, id="fused"), pytest.param(PUBLIC, id="public")]


def _model(size: str, landmarks, seed: int = 0, negative_scales: bool = False) -> SPIGA:
    """A random model whose batch norms are not the identity (so that folding is exercised)."""
    model, _ = random_model(size, landmarks, seed)
    torch.manual_seed(seed)  # the batch-norm statistics below
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(-1.0 if negative_scales else 0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        # a plausible pose (the face 3 units in front of the camera), so that the projected
        # mean face is not near-singular and the landmarks stay around the crop
        model.pose_fc.weight.mul_(0.01)
        model.pose_fc.bias.copy_(torch.tensor([5.0, -3.0, 2.0, 0.0, 0.0, 3.0]))
    return model


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(3, 3, 128, 128)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sampler", ["embedding_bag", "gather"])
@pytest.mark.parametrize("landmarks, negative", [(WFLW_98, False), (IBUG_68, True)], ids=["98", "68-negative-bn"])
def test_inference_copy_matches_model(images, path, sampler, landmarks, negative):
    model = _model("tiny", landmarks, negative_scales=negative)
    with forced_cpu_features(**path), torch.inference_mode():
        expected = model(images)
        prepared = prepare_for_inference(model, "float32", "cpu", sampler=sampler)
        out = prepared(images)
    # the same class, so the same forward code: only leaves were swapped
    assert type(prepared) is SPIGA and prepared.window_sampler == sampler
    fused = [m for m in prepared.modules() if isinstance(m, (FusedConvBlock, FusedLinear))]
    assert bool(fused) is (path == {})
    # every batch norm folded; each residual's pre-activation batch norm + ReLU is one clamp,
    # negative scales included
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in prepared.modules())
    residuals = [m for m in prepared.modules() if isinstance(m, Residual)]
    assert residuals and all(isinstance(r.relu1, ChannelClamp) for r in residuals)
    assert (out["pose"] - expected["pose"]).abs().max() < 1e-3
    for got, want in zip(out["landmarks"], expected["landmarks"]):
        assert (got - want).abs().max() * 128 < 0.01  # crop pixels


@needs_fused
def test_fused_convolutions_are_packed_at_the_first_call_once_across_threads(images):
    """No shape pass at preparation: each convolution's weight is packed by the network's
    first call, for that call's input, once, however many threads make the first call; a
    batch of several images gets its own packing at its first call (oneDNN's layouts differ)."""
    import concurrent.futures

    from spiga.inference.cpu import FusedConv

    model = _model("tiny", WFLW_98)
    with torch.inference_mode():
        expected = model(images[:1])
        prepared = prepare_for_inference(model, "float32", "cpu")
        convs = [m for m in prepared.modules() if isinstance(m, FusedConv)]
        assert convs and all(conv.weight is None for conv in convs)
        called = set()
        for conv in convs:
            conv.register_forward_pre_hook(lambda module, args: called.add(module))
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda _: prepared(images[:1]), range(4)))
        packed = [conv.weight for conv in convs]
        assert called and all((weight is not None) == (conv in called) for conv, weight in zip(convs, packed))
        several = prepared(images)  # several images get weights packed for them; one image keeps its own
        assert all(len(conv._packed) == (2 if conv in called else 0) for conv in convs)
        again = prepared(images[:1])
        assert all(conv.weight is weight for conv, weight in zip(convs, packed))
    for out in [*outs, again]:
        assert (out["landmarks"][-1] - expected["landmarks"][-1]).abs().max() * 128 < 0.01
    assert (several["landmarks"][-1][:1] - expected["landmarks"][-1]).abs().max() * 128 < 0.01


def test_float64_copy_is_the_same_mathematics(images):
    """In float64 every transform is exact up to rounding: the copy equals the model run in float64."""
    model = _model("tiny", IBUG_68, negative_scales=True)
    x = images.double()
    with torch.inference_mode():
        expected = copy.deepcopy(model).double()(x)
        prepared = prepare_for_inference(model, "float64", "cpu")
        out = prepared(images)  # float32 crops in, cast by the network
    assert out["pose"].dtype == torch.float64 and prepared.visual_cnn.compute_dtype == torch.float64
    assert (out["pose"] - expected["pose"]).abs().max() < 1e-9
    assert (out["landmarks"][-1] - expected["landmarks"][-1]).abs().max() * 128 < 1e-8
    assert not any(isinstance(m, (FusedConvBlock, FusedLinear)) for m in prepared.modules())


def test_pre_activation_clamp_handles_every_sign_of_scale():
    """relu(bn(x)) before a 1x1 convolution as one clamp: positive, negative and zero scales."""
    model = _model("tiny", WFLW_98, negative_scales=True).double()
    with torch.no_grad():
        residual = model.visual_cnn.hgs[0].up1
        residual.bn1.weight[:4] = 0.0  # channels whose pre-activation is the constant relu(bias)
        residual.bn1.bias[:2] = -0.3
    x = torch.randn(2, residual.bn1.num_features, 16, 16, dtype=torch.float64)
    with torch.inference_mode():
        expected = residual(x)
        folded = copy.deepcopy(residual)
        from spiga.inference.optimize import _fold_residual

        _fold_residual(folded)
        assert isinstance(folded.relu1, ChannelClamp)
        assert (folded(x) - expected).abs().max() < 1e-12


def test_batch_norm_folding_is_exact_in_float64():
    model = _model("tiny", WFLW_98).double()
    folded = fold_batch_norms(copy.deepcopy(model))
    x = torch.rand(2, 3, 128, 128, dtype=torch.float64)
    with torch.inference_mode():
        expected, got = model.visual_cnn(x), folded.visual_cnn(x)
    assert (got["visual"][-1] - expected["visual"][-1]).abs().max() < 1e-9
    assert (got["core"][-1] - expected["core"][-1]).abs().max() < 1e-9


def test_prepare_leaves_the_model_alone():
    model = _model("tiny", WFLW_98)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepare_for_inference(model, "float32", "cpu")
    prepare_for_inference(model, "float64", "cpu")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.visual_cnn.compute_dtype == torch.float32 and model.training is False


def test_stem_conv_matches_coord_channels_and_conv():
    model = fold_batch_norms(_model("tiny", WFLW_98))
    pre = model.visual_cnn.pre
    stem = StemConv(pre[0], pre[1])
    torch.manual_seed(3)
    x = torch.rand(2, 3, 128, 128)
    with torch.inference_mode():
        assert (stem(x) - pre[1](pre[0](x))).abs().max() < 1e-4


def test_precision_names_and_devices(tiny_checkpoint):
    with pytest.raises(SpigaError, match="needs a CUDA device"):
        spiga.load(tiny_checkpoint, device="cpu", precision="float16")
    with pytest.raises(SpigaError, match="unknown precision 'float8'"):
        spiga.load(tiny_checkpoint, device="cpu", precision="float8")
    with pytest.raises(SpigaError, match="unknown backend"):
        spiga.load(tiny_checkpoint, device="cpu", backend="tensorrt")
    assert spiga.load(tiny_checkpoint, device="cpu", precision="float64").precision == "float64"


def test_forcing_a_missing_fast_path_is_refused():
    model = _model("tiny", WFLW_98)
    with forced_cpu_features(**PUBLIC), pytest.raises(SpigaError, match="not available"):
        prepare_for_inference(model, "float32", "cpu", fuse=True)
    with pytest.raises(SpigaError, match="not available"):
        prepare_for_inference(model, "float64", "cpu", fuse=True)


@pytest.mark.parametrize("path", [pytest.param({}, marks=needs_fused_bf16, id="fused"),
                                  pytest.param(PUBLIC, id="public")])
def test_bfloat16_aligner(tiny_checkpoint, face_image, path):
    boxes = [(70, 35, 100, 130), (120, 60, 60, 70)]
    with forced_cpu_features(**path):
        reduced = spiga.load(tiny_checkpoint, device="cpu", precision="bfloat16")
        full = spiga.load(tiny_checkpoint, device="cpu")
        faces, reference = reduced.align(face_image, boxes), full.align(face_image, boxes)
    fused = any(isinstance(m, FusedConvBlock) for m in reduced.backend.network.modules())
    assert fused is (path == {})
    assert reduced.precision == "bfloat16" and "bfloat16" in repr(reduced)
    for face, ref in zip(faces, reference):
        assert face.landmarks.dtype == np.float64 and np.isfinite(face.landmarks).all()
        # the geometry stays float32: the landmarks stay in the crop, near the float32 ones
        # (a random tiny model; 8-bit mantissas move its outputs by a fraction of the box)
        assert np.abs(face.landmarks - ref.landmarks).mean() < 0.25 * max(face.box[2:])


@pytest.mark.parametrize("path", [pytest.param({}, marks=needs_fused_bf16, id="fused"),
                                  pytest.param(PUBLIC, id="public")])
def test_bfloat16_keeps_geometry_in_float32(tiny_checkpoint, path):
    with forced_cpu_features(**path):
        prepared = prepare_for_inference(load_checkpoint(tiny_checkpoint).model, "bfloat16", "cpu")
    assert prepared.mean_face_3d.dtype == torch.float32 and prepared.pose_fc.weight.dtype == torch.float32
    assert prepared.window_scale_matrices[0].dtype == torch.float32 and prepared.camera_matrix.dtype == torch.float32
    assert prepared.visual_cnn.compute_dtype == torch.bfloat16 and prepared.cascade_dtype == torch.bfloat16
    with torch.inference_mode():
        out = prepared(torch.rand(1, 3, 128, 128))
    assert out["landmarks"][-1].dtype == torch.float32 and out["pose"].dtype == torch.float32


def test_bfloat16_without_native_support_warns_once(tiny_checkpoint, caplog, monkeypatch):
    monkeypatch.setattr(optimize, "_warned_slow_bfloat16", False)
    with forced_cpu_features(native_bfloat16=False, **PUBLIC), caplog.at_level(logging.WARNING):
        for _ in range(2):
            spiga.load(tiny_checkpoint, device="cpu", precision="bfloat16")
    warnings = [r for r in caplog.records if "slower than float32" in r.getMessage()]
    assert len(warnings) == 1


def test_probe_is_cached_and_forcing_nests():
    assert cpu_features() is cpu_features()
    with forced_cpu_features(onednn=False) as outer:
        assert cpu_features() is outer and not outer.onednn
        with forced_cpu_features(native_bfloat16=False) as inner:
            assert not inner.onednn and not inner.native_bfloat16
        assert cpu_features() is outer
    assert cpu_features() == PROBED


# A CPU without AVX-512 (an AVX2-only AMD EPYC, most laptops): oneDNN and PyTorch's own
# bfloat16 checks both read oneDNN's ISA limit, so these variables make this machine refuse
# the private bfloat16 operators exactly as such a CPU does.
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"),
                    reason="the ISA limit variables are for x86 CPUs")
def test_every_precision_runs_on_an_avx2_only_cpu(tiny_checkpoint, image_file, tmp_path):
    env = {**os.environ, **AVX2_ONLY}
    probe = subprocess.run([sys.executable, "-c", "from spiga.inference.cpu import cpu_features as f; "
                            "print(f().onednn_bfloat16, f().native_bfloat16)"],
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["False", "False"]
    for precision in ("float32", "bfloat16", "float64"):
        out = tmp_path / f"{precision}.json"
        run = subprocess.run([sys.executable, "-m", "spiga", "align", str(image_file), "--model", str(tiny_checkpoint),
                              "--box", "70", "35", "100", "130", "--device", "cpu", "--precision", precision,
                              "--json", str(out)], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr and out.is_file()
        if precision == "bfloat16":
            assert run.stderr.count("slower than float32") == 1


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


def test_cli_precision(tiny_checkpoint, image_file, tmp_path, capsys):
    args = ["align", str(image_file), "--model", str(tiny_checkpoint), "--box", "70", "35", "100", "130",
            "--device", "cpu"]
    assert cli(args + ["--precision", "float16"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    results = {}
    for precision in ("float32", "bfloat16", "float64"):
        out = tmp_path / f"{precision}.json"
        assert cli(args + ["--precision", precision, "--json", str(out)]) == 0
        import json
        results[precision] = np.array(json.loads(out.read_text())["images"][0]["faces"][0]["landmarks"])
    assert np.abs(results["float32"] - results["float64"]).max() < 0.01


X86 = __import__("platform").machine().lower() in ("x86_64", "amd64")


@pytest.mark.skipif(not X86, reason="torch flushes denormals on x86 only")
def test_denormals_are_flushed_within_the_block_only():
    from spiga.inference.cpu import denormals_flushed, flushed_denormals

    denormal = torch.tensor([1e-39], dtype=torch.float32)
    assert not denormals_flushed() and (denormal * 1.0).item() != 0.0
    with flushed_denormals():
        assert denormals_flushed() and (denormal * 1.0).item() == 0.0
        with flushed_denormals():  # nested: the outer block's setting survives the inner one
            pass
        assert denormals_flushed()
    assert not denormals_flushed() and (denormal * 1.0).item() != 0.0


@pytest.mark.skipif(not X86, reason="torch flushes denormals on x86 only")
@pytest.mark.parametrize("tune_process", [False, True])
def test_cpu_backend_leaves_the_callers_arithmetic_alone(tiny_checkpoint, face_image, tune_process, monkeypatch):
    """The network flushes denormals during its own calls only (tune_process), and the
    process-wide malloc settings are applied only when asked for (the commands ask)."""
    from spiga.inference import backends
    from spiga.inference.cpu import denormals_flushed

    tuned, seen = [], []
    monkeypatch.setattr(backends, "tune_cpu_process", lambda: tuned.append(True))
    aligner = spiga.load(tiny_checkpoint, device="cpu", tune_process=tune_process)
    run = aligner.backend._predict_crops
    monkeypatch.setattr(aligner.backend, "_predict_crops", lambda crops: (seen.append(denormals_flushed()),
                                                                          run(crops))[1])
    aligner.align(face_image, [(70, 35, 100, 130)])
    assert tuned == ([True] if tune_process else []) and seen == [tune_process]
    assert not denormals_flushed()


@pytest.mark.skipif(not X86, reason="torch flushes denormals on x86 only")
@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_the_detector_leaves_the_callers_arithmetic_alone(runtime):
    """onnxruntime's denormal option flushes the thread that creates a session, for good:
    the detector restores it, and flushes during its own calls only."""
    from spiga.detection import make_detector
    from spiga.detection.runtime import _onnx_session
    from spiga.inference.cpu import denormals_flushed

    _onnx_session.cache_clear()  # a session made in this test, on this thread
    detector = make_detector("blazeface", backend=runtime)
    detector.detect(np.zeros((120, 160, 3), np.uint8))
    assert not denormals_flushed()
