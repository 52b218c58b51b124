"""Inference transforms of a trained `SPIGA`: the same module, rearranged for speed.

`prepare_for_inference(model, precision, device)` returns a copy of `model` (a `SPIGA`,
whose forward code is the model's own; with `in_place=True` the model itself, as
`spiga.load` does, saving a copy) after these transforms, none of which changes the
mathematics (in float64 the result equals the model's to rounding):

- `fold_batch_norms`: every batch norm that follows a convolution or linear layer is
  folded into it (`torch.nn.utils.fusion`, computed in float64); the ReLU after it moves
  into the layer's block. The pre-activation batch norm of a residual block and its ReLU
  (before a 1x1 convolution) become one per-channel clamp, the batch norm's scale and
  offset moved into that convolution.
- `precompute_coord_channels`: the stem convolution's constant CoordConv channels are
  convolved once, at preparation.
- `set_precision`: the CNN and the cascade's layers in bfloat16 / float16 (the pose head,
  the projection, the window positions and the landmark updates stay float32), or the
  whole network in float64 (the check that the fast path is the same mathematics).
- channels-last memory for the CNN (the cascade reads its windows straight from it).
- `fuse_module` (CPU, where `spiga.inference.cpu` found the fused oneDNN operators working
  for the dtype): convolutions with bias, ReLU and residual addition in one call, linears
  with their ReLU, weights prepacked once (the convolutions' at the first call, for its
  input size).
- the window sampler: one `embedding_bag` pass on CPUs, Gather + MatMul elsewhere and in
  ONNX graphs (`SPIGA.window_sampler`).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .. import choices
from ..errors import SpigaError
from ..model import SPIGA
from ..model.cascade import WINDOW_SAMPLERS
from ..model.layers import ConvBlock, CoordChannels, PointwiseMLP, Residual, UpBlock
from .cpu import FusedConv, FusedConvBlock, FusedLinear, cpu_features

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {name: getattr(torch, name) for name in choices.PRECISIONS}

_warned_slow_bfloat16 = False


def precision_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a precision name, checked against the device.

    float16 runs only on CUDA (CPU kernels for it are slow or missing). bfloat16 runs on
    CUDA and on every CPU: fast where the CPU has native bfloat16 (AVX-512 BF16, AMX),
    correct but slower than float32 elsewhere (one warning says so). float64 runs
    everywhere, slowly: it is the reference the fast paths are checked against.
    """
    global _warned_slow_bfloat16
    if precision not in PRECISIONS:
        raise SpigaError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision == "float16" and device.type != "cuda":
        raise SpigaError(f"precision 'float16' needs a CUDA device (asked for {device}); "
                         f"use 'bfloat16' on the CPU")
    if precision == "bfloat16" and device.type == "cpu" and not cpu_features().native_bfloat16:
        if not _warned_slow_bfloat16:
            _warned_slow_bfloat16 = True
            log.warning("this CPU has no native bfloat16 arithmetic (AVX-512 BF16 / AMX): bfloat16 runs emulated, "
                        "slower than float32")
    return PRECISIONS[precision]


# --- batch-norm folding ----------------------------------------------------------------


def _folded(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm,
            transpose: bool = False, linear: bool = False) -> tuple[nn.Parameter, nn.Parameter]:
    """Weight and bias of `bn(layer(x))`, stored in the layer's dtype.

    The per-channel scale and the bias are computed in float64; the weight is multiplied in
    its own dtype by the scale rounded to it (within an ulp of the float64 product): a float64
    copy of the weights cost a fifth of a second of every start. (In place would be slower
    still: the weights of a loaded file are copy-on-write pages of it.)"""
    scale, shift = _bn_scale_shift(bn)
    shape = [1] * weight.dim()
    shape[1 if transpose else 0] = -1  # the output channels: dim 1 of a transposed convolution's weight
    new_weight = weight.detach() * scale.to(weight.dtype).view(shape)
    new_bias = shift if bias is None else bias.detach().double() * scale + shift
    return (nn.Parameter(new_weight, requires_grad=False),
            nn.Parameter(new_bias.to(weight.dtype), requires_grad=False))


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as y = x * scale + shift, per channel, in float64."""
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    return scale, shift if bn.bias is None else shift + bn.bias.double()


class ChannelClamp(nn.Module):
    """clamp(x, lower, upper) with per-channel bounds: (B, C, H, W) -> (B, C, H, W).

    One-sided bounds (every scale of the batch norm positive, the usual case) take the
    cheaper `maximum`: a two-sided clamp with tensor bounds costs about twice as much.
    """

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor):
        super().__init__()
        self.register_buffer("lower", lower.view(1, -1, 1, 1))
        self.register_buffer("upper", upper.view(1, -1, 1, 1))
        self.only_lower = bool(torch.isinf(upper).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.only_lower:
            return torch.maximum(x, self.lower)
        return torch.clamp(x, self.lower, self.upper)


def _fold_block(block: ConvBlock, bn: nn.modules.batchnorm._BatchNorm) -> None:
    block.conv.weight, block.conv.bias = _folded(block.conv.weight, block.conv.bias, bn)


def _fold_residual(residual: Residual) -> None:
    # bn2 / bn3 follow conv1 / conv2: fold them, and the ReLUs after them join those blocks
    for block, bn, relu in ((residual.conv1, "bn2", "relu2"), (residual.conv2, "bn3", "relu3")):
        _fold_block(block, getattr(residual, bn))
        block.relu = nn.ReLU()
        setattr(residual, bn, nn.Identity())
        setattr(residual, relu, nn.Identity())
    # relu(s x + t) = s clamp(x, lo, hi) + t, per channel, with (lo, hi) = (-t/s, inf) where
    # s > 0 and (-inf, -t/s) where s < 0 (a channel with s = 0 is the constant relu(t)).
    # conv1 is 1x1 without padding, so s goes into its weights and t into its bias: the
    # batch norm and the ReLU become one clamp pass.
    conv = residual.conv1.conv
    if conv.kernel_size != (1, 1) or conv.padding != (0, 0):
        return
    scale, shift = _bn_scale_shift(residual.bn1)
    inf = torch.full_like(scale, float("inf"))
    knee = torch.where(scale != 0, -shift / torch.where(scale != 0, scale, 1.0), 0.0)
    lower = torch.where(scale > 0, knee, -inf)
    upper = torch.where(scale < 0, knee, inf)
    constant = torch.where(scale == 0, shift.clamp(min=0.0), shift)
    weight = conv.weight.detach()
    bias = (conv.bias.double() if conv.bias is not None else 0.0) + weight[:, :, 0, 0].double() @ constant
    conv.weight = nn.Parameter(weight * scale.to(weight.dtype).view(1, -1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    residual.bn1 = nn.Identity()
    residual.relu1 = ChannelClamp(lower.to(conv.weight.dtype), upper.to(conv.weight.dtype))


def _fold_mlp(mlp: PointwiseMLP) -> None:
    for index in range(len(mlp) - 1):
        linear, bn = mlp[index], mlp[index + 1]
        if isinstance(linear, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            linear.weight, linear.bias = _folded(linear.weight, linear.bias, bn, linear=True)
            mlp[index + 1] = nn.Identity()


def fold_batch_norms(model: SPIGA) -> SPIGA:
    """Fold every batch norm of `model` (eval mode) into the layer before it, in place."""
    for module in list(model.modules()):
        if isinstance(module, Residual):
            _fold_residual(module)
        elif isinstance(module, ConvBlock) and module.bn is not None:
            _fold_block(module, module.bn)
            module.bn = None
        elif isinstance(module, UpBlock) and isinstance(module.bn, nn.BatchNorm2d):
            deconv = module.deconv
            deconv.weight, deconv.bias = _folded(deconv.weight, deconv.bias, module.bn, transpose=True)
            module.bn = nn.Identity()
        elif isinstance(module, PointwiseMLP):
            _fold_mlp(module)
    return model


# --- the stem's constant channels ----------------------------------------------------------


class StemConv(nn.Module):
    """The first convolution with its constant CoordConv input channels precomputed.

    conv([x, xx, yy, rr]) = conv_x(x) + conv_c([xx, yy, rr]); the second term does not
    depend on the image, so it is evaluated once and stored as a (C_out, H', W') map
    (it absorbs the folded bias). (B, 3, S, S) -> (B, C_out, S/2, S/2), ReLU applied.

    The map is kept without a batch axis: with a batch of one, torch.compile's frozen-weight
    mode would otherwise fuse "conv + same-shaped constant" into a convolution that
    accumulates in place into the constant (measured: the second call returned garbage).
    """

    def __init__(self, coords: CoordChannels, block: ConvBlock, image_channels: int = 3):
        super().__init__()
        conv = block.conv
        with torch.no_grad():
            constant_input = coords.channels(1, torch.float64)
            constant = F.conv2d(constant_input, conv.weight[:, image_channels:].double(), None, conv.stride,
                                conv.padding)
            if conv.bias is not None:
                constant = constant + conv.bias.double().view(1, -1, 1, 1)
        # built on the meta device, its weight set next: no draw from the random generator and
        # none of `nn.utils.skip_init`'s cost (its `to_empty` imports PyTorch's symbolic shapes, 0.7 s)
        self.conv = nn.Conv2d(image_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              bias=False, device="meta")
        self.conv.weight = nn.Parameter(conv.weight[:, :image_channels].detach().clone(), requires_grad=False)
        self.register_buffer("constant", constant[0].to(conv.weight.dtype))
        self.relu = block.relu is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x) + self.constant
        return F.relu(out) if self.relu else out


def precompute_coord_channels(model: SPIGA) -> SPIGA:
    """Replace the stem's CoordConv + first convolution by a `StemConv`, in place."""
    pre = model.visual_cnn.pre
    if isinstance(pre[0], CoordChannels):
        pre[1] = StemConv(pre[0], pre[1])
        pre[0] = nn.Identity()
    return model


# --- precision, memory format ------------------------------------------------------------


def set_precision(model: SPIGA, dtype: torch.dtype) -> SPIGA:
    """The arithmetic of `model`, in place: float64 for everything, or the CNN and the
    cascade's layers in `dtype` with the geometry (pose head, projection, window positions,
    landmark updates) left in float32."""
    if dtype == torch.float64:
        return model.double()
    for part in (model.visual_cnn, model.conv_window, model.shape_encoder, model.gcn):
        part.to(dtype)
    return model


def to_channels_last(model: SPIGA) -> SPIGA:
    """The CNN's weights (and so its activations) in channels-last memory, in place."""
    model.visual_cnn.to(memory_format=torch.channels_last)
    return model


# --- oneDNN fusion (CPU) -------------------------------------------------------------------


def _fuse_linears(module: nn.Module) -> None:
    """Every `nn.Linear` under `module` -> `FusedLinear`, absorbing a ReLU that follows it in
    a Sequential (the ReLU's place becomes an identity, so indices stay)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            for index, layer in enumerate(child):
                if isinstance(layer, nn.Linear):
                    following = child[index + 1] if index + 1 < len(child) else None
                    relu = isinstance(following, nn.ReLU)
                    child[index] = FusedLinear(layer, relu)
                    if relu:
                        child[index + 1] = nn.Identity()
                else:
                    _fuse_linears(layer)
        elif isinstance(child, nn.Linear):
            setattr(module, name, FusedLinear(child, relu=False))
        else:
            _fuse_linears(child)


def fuse_module(model: SPIGA) -> SPIGA:
    """Replace the folded blocks of `model` (on the CPU, in its final dtype and memory format)
    by oneDNN fused ones, in place. The result cannot be moved, copied, saved or exported.
    Convolution weights are packed at the network's first call, for its input size."""

    def replace_in(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, ConvBlock) and child.bn is None:
                setattr(module, name, FusedConvBlock(child.conv, child.relu is not None))
            elif isinstance(child, UpBlock):
                child.deconv = FusedConv(child.deconv, isinstance(child.relu, nn.ReLU))
                child.relu = nn.Identity()
            elif isinstance(child, StemConv):
                child.conv = FusedConv(child.conv, False)
            else:
                replace_in(child)

    replace_in(model.visual_cnn)
    for part in (model.conv_window, model.shape_encoder, model.gcn):
        _fuse_linears(part)
    return model


# --- all together --------------------------------------------------------------------------


def prepare_for_inference(model: SPIGA, precision: str = "float32", device: str | torch.device = "cpu",
                          channels_last: bool = True, cascade_precision: str | None = None,
                          fuse: bool | None = None, sampler: str | None = None, in_place: bool = False) -> SPIGA:
    """An inference copy of `model` on `device`, transformed for speed (module docstring).

    Args:
        model: a `SPIGA` (left unchanged unless `in_place`).
        precision: "float32", "bfloat16" (CPU or CUDA), "float16" (CUDA only) or "float64":
            the CNN's arithmetic (float64: everything's).
        device: where the copy runs.
        channels_last: run the CNN in channels-last memory format.
        cascade_precision: the cascade's layers (window projection, GAT, decoders); default:
            the same as `precision`.
        fuse: use the fused oneDNN operators (CPU only). Default: where the CPU probe found
            them working for the dtype (`spiga.inference.cpu`). The result cannot be moved,
            copied, exported or compiled: use `fuse=False` for those.
        sampler: how the cascade reads its windows: "embedding_bag" (the default on CPUs) or
            "gather" (plain Gather/MatMul operators; the default elsewhere and for ONNX).
        in_place: transform `model` itself instead of a copy (no copy of its weights; the
            model is then the inference network, no longer one to train, save or export).
    Returns:
        a `SPIGA` in eval mode without gradients; its forward takes images in any float
        dtype and returns what `SPIGA.forward` returns.
    """
    device = torch.device(device)
    dtype = precision_dtype(precision, device)
    cascade_dtype = precision_dtype(cascade_precision or precision, device)
    if (dtype == torch.float64) != (cascade_dtype == torch.float64):
        raise SpigaError("float64 applies to the whole network: give no other cascade precision")
    if sampler is None:
        sampler = "embedding_bag" if device.type == "cpu" else "gather"
    if sampler not in WINDOW_SAMPLERS:
        raise SpigaError(f"unknown window sampler {sampler!r}; known: {', '.join(WINDOW_SAMPLERS)}")
    features = cpu_features()
    can_fuse = (device.type == "cpu" and channels_last and features.fused(dtype)
                and features.fused(cascade_dtype))
    if fuse is None:
        fuse = can_fuse
    elif fuse and not can_fuse:
        raise SpigaError(f"the fused oneDNN operators are not available for {precision} on {device} "
                         f"(CPU probe: {features.describe()})")

    prepared = (model if in_place else copy.deepcopy(model)).eval()
    if dtype == torch.float64:
        set_precision(prepared, dtype)
    fold_batch_norms(prepared)
    precompute_coord_channels(prepared)
    if dtype != torch.float64:
        set_precision(prepared, dtype)
        for part in (prepared.conv_window, prepared.shape_encoder, prepared.gcn):
            part.to(cascade_dtype)
    if channels_last:
        to_channels_last(prepared)
    prepared.window_sampler = sampler
    prepared.requires_grad_(False)
    prepared.to(device)
    if fuse:
        fuse_module(prepared)
    log.debug("inference copy: %s, device %s, fused %s, sampler %s", precision, device, fuse, sampler)
    return prepared
