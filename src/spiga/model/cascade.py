"""The cascade: per landmark, visual window features + relative-position features,
refined by graph attention (GAT) layers, decoded into a bounded offset.

Token-major throughout: a step's tensors are (B, L, D), landmarks along the middle axis,
and every per-landmark layer is a `Linear` over the last axis (the official checkpoints
store them as 1x1 `Conv1d`; `spiga.model.layout` reshapes those tensors on loading).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import PointwiseMLP

WINDOW_SAMPLERS = ("embedding_bag", "gather")


class Attention(nn.Module):
    """Multi-head dot-product self-attention over landmarks (SuperGlue style).

    (B, L, D) -> message (B, L, D) and attention (B, heads, L, L). The query, key and value
    projections are one `Linear` (D -> 3D, in that order). Channel c of each belongs to
    head c % heads (the official layout: a `view(B, D / heads, heads, L)` of channels-first
    tensors).
    """

    def __init__(self, num_heads: int, dim: int):
        super().__init__()
        self.head_dim = dim // num_heads
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.merge = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, dim = x.shape
        # (B, L, 3, head_dim, heads) -> (3, B, heads, L, head_dim)
        qkv = self.qkv(x).view(batch, length, 3, self.head_dim, self.num_heads).permute(2, 0, 4, 1, 3)
        query, key, value = qkv.unbind(0)
        scores = torch.matmul(query, key.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        prob = torch.softmax(scores, dim=-1)
        message = torch.matmul(prob, value)  # (B, heads, L, head_dim)
        message = message.permute(0, 2, 3, 1).reshape(batch, length, dim)
        return self.merge(message), prob


class MessagePassing(nn.Module):
    """x (B, L, D) -> MLP([x, attention(x)]) (B, L, D_out), and the attention."""

    def __init__(self, dim: int, num_heads: int, out_dim: int):
        super().__init__()
        self.attn = Attention(num_heads, dim)
        self.mlp = PointwiseMLP([dim * 2, dim * 2, out_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        message, prob = self.attn(x)
        return self.mlp(torch.cat([x, message], dim=-1)), prob


class GATLayer(nn.Module):
    """Residual graph-attention layer: (B, L, D_in) -> (B, L, D_out)."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int):
        super().__init__()
        heads = num_heads
        self.reshape = None
        if in_dim != out_dim:
            heads = max(h for h in range(1, num_heads + 1) if in_dim % h == 0)
            self.reshape = PointwiseMLP([in_dim, out_dim])
        self.attention = MessagePassing(in_dim, heads, out_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        message, prob = self.attention(x)
        if self.reshape is not None:
            x = self.reshape(x)
        return x + message, prob


class OffsetDecoder(nn.Module):
    """(B, L, D) -> (B, L, 2) unbounded offsets."""

    def __init__(self, dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.decoder = PointwiseMLP([dim, *hidden, 2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(x)


class StepRegressor(nn.Module):
    """One cascade step's GAT layers and decoder: embeddings (B, L, D_embed) -> offsets
    (B, L, 2), attentions (per layer (B, heads, L, L))."""

    def __init__(self, embed_dim: int, dim: int, num_layers: int, num_heads: int, decoder_hidden: tuple[int, ...]):
        super().__init__()
        # follows the step's dtype whatever its layers become (see `MultitaskCNN.dtype_anchor`)
        self.register_buffer("dtype_anchor", torch.zeros(0), persistent=False)
        self.gat = nn.ModuleList(
            [GATLayer(embed_dim, dim, num_heads)] + [GATLayer(dim, dim, num_heads) for _ in range(num_layers - 1)])
        self.decoder = OffsetDecoder(dim, decoder_hidden)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.dtype_anchor.dtype

    def forward(self, embedded: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = embedded
        probs = []
        for layer in self.gat:
            x, prob = layer(x)
            probs.append(prob)
        return self.decoder(x), probs


class RelativePositionEncoder(nn.Module):
    """Relative offsets to the other landmarks (B, L, 2(L-1)) -> (B, L, D_embed)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int):
        super().__init__()
        self.encoder = PointwiseMLP([in_dim, *hidden, out_dim])

    def forward(self, relative: torch.Tensor) -> torch.Tensor:
        return self.encoder(relative)


class BufferList(nn.Module):
    """Constant tensors stored as buffers `0`, `1`, ... (state_dict keys `name.0`, ...)."""

    def __init__(self, tensors: list[torch.Tensor]):
        super().__init__()
        for i, tensor in enumerate(tensors):
            self.register_buffer(str(i), tensor)

    def __getitem__(self, index: int) -> torch.Tensor:
        return getattr(self, str(index))

    def __len__(self) -> int:
        return len(self._buffers)


def feature_table(features: torch.Tensor) -> torch.Tensor:
    """(B, C, F, F) feature maps -> (B * F * F, C), one row per feature pixel: a view when
    the maps are channels-last in memory, a copy otherwise."""
    batch, channels, height, width = features.shape
    return features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)


def sample_windows(points: torch.Tensor, table: torch.Tensor, batch: int, feature_size: int,
                   offsets: torch.Tensor, method: str = "embedding_bag") -> torch.Tensor:
    """Bilinear K x K windows of the feature maps around each point.

    Args:
        points: (B, L, 2) window centres, x, y in [0, 1] feature-map units.
        table: (B * F * F, C) the feature maps as rows (`feature_table`).
        batch: B.
        feature_size: F.
        offsets: (K,) sample offsets from the centre along each axis, in feature pixels.
        method: "embedding_bag" (gathers and weights the 4 rows of each sample in one pass,
            without materialising them) or "gather" (`index_select` + `matmul`: plain
            Gather/MatMul operators for ONNX graphs). The same numbers either way.
    Returns:
        (B, L, K * K * C), samples in (row, column, channel) order.

    Semantics of `grid_sample(mode="bilinear", padding_mode="border", align_corners=False)`
    on an `affine_grid` window (what the official model computes): a centre p maps to
    feature pixel p F, sample positions are clamped to [0, F - 1], and each sample is the
    bilinear mix of its 4 neighbours. The low corner is clamped to F - 2 (the fraction then
    reaching 1) so that the high corner is always in range: at the border this gives exactly
    the clamped value. Differentiable in `points` and `table`.
    """
    kernel = offsets.shape[0]
    num_points = points.shape[1]
    size = feature_size
    # sample positions per axis (B, L, K, 2), clamped to the border
    position = points.unsqueeze(2) * size + offsets.to(points.dtype).view(1, 1, kernel, 1)
    position = position.clamp(0.0, size - 1.0)
    low = torch.clamp(torch.floor(position), max=size - 2.0).detach()
    frac = position - low
    low_index = low.long()
    base = (torch.arange(batch, device=points.device) * (size * size)).view(batch, 1, 1, 1)
    # top-left table row of every sample (B, L, K_y, K_x), and the fractions broadcast to it
    row = (base + (low_index[..., 1] * size).unsqueeze(3) + low_index[..., 0].unsqueeze(2)).reshape(-1, 1)
    fy = frac[..., 1].unsqueeze(3).expand(-1, -1, -1, kernel).reshape(-1, 1)
    fx = frac[..., 0].unsqueeze(2).expand(-1, -1, kernel, -1).reshape(-1, 1)
    corners = torch.cat([row, row + 1, row + size, row + size + 1], dim=1)  # (N, 4)
    weights = torch.cat([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], dim=1).to(table.dtype)
    if method == "embedding_bag":
        windows = F.embedding_bag(corners, table, mode="sum", per_sample_weights=weights)
    elif method == "gather":
        gathered = torch.index_select(table, 0, corners.reshape(-1)).view(-1, 4, table.shape[1])
        windows = torch.matmul(weights.unsqueeze(1), gathered)
    else:
        raise ValueError(f"unknown window sampler {method!r}; known: {', '.join(WINDOW_SAMPLERS)}")
    return windows.reshape(batch, num_points, kernel * kernel * table.shape[1])
