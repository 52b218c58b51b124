"""Building blocks. Attribute names follow the official checkpoints, so their
state_dicts load with `strict=True`."""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """Conv2d (no bias, 'same' padding for odd kernels) -> optional BatchNorm -> optional ReLU.

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
                 bn: bool = False, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=(kernel - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels) if bn else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
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
        self.relu = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = ConvBlock(in_channels, mid, 1, relu=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = ConvBlock(mid, mid, 3, relu=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = ConvBlock(mid, out_channels, 1, relu=False)
        self.skip_layer = ConvBlock(in_channels, out_channels, 1, relu=False)
        self.use_skip_layer = in_channels != out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.skip_layer(x) if self.use_skip_layer else x
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        xx = self.xx_channel.to(x.dtype).expand(batch, -1, -1, -1)
        yy = self.yy_channel.to(x.dtype).expand(batch, -1, -1, -1)
        rr = torch.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
        return torch.cat([x, xx, yy, rr], dim=1)


def pointwise_mlp(widths: list[int]) -> nn.Sequential:
    """Conv1d(k=1) layers over (B, C, N) with BatchNorm1d + ReLU between them (not after the last)."""
    layers: list[nn.Module] = []
    for i in range(1, len(widths)):
        layers.append(nn.Conv1d(widths[i - 1], widths[i], kernel_size=1, bias=True))
        if i < len(widths) - 1:
            layers.append(nn.BatchNorm1d(widths[i]))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)
