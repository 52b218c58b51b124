"""The CNN: CoordConv stem, stacked hourglasses with boundary attention between them.

Input (B, 3, S, S) -> visual features (B, C, S/4, S/4) of the last stack, and each
stack's innermost 4x4 feature for the pose head.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import ConvBlock, CoordChannels, Residual, UpBlock


class Hourglass(nn.Module):
    """Recursive hourglass of `depth` levels: (B, C, H, W) -> (B, C, H, W), plus the
    innermost feature (B, C, H / 2**depth, W / 2**depth)."""

    def __init__(self, depth: int, channels: int):
        super().__init__()
        self.depth = depth
        self.up1 = Residual(channels, channels)
        self.pool1 = ConvBlock(channels, channels, 2, 2, bn=True, relu=True)
        self.low1 = Residual(channels, channels)
        self.low2 = Hourglass(depth - 1, channels) if depth > 1 else Residual(channels, channels)
        self.low3 = Residual(channels, channels)
        self.up2 = UpBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low1(self.pool1(x))
        if self.depth > 1:
            low, innermost = self.low2(low)
        else:
            low = innermost = self.low2(low)
        return self.up1(x) + self.up2(self.low3(low)), innermost


class EdgeToPoint(nn.Module):
    """Spreads E edge maps onto the L points of each edge: (B, E, H, W) -> (B, L, H, W).

    A point's map is the sum of its edges' maps (plus 1 for points in no edge),
    clipped at 1. `edge2point` is the (L, E + 1) membership matrix of the landmark set.
    """

    def __init__(self, edge_matrix: torch.Tensor, size: int):
        super().__init__()
        self.register_buffer("ones", torch.ones(1, size, size))
        self.register_buffer("edge2point", edge_matrix.float().clone())

    def forward(self, edges: torch.Tensor) -> torch.Tensor:
        weight = self.edge2point[:, :-1].to(edges.dtype)
        constant = self.edge2point[:, -1].to(edges.dtype)
        spread = torch.einsum("behw,le->blhw", edges, weight) + constant.view(1, -1, 1, 1)
        return spread.clamp(max=1.0)


class MultitaskCNN(nn.Module):
    """Stem + `num_stacks` hourglasses.

    forward: images (B, 3, S, S), any float dtype (cast to `compute_dtype`) -> dict with
        `visual`: [(B, C, S/4, S/4)] the last stack's features (those the cascade reads),
        `core`: [(B, C, 1, 1)] the last stack's pose feature (the other stacks' pose
            branches exist for the official checkpoints' sake but feed nothing),
        `points`, `edges`: list per stack but the last of sigmoid maps (B, L|E, S/4, S/4).
    """

    def __init__(self, config: ModelConfig, edge_matrix: torch.Tensor):
        super().__init__()
        # follows the network's dtype (`.double()`, `.to(torch.bfloat16)`) whatever its layers
        # become after the inference transforms: the dtype the images are cast to
        self.register_buffer("dtype_anchor", torch.zeros(0), persistent=False)
        c = config.channels
        stem1, stem2 = config.stem_channels
        n_att = config.num_stacks - 1
        self.num_stacks = config.num_stacks
        self.pre = nn.Sequential(
            CoordChannels(config.image_size),
            ConvBlock(6, stem1, 7, 2, bn=True, relu=True),
            Residual(stem1, stem2),
            ConvBlock(stem2, stem2, 2, 2, bn=True, relu=True),
            Residual(stem2, stem2),
            Residual(stem2, c),
        )
        self.hgs = nn.ModuleList([Hourglass(config.hourglass_depth, c) for _ in range(config.num_stacks)])
        self.hgs_out = nn.ModuleList([
            nn.Sequential(Residual(c, c), ConvBlock(c, c, 1, bn=True, relu=True))
            for _ in range(config.num_stacks)])
        self.hgs_core = nn.ModuleList([
            nn.Sequential(Residual(c, c), ConvBlock(c, c, 2, 2, bn=True, relu=True),
                          Residual(c, c), ConvBlock(c, c, 2, 2, bn=True, relu=True))
            for _ in range(config.num_stacks)])
        self.outs_points = nn.ModuleList([
            nn.Sequential(ConvBlock(c, config.num_landmarks, 1, relu=False), nn.Sigmoid()) for _ in range(n_att)])
        self.outs_edges = nn.ModuleList([
            nn.Sequential(ConvBlock(c, config.num_edges, 1, relu=False), nn.Sigmoid()) for _ in range(n_att)])
        self.E2Ptransform = EdgeToPoint(edge_matrix, config.feature_size)
        self.outs_features = nn.ModuleList([ConvBlock(c, config.num_landmarks, 1, relu=False) for _ in range(n_att)])
        self.merge_preds = nn.ModuleList([ConvBlock(config.num_landmarks, c, 1, relu=False) for _ in range(n_att)])
        self.merge_features = nn.ModuleList([ConvBlock(c, c, 1, relu=False) for _ in range(n_att)])

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.dtype_anchor.dtype

    def forward(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        x = self.pre(images.to(self.compute_dtype))
        out: dict[str, list[torch.Tensor]] = {"visual": [], "core": [], "points": [], "edges": []}
        for i in range(self.num_stacks):
            hg, innermost = self.hgs[i](x)
            last = i == self.num_stacks - 1
            hg = self.hgs_out[i](hg)
            if last:  # only the last stack's features feed the cascade and its pose branch the pose head
                out["core"].append(self.hgs_core[i](innermost))
                out["visual"].append(hg)
            else:
                points = self.outs_points[i](hg)
                edges = self.outs_edges[i](hg)
                attention = points * self.E2Ptransform(edges)
                preds = self.outs_features[i](hg) * attention
                x = self.merge_preds[i](preds, residual=self.merge_features[i](hg, residual=x))
                out["points"].append(points)
                out["edges"].append(edges)
        return out
