"""Building blocks. Attribute names follow the official checkpoints, so their
state_dicts load with `strict=True` (see `spiga.model.layout` for the few tensors whose
shape differs).

Every block is written so that the inference transforms (`spiga.inference.optimize`) can
swap its leaves for equivalent ones (a folded convolution, a fused one, an identity)
without touching the forward code: each activation has a module of its own, and a
convolution that is followed by an addition takes the addend (`residual=`), so that a
fused convolution can do the addition in the same pass.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """Conv2d (no bias, 'same' padding for odd kernels) -> optional BatchNorm -> optional
    addition of `residual` -> optional ReLU.

    forward(x (B, C_in, H, W), residual=None (B, C_out, H', W')) -> (B, C_out, H / stride, W / stride)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
                 bn: bool = False, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=(kernel - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels) if bn else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if residual is not None:
            x = x + residual
        if self.relu is not None:
            x = self.relu(x)
        return x


class UpBlock(nn.Module):
    """2x2 stride-2 transposed conv (no bias) -> BatchNorm -> ReLU: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.deconv(x)))


class Residual(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1 (C/2) - BN-ReLU-3x3 - BN-ReLU-1x1 (C_out), plus skip.

    (B, C_in, H, W) -> (B, C_out, H, W). The 1x1 `skip_layer` is applied only when
    C_in != C_out, but exists always (the official checkpoints carry its weights).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = ConvBlock(in_channels, mid, 1, relu=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv2 = ConvBlock(mid, mid, 3, relu=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.relu3 = nn.ReLU()
        self.conv3 = ConvBlock(mid, out_channels, 1, relu=False)
        self.skip_layer = ConvBlock(in_channels, out_channels, 1, relu=False)
        self.use_skip_layer = in_channels != out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.skip_layer(x) if self.use_skip_layer else x
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return self.conv3(self.relu3(self.bn3(out)), residual=shortcut)


class CoordChannels(nn.Module):
    """Appends CoordConv channels: (B, C, S, S) -> (B, C + 3, S, S).

    `xx_channel` runs from -1 to 1 along the rows (dim 2) and `yy_channel` along the
    columns (dim 3), as in the official checkpoints; the third channel is
    r = sqrt((xx - 0.5)^2 + (yy - 0.5)^2).
    """

    def __init__(self, size: int):
        super().__init__()
        ramp = torch.arange(size, dtype=torch.float32) / (size - 1) * 2 - 1
        self.register_buffer("xx_channel", ramp.view(1, 1, size, 1).expand(1, 1, size, size).clone())
        self.register_buffer("yy_channel", ramp.view(1, 1, 1, size).expand(1, 1, size, size).clone())

    def channels(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """The three constant channels (batch, 3, S, S) in `dtype`."""
        xx = self.xx_channel.to(dtype).expand(batch, -1, -1, -1)
        yy = self.yy_channel.to(dtype).expand(batch, -1, -1, -1)
        rr = torch.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
        return torch.cat([xx, yy, rr], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.channels(x.shape[0], x.dtype)], dim=1)


class PointwiseMLP(nn.Sequential):
    """Linear layers over the last axis with BatchNorm1d + ReLU between them (not after the
    last): (..., C_in) -> (..., C_out).

    The official checkpoints store these as 1x1 `Conv1d` over (B, C, N); the token-major
    layout computes the same (batch norm statistics over every token of every sample) with
    plain matrix products. Sequential indices match the official keys (`0`, `1`, `3`, ...).
    """

    def __init__(self, widths: list[int]):
        layers: list[nn.Module] = []
        for i in range(1, len(widths)):
            layers.append(nn.Linear(widths[i - 1], widths[i]))
            if i < len(widths) - 1:
                layers.append(nn.BatchNorm1d(widths[i]))
                layers.append(nn.ReLU())
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        for layer in self:
            x = layer(x)
        return x.view(*leading, x.shape[-1])
