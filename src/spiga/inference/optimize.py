"""Inference-only transforms of a trained SPIGA: an optimised copy for fast prediction.

`prepare_for_inference(model, precision, device)` returns an `InferenceSPIGA`, a module
with the same weights rearranged for speed and one plain contract:

    images (B, 3, S, S) BGR float in [0, 1] -> landmarks (B, L, 2) in [0, 1] crop units
                                               (last cascade step), pose (B, 6)

What it changes, none of which alters the mathematics (float32 results agree with
`SPIGA` to float rounding):

- batch norms that follow a convolution are folded into it; the pre-activation batch
  norm of each residual block (a ReLU separates it from its convolution) stays, as one
  affine pass, or, on the fused CPU path, as one `max` pass with its scale and offset
  moved into the next 1x1 convolution;
- the constant CoordConv channels of the stem are convolved once, at preparation;
- the backbone runs in channels-last memory format, and on CPUs (`fuse=True`) on oneDNN
  fused convolutions (bias, ReLU, residual addition in one call) with weights reordered
  once into oneDNN's layout, the operators that torch.compile's frozen CPU graphs use;
- the cascade works token-major, (B, L, C), with linear layers instead of 1x1 `Conv1d`
  and the query/key/value projections of each attention merged into one;
- the bilinear K x K window of every landmark is read directly from the channels-last
  feature map as weighted sums of 4 rows (`grid_sample`'s `padding_mode="border"`,
  `align_corners=False` semantics): one `embedding_bag` on CPUs, Gather + MatMul
  elsewhere and in ONNX graphs; no `affine_grid`;
- optionally the backbone and the cascade's layers run in bfloat16 or float16; the pose
  head, the mean-face projection, the window sampling positions and the landmark updates
  stay in float32 (they are what rounding would hurt most, and cost nothing).

`SPIGA` itself (src/spiga/model/spiga.py) is left untouched: training uses it, and
it keeps loading official state_dicts strictly.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpigaError
from ..geometry.camera import project_points_torch
from ..geometry.rotations import euler_to_rotation_torch
from ..model import SPIGA
from ..model.backbone import MultitaskCNN
from ..model.cascade import Attention, GATLayer, StepRegressor
from ..model.layers import ConvBlock, CoordChannels, Residual, UpBlock

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def precision_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a precision name, checked against the device.

    float16 runs only on CUDA (CPU kernels for it are slow or missing); bfloat16 runs on
    CUDA and on CPUs (fast where oneDNN has AVX-512 BF16 / AMX, correct but slow elsewhere).
    """
    if precision not in PRECISIONS:
        raise SpigaError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision == "float16" and device.type != "cuda":
        raise SpigaError(f"precision 'float16' needs a CUDA device (asked for {device}); "
                         f"use 'bfloat16' on the CPU")
    if precision == "bfloat16" and device.type == "cpu" and not cpu_has_fast_bfloat16():
        log.warning("this CPU has no native bfloat16 arithmetic (AVX-512 BF16 / AMX): bfloat16 will be slower "
                    "than float32")
    return PRECISIONS[precision]


def cpu_has_fast_bfloat16() -> bool:
    """Whether oneDNN reports native bfloat16 support on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# --- batch-norm folding ----------------------------------------------------------------


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as y = x * scale + shift, per channel (float64 for exact folding)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def _fold_into(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm,
               out_dim: int = 0) -> tuple[nn.Parameter, nn.Parameter]:
    """Weight and bias of `bn(layer(x))` for a conv/linear layer whose output channels lie on `out_dim`."""
    scale, shift = _bn_scale_shift(bn)
    shape = [1] * weight.dim()
    shape[out_dim] = -1
    new_weight = weight.double() * scale.view(shape)
    new_bias = shift if bias is None else bias.double() * scale + shift
    dtype = weight.dtype
    return nn.Parameter(new_weight.to(dtype), requires_grad=False), nn.Parameter(new_bias.to(dtype),
                                                                                 requires_grad=False)


def _fold_conv_block(block: ConvBlock, bn: nn.modules.batchnorm._BatchNorm | None = None) -> None:
    """Fold `bn` (default: the block's own) into the block's convolution, in place."""
    own = bn is None
    bn = block.bn if own else bn
    if bn is None:
        return
    block.conv.weight, block.conv.bias = _fold_into(block.conv.weight, block.conv.bias, bn)
    if own:
        block.bn = None


def fold_batch_norms(backbone: MultitaskCNN) -> MultitaskCNN:
    """Fold every batch norm that directly follows a convolution into it (in place).

    Residual blocks are pre-activation (BN-ReLU-conv): their bn2 and bn3 follow conv1 and
    conv2 and fold; bn1 reads the block input (shared with the skip) and stays.
    """
    for module in backbone.modules():
        if isinstance(module, ConvBlock):
            _fold_conv_block(module)
        elif isinstance(module, UpBlock):
            # ConvTranspose2d weight is (C_in, C_out, kh, kw): output channels on dim 1
            module.deconv.weight, module.deconv.bias = _fold_into(module.deconv.weight, module.deconv.bias,
                                                                  module.bn, out_dim=1)
            module.bn = nn.Identity()
        elif isinstance(module, Residual):
            _fold_conv_block(module.conv1, module.bn2)
            _fold_conv_block(module.conv2, module.bn3)
            module.bn2 = nn.Identity()
            module.bn3 = nn.Identity()
    return backbone


class StemConv(nn.Module):
    """The first convolution with its constant CoordConv input channels precomputed.

    conv([x, xx, yy, rr]) = conv_x(x) + conv_c([xx, yy, rr]); the second term does not
    depend on the image, so it is evaluated once and stored as a (C_out, H', W') map
    (it absorbs the folded bias). (B, 3, S, S) -> (B, C_out, S/2, S/2), ReLU applied.

    The map is kept as (C_out, H', W'), without a batch axis: with a batch of one,
    torch.compile's frozen-weight mode would otherwise fuse "conv + same-shaped constant"
    into a convolution that accumulates in place into the constant (measured: the second
    call returned garbage).
    """

    def __init__(self, coords: CoordChannels, block: ConvBlock, image_channels: int = 3):
        super().__init__()
        conv = block.conv
        size = coords.xx_channel.shape[-1]
        with torch.no_grad():
            constant_input = coords(torch.zeros(1, 0, size, size, dtype=conv.weight.dtype,
                                                device=conv.weight.device))
            constant = F.conv2d(constant_input.double(), conv.weight[:, image_channels:].double(), None,
                                conv.stride, conv.padding)
            if conv.bias is not None:
                constant = constant + conv.bias.double().view(1, -1, 1, 1)
        self.conv = nn.Conv2d(image_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              bias=False)
        self.conv.weight = nn.Parameter(conv.weight[:, :image_channels].detach().clone(), requires_grad=False)
        self.register_buffer("constant", constant[0].to(conv.weight.dtype))
        self.relu = block.relu is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x) + self.constant.to(x.dtype)
        return F.relu(out) if self.relu else out


# --- oneDNN fusion (CPU) ------------------------------------------------------------------


def onednn_fusion_available() -> bool:
    """Whether this torch has the oneDNN fused-convolution operators used by `fuse_for_cpu`
    (the ones torch.compile's frozen CPU graphs call)."""
    try:
        ops = torch.ops.mkldnn
        return (torch.backends.mkldnn.is_available() and hasattr(ops, "_convolution_pointwise")
                and hasattr(ops, "_reorder_convolution_weight")
                and hasattr(ops, "_convolution_transpose_pointwise")
                and hasattr(ops, "_reorder_convolution_transpose_weight"))
    except (AttributeError, RuntimeError):
        return False


class FusedConv(nn.Module):
    """A convolution with bias, optional ReLU and optional residual addition done by oneDNN
    in one pass, with the weights reordered once into oneDNN's blocked layout.

    forward(x (B, C_in, H, W) channels-last, add=None) -> relu?(conv(x) + bias [+ add]).
    """

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, relu: bool, input_size: list[int] | None):
        super().__init__()
        self.transpose = isinstance(conv, nn.ConvTranspose2d)
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.attr = "relu" if relu else "none"
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else None
        mkldnn = torch.ops.mkldnn
        if self.transpose:
            self.output_padding = list(conv.output_padding)
            packed = mkldnn._reorder_convolution_transpose_weight(weight, self.padding, self.output_padding,
                                                                 self.stride, self.dilation, self.groups, input_size)
        else:
            packed = mkldnn._reorder_convolution_weight(weight, self.padding, self.stride, self.dilation,
                                                        self.groups, input_size)
        # plain attributes, not buffers: the packed weight is an opaque oneDNN tensor that
        # cannot be moved, copied or saved (the module is built on its device, for inference)
        self.weight = packed
        self.bias = bias

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        mkldnn = torch.ops.mkldnn
        if self.transpose:
            out = mkldnn._convolution_transpose_pointwise(x, self.weight, self.bias, self.padding,
                                                          self.output_padding, self.stride, self.dilation,
                                                          self.groups, self.attr, [], "")
            return out if add is None else out + add
        if add is None:
            return mkldnn._convolution_pointwise(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                                 self.groups, self.attr, [], "")
        return mkldnn._convolution_pointwise.binary(x, add, self.weight, self.bias, self.padding, self.stride,
                                                    self.dilation, self.groups, "add", None,
                                                    None if self.attr == "none" else self.attr, [], None)


class FusedResidual(nn.Module):
    """`Residual` (batch norms folded) on fused convolutions. (B, C_in, H, W) -> (B, C_out, H, W),
    channels-last.

    conv1 and conv2 carry their ReLU, conv3 the skip addition. The pre-activation
    relu(s * x + t) (batch norm bn1, per channel) takes one pass: when every s > 0 it equals
    s * (max(x, -t/s) + t/s), and conv1 being 1x1 without padding, the factor s goes into
    its weights and the constant t/s into its bias, leaving max(x, -t/s). Otherwise the
    affine map and the ReLU are two passes.
    """

    def __init__(self, residual: Residual, sizes: dict[nn.Module, list[int]]):
        super().__init__()
        scale, shift = _bn_scale_shift(residual.bn1)
        dtype = residual.bn1.weight.dtype
        conv1 = residual.conv1.conv
        one_by_one = conv1.kernel_size == (1, 1) and conv1.padding == (0, 0) and conv1.stride == (1, 1)
        self.clamp_only = bool(one_by_one and (scale > 0).all())
        if self.clamp_only:
            offset = shift / scale
            weight = conv1.weight.double() * scale.view(1, -1, 1, 1)
            bias = (conv1.bias.double() if conv1.bias is not None else 0) + weight[:, :, 0, 0] @ offset
            conv1 = copy.deepcopy(conv1)
            conv1.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
            conv1.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
            self.register_buffer("threshold", (-offset).view(1, -1, 1, 1).to(dtype))
        else:
            self.register_buffer("scale", scale.view(1, -1, 1, 1).to(dtype))
            self.register_buffer("shift", shift.view(1, -1, 1, 1).to(dtype))
        self.conv1 = FusedConv(conv1, True, sizes.get(residual.conv1.conv))
        self.conv2 = FusedConv(residual.conv2.conv, True, sizes.get(residual.conv2.conv))
        self.conv3 = FusedConv(residual.conv3.conv, False, sizes.get(residual.conv3.conv))
        self.skip = (FusedConv(residual.skip_layer.conv, False, sizes.get(residual.skip_layer.conv))
                     if residual.use_skip_layer else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.skip is None else self.skip(x)
        if self.clamp_only:
            hidden = torch.maximum(x, self.threshold)
        else:
            hidden = torch.addcmul(self.shift, x, self.scale).relu_()
        return self.conv3(self.conv2(self.conv1(hidden)), add=shortcut)


class FusedConvBlock(nn.Module):
    """`ConvBlock` / `UpBlock` (batch norm folded) as one fused convolution;
    forward(x, add=None) adds `add` to the result (before the ReLU, if any)."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, relu: bool, input_size: list[int] | None):
        super().__init__()
        self.conv = FusedConv(conv, relu, input_size)

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x, add=add)


def _conv_add(block: nn.Module, x: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """block(x) + add, in one pass when the block is fused (block has no ReLU)."""
    if isinstance(block, FusedConvBlock):
        return block(x, add=add)
    return block(x) + add


class FusedLinear(nn.Module):
    """`nn.Linear` (optionally followed by ReLU) as one oneDNN call with pre-reordered weights.
    (..., C_in) -> (..., C_out)."""

    def __init__(self, linear: nn.Linear, relu: bool):
        super().__init__()
        self.attr = "relu" if relu else "none"
        self.out_features = linear.out_features
        # plain attributes: the packed weight is an opaque oneDNN tensor (see FusedConv)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = linear.bias.detach() if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.attr, [], "")


def fuse_linears(module: nn.Module) -> nn.Module:
    """Replace, in place, every `nn.Linear` under `module` by a `FusedLinear`, absorbing a
    ReLU that directly follows it in an `nn.Sequential`."""
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            layers = list(child)
            fused: list[nn.Module] = []
            i = 0
            while i < len(layers):
                layer = layers[i]
                if isinstance(layer, nn.Linear):
                    relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
                    fused.append(FusedLinear(layer, relu))
                    i += 2 if relu else 1
                else:
                    fuse_linears(layer)
                    fused.append(layer)
                    i += 1
            setattr(module, name, nn.Sequential(*fused))
        elif isinstance(child, nn.Linear):
            setattr(module, name, FusedLinear(child, relu=False))
        else:
            fuse_linears(child)
    return module


def _input_sizes(backbone: nn.Module, example: torch.Tensor) -> dict[nn.Module, list[int]]:
    """The input size of every convolution of `backbone` on `example`."""
    sizes: dict[nn.Module, list[int]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        sizes.setdefault(module, list(args[0].shape))

    hooks = [module.register_forward_pre_hook(record)
             for module in backbone.modules() if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            backbone(example)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def fuse_for_cpu(backbone: MultitaskCNN, example: torch.Tensor) -> MultitaskCNN:
    """Replace the folded convolution blocks of `backbone` by oneDNN fused ones (in place).

    `example` (a batch of one, in the backbone's dtype and memory format) gives the
    convolution input sizes that oneDNN picks its weight layouts for.
    """
    sizes = _input_sizes(backbone, example)

    def replace_in(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, Residual):
                setattr(module, name, FusedResidual(child, sizes))
            elif isinstance(child, ConvBlock) and child.bn is None:
                setattr(module, name, FusedConvBlock(child.conv, child.relu is not None, sizes.get(child.conv)))
            elif isinstance(child, UpBlock):
                setattr(module, name, FusedConvBlock(child.deconv, True, sizes.get(child.deconv)))
            elif isinstance(child, StemConv):
                child.conv = FusedConv(child.conv, False, sizes.get(child.conv))
            else:
                replace_in(child)

    replace_in(backbone)
    return backbone


# --- the cascade, token-major ----------------------------------------------------------


def _linear_stack(sequential: nn.Sequential) -> nn.Sequential:
    """A `pointwise_mlp` (Conv1d k=1, BatchNorm1d, ReLU, ...) as Linear layers over (..., C),
    batch norms folded."""
    layers: list[nn.Module] = []
    modules = list(sequential)
    i = 0
    while i < len(modules):
        conv = modules[i]
        if not isinstance(conv, nn.Conv1d):
            raise TypeError(f"expected Conv1d in a pointwise MLP, got {type(conv).__name__}")
        weight, bias = conv.weight[:, :, 0], conv.bias
        i += 1
        if i < len(modules) and isinstance(modules[i], nn.BatchNorm1d):
            weight, bias = _fold_into(weight, bias, modules[i])
            i += 1
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        linear.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        linear.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        layers.append(linear)
        if i < len(modules) and isinstance(modules[i], nn.ReLU):
            layers.append(nn.ReLU())
            i += 1
    return nn.Sequential(*layers)


def _linear_from(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    linear.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    linear.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return linear


class TokenAttention(nn.Module):
    """`Attention` on (B, L, D) tokens; the three projections in one matmul.

    Channel c of a projection belongs to head c % heads (as in `Attention`).
    """

    def __init__(self, attention: Attention):
        super().__init__()
        self.num_heads = attention.num_heads
        self.head_dim = attention.head_dim
        weight = torch.cat([p.weight[:, :, 0] for p in attention.proj])
        bias = torch.cat([p.bias for p in attention.proj])
        self.qkv = _linear_from(weight, bias)
        self.merge = _linear_from(attention.merge.weight[:, :, 0], attention.merge.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        # (B, L, 3, head_dim, heads) -> (3, B, heads, L, head_dim)
        qkv = self.qkv(x).view(batch, length, 3, self.head_dim, self.num_heads).permute(2, 0, 4, 1, 3)
        query, key, value = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(query, key.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        message = torch.matmul(torch.softmax(scores, dim=-1), value)  # (B, heads, L, head_dim)
        message = message.permute(0, 2, 3, 1).reshape(batch, length, dim)
        return self.merge(message)


class TokenGATLayer(nn.Module):
    """`GATLayer` on (B, L, D) tokens."""

    def __init__(self, layer: GATLayer):
        super().__init__()
        self.attention = TokenAttention(layer.attention.attn)
        self.mlp = _linear_stack(layer.attention.mlp)
        self.reshape = None if layer.reshape is None else _linear_stack(layer.reshape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        message = self.mlp(torch.cat([x, self.attention(x)], dim=-1))
        skip = x if self.reshape is None else self.reshape(x)
        return skip + message


class CascadeStep(nn.Module):
    """One refinement step on token-major tensors.

    forward(points (B, L, 2) [0, 1] float32, table (B * F * F, C) channels-last features,
    batch) -> refined points (B, L, 2) float32.
    """

    def __init__(self, model: SPIGA, step: int, dtype: torch.dtype):
        super().__init__()
        config = model.config
        feature = config.feature_size
        kernel = config.window_kernel
        self.feature_size = feature
        self.kernel = kernel
        self.dtype = dtype
        self.sampler = "embedding_bag"
        self.offset_ratio = float(model.offset_ratio[step])
        # window sample offsets in feature pixels: grid_sample (align_corners=False) maps
        # grid g to pixel ((g + 1) F - 1) / 2, so centre (p + 0.5/F) * 2 - 1 + o gives p F + o F / 2
        offsets = model.theta_S[step][0, 0].double() * model.window_base.double() * feature / 2
        self.register_buffer("window_offsets", offsets.float(), persistent=False)
        conv = model.conv_window[step]
        # (D, C, K, K) -> (D, K, K, C): the order of the gathered channels-last windows
        weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
        self.window = _linear_from(weight, conv.bias)
        self.shape_encoder = _linear_stack(model.shape_encoder[step].encoder)
        regressor: StepRegressor = model.gcn[step]
        self.gat = nn.ModuleList([TokenGATLayer(layer) for layer in regressor.gat])
        self.decoder = _linear_stack(regressor.decoder.decoder)
        self.register_buffer("other_index", model.other_index.clone(), persistent=False)

    def sample_windows(self, points: torch.Tensor, table: torch.Tensor, batch: int) -> torch.Tensor:
        """Bilinear K x K windows around `points` (B, L, 2) from `table` (B*F*F, C)
        -> (B, L, K*K*C), with `grid_sample`'s border padding (align_corners=False).

        Each sample is a weighted sum of 4 table rows. The low corner is clamped to F - 2
        (with the fraction then reaching 1) so that the high corner is always in range: at
        the border this gives exactly grid_sample's clamped value.
        """
        size = self.feature_size
        kernel = self.kernel
        num_points = points.shape[1]
        # sample positions per axis (B, L, K, 2), clamped to the border as grid_sample does
        position = points.unsqueeze(2) * size + self.window_offsets.view(1, 1, kernel, 1)
        position = position.clamp(0.0, size - 1.0)
        low = torch.clamp(torch.floor(position), max=size - 2.0)
        frac = position - low
        low_index = low.long()
        base = (torch.arange(batch, device=points.device) * (size * size)).view(batch, 1, 1, 1)
        # top-left table row of every sample (B, L, K_y, K_x), and the fractions broadcast to it
        row = (base + (low_index[..., 1] * size).unsqueeze(3) + low_index[..., 0].unsqueeze(2)).reshape(-1, 1)
        fy = frac[..., 1].unsqueeze(3).expand(-1, -1, -1, kernel).reshape(-1, 1)
        fx = frac[..., 0].unsqueeze(2).expand(-1, -1, kernel, -1).reshape(-1, 1)
        corners = torch.cat([row, row + 1, row + size, row + size + 1], dim=1)  # (N, 4)
        weights = torch.cat([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], dim=1).to(table.dtype)
        if self.sampler == "embedding_bag":
            # gathers and weights the 4 rows in one pass, without materialising them
            windows = F.embedding_bag(corners, table, mode="sum", per_sample_weights=weights)
        else:  # plain Gather + MatMul (ONNX export)
            gathered = torch.index_select(table, 0, corners.reshape(-1)).view(-1, 4, table.shape[1])
            windows = torch.matmul(weights.unsqueeze(1), gathered)
        return windows.view(batch, num_points, kernel * kernel * table.shape[1])

    def relative_positions(self, points: torch.Tensor) -> torch.Tensor:
        """(B, L, 2) -> (B, L, 2(L-1)): each point's offset to every other point."""
        others = torch.index_select(points, 1, self.other_index.reshape(-1))  # (B, L (L-1), 2)
        return (points.unsqueeze(2) - others.view(points.shape[0], points.shape[1], -1, 2)).flatten(2)

    def forward(self, points: torch.Tensor, table: torch.Tensor, batch: int) -> torch.Tensor:
        embedded = self.window(self.sample_windows(points, table, batch).to(self.dtype))
        embedded = embedded + self.shape_encoder(self.relative_positions(points).to(self.dtype))
        x = embedded
        for layer in self.gat:
            x = layer(x)
        offset = self.decoder(x).float()
        return points + self.offset_ratio * F.hardtanh(offset)


class InferenceSPIGA(nn.Module):
    """SPIGA rearranged for inference (see the module docstring).

    forward(images (B, 3, S, S) BGR float [0, 1]) -> (landmarks (B, L, 2) in [0, 1] crop
    units, pose (B, 6) yaw, pitch, roll degrees, tx, ty, tz), both float32.
    """

    def __init__(self, model: SPIGA, backbone_dtype: torch.dtype = torch.float32,
                 cascade_dtype: torch.dtype = torch.float32, channels_last: bool = True, fuse: bool = False,
                 sampler: str = "embedding_bag"):
        super().__init__()
        model = copy.deepcopy(model).eval()
        self.config = model.config
        self.backbone_dtype = backbone_dtype
        self.channels_last = channels_last
        backbone = fold_batch_norms(model.visual_cnn)
        backbone.pre[1] = StemConv(backbone.pre[0], backbone.pre[1])
        backbone.pre[0] = nn.Identity()
        self.backbone = backbone.to(backbone_dtype)
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.fused = fuse
        if fuse:
            size = model.config.image_size
            example = torch.zeros(1, 3, size, size, dtype=backbone_dtype)
            if channels_last:
                example = example.contiguous(memory_format=torch.channels_last)
            fuse_for_cpu(self.backbone, example)
        self.pose_fc = copy.deepcopy(model.pose_fc)
        self.steps = nn.ModuleList([CascadeStep(model, step, cascade_dtype).to(cascade_dtype)
                                    for step in range(model.config.cascade_steps)])
        for step in self.steps:
            step.window_offsets = step.window_offsets.float()
            step.sampler = sampler
            if fuse:
                fuse_linears(step)
        self.register_buffer("mean_face_3d", model.mean_face_3d.clone(), persistent=False)
        self.register_buffer("camera_matrix", model.camera_matrix.clone(), persistent=False)
        self.requires_grad_(False)

    def project_mean_face(self, pose: torch.Tensor) -> torch.Tensor:
        """(B, 6) pose -> (B, L, 2) projected mean face in [0, 1] crop units (float32)."""
        rotation = euler_to_rotation_torch(pose[:, :3])
        points = project_points_torch(self.mean_face_3d, rotation, pose[:, 3:], self.camera_matrix)
        return points / self.config.feature_size

    def run_backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`MultitaskCNN.forward` for inference: (B, 3, S, S) -> the last stack's visual
        features (B, C, F, F) and pose features (B, C, 1, 1); nothing else is computed."""
        cnn = self.backbone
        x = cnn.pre(x)
        last = cnn.num_stacks - 1
        for i in range(cnn.num_stacks):
            hg, innermost = cnn.hgs[i](x)
            hg = cnn.hgs_out[i](hg)
            if i == last:
                return hg, cnn.hgs_core[i](innermost)
            attention = cnn.outs_points[i](hg) * cnn.E2Ptransform(cnn.outs_edges[i](hg))
            preds = cnn.outs_features[i](hg) * attention
            x = _conv_add(cnn.merge_preds[i], preds, _conv_add(cnn.merge_features[i], hg, x))
        raise AssertionError("unreachable")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = images.shape[0]
        x = images.to(self.backbone_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        visual, core = self.run_backbone(x)
        pose = self.pose_fc(core.flatten(1).float())
        points = self.project_mean_face(pose)
        # (B, C, F, F) -> (B * F * F, C): a view when the features are channels-last
        table = visual.permute(0, 2, 3, 1).reshape(batch * visual.shape[2] * visual.shape[3], visual.shape[1])
        table = table.to(self.steps[0].dtype)
        for step in self.steps:
            points = step(points, table, batch)
        return points, pose


def prepare_for_inference(model: SPIGA, precision: str = "float32", device: str | torch.device = "cpu",
                          channels_last: bool = True, cascade_precision: str | None = None,
                          fuse: bool | None = None, sampler: str | None = None) -> InferenceSPIGA:
    """An optimised, inference-only copy of `model` on `device`.

    Args:
        model: a `SPIGA` (left unchanged).
        precision: "float32", "bfloat16" (CPU or CUDA) or "float16" (CUDA only): the
            backbone's arithmetic. The pose, the projection and the landmark updates stay float32.
        device: where the copy runs.
        channels_last: run the backbone in channels-last memory format.
        cascade_precision: the cascade's layers (window projection, GAT, decoders); default:
            the same as `precision`.
        fuse: use oneDNN fused convolutions with pre-reordered weights (CPU only; default:
            on for CPUs when available). The result cannot be moved, copied, exported or
            compiled: use `fuse=False` for those.
        sampler: how the cascade samples its windows: "embedding_bag" (one fused
            gather-and-weight pass; the default on CPUs) or "gather" (plain Gather/MatMul
            operators; the default elsewhere, and what ONNX export uses).
    """
    device = torch.device(device)
    dtype = precision_dtype(precision, device)
    cascade_dtype = precision_dtype(cascade_precision or precision, device)
    if sampler is None:
        sampler = "embedding_bag" if device.type == "cpu" else "gather"
    if sampler not in ("embedding_bag", "gather"):
        raise ValueError(f"unknown window sampler {sampler!r}")
    if fuse is None:
        fuse = device.type == "cpu" and channels_last and onednn_fusion_available()
    elif fuse and (device.type != "cpu" or not onednn_fusion_available()):
        raise SpigaError("oneDNN fusion needs a CPU device and a torch built with oneDNN")
    optimised = InferenceSPIGA(model, dtype, cascade_dtype, channels_last, fuse=fuse, sampler=sampler)
    return optimised.to(device).eval()
