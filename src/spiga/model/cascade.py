"""The cascade: per landmark, visual window features + relative-position features,
refined by graph attention (GAT) layers, decoded into a bounded offset."""

from __future__ import annotations

import torch
from torch import nn

from .layers import pointwise_mlp


class Attention(nn.Module):
    """Multi-head dot-product self-attention over landmarks (SuperGlue style).

    (B, D, L) -> message (B, D, L) and attention (B, heads, L, L). Channels are split
    as `view(B, D / heads, heads, L)`: channel c belongs to head c % heads.
    """

    def __init__(self, num_heads: int, dim: int):
        super().__init__()
        self.head_dim = dim // num_heads
        self.num_heads = num_heads
        self.merge = nn.Conv1d(dim, dim, kernel_size=1)
        self.proj = nn.ModuleList([nn.Conv1d(dim, dim, kernel_size=1) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        query, key, value = (proj(x).view(batch, self.head_dim, self.num_heads, -1) for proj in self.proj)
        scores = torch.einsum("bdhn,bdhm->bhnm", query, key) / self.head_dim ** 0.5
        prob = torch.softmax(scores, dim=-1)
        message = torch.einsum("bhnm,bdhm->bdhn", prob, value)
        return self.merge(message.reshape(batch, self.head_dim * self.num_heads, -1)), prob


class MessagePassing(nn.Module):
    """x (B, D, L) -> MLP([x, attention(x)]) (B, D_out, L), and the attention."""

    def __init__(self, dim: int, num_heads: int, out_dim: int):
        super().__init__()
        self.attn = Attention(num_heads, dim)
        self.mlp = pointwise_mlp([dim * 2, dim * 2, out_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        message, prob = self.attn(x)
        return self.mlp(torch.cat([x, message], dim=1)), prob


class GATLayer(nn.Module):
    """Residual graph-attention layer: (B, D_in, L) -> (B, D_out, L)."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int):
        super().__init__()
        heads = num_heads
        self.reshape = None
        if in_dim != out_dim:
            heads = max(h for h in range(1, num_heads + 1) if in_dim % h == 0)
            self.reshape = pointwise_mlp([in_dim, out_dim])
        self.attention = MessagePassing(in_dim, heads, out_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        message, prob = self.attention(x)
        if self.reshape is not None:
            x = self.reshape(x)
        return x + message, prob


class OffsetDecoder(nn.Module):
    """(B, D, L) -> (B, 2, L) unbounded offsets."""

    def __init__(self, dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.decoder = pointwise_mlp([dim, *hidden, 2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(x)


class StepRegressor(nn.Module):
    """One cascade step: embeddings (B, L, D_embed) -> offsets (B, L, 2), attentions."""

    def __init__(self, embed_dim: int, dim: int, num_layers: int, num_heads: int, decoder_hidden: tuple[int, ...]):
        super().__init__()
        self.gat = nn.ModuleList(
            [GATLayer(embed_dim, dim, num_heads)] + [GATLayer(dim, dim, num_heads) for _ in range(num_layers - 1)])
        self.decoder = OffsetDecoder(dim, decoder_hidden)

    def forward(self, embedded: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = embedded.transpose(1, 2)
        probs = []
        for layer in self.gat:
            x, prob = layer(x)
            probs.append(prob)
        return self.decoder(x).transpose(1, 2), probs


class RelativePositionEncoder(nn.Module):
    """Relative offsets to the other landmarks (B, L, 2(L-1)) -> (B, L, D_embed)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int):
        super().__init__()
        self.encoder = pointwise_mlp([in_dim, *hidden, out_dim])

    def forward(self, relative: torch.Tensor) -> torch.Tensor:
        return self.encoder(relative.transpose(1, 2)).transpose(1, 2)


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
