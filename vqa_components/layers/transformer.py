"""Generic pre-norm transformer blocks shared by several parts."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MLP(nn.Sequential):
    """Two linear layers with GELU: ``d -> hidden -> out``."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim or dim)
        )


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP block: ``s + attn(ln(x))``, then ``+ mlp(ln(.))``.

    ``s`` is ``x`` itself (a standard pre-norm block) unless ``stream`` is given: then ``x`` is
    the output of an earlier step (VideoDistill's LA-Gate in an FS-block) that reaches the
    residual ``stream`` only through this attention's input (the skip form of Frozen in Time).

    Args:
        dim: token width ``d``.
        num_heads: attention heads (``d`` must be divisible by it).
        mlp_ratio: hidden width of the MLP as a multiple of ``d``.
        dropout: dropout on attention weights and MLP.

    ``forward(x (b, m, d), key_padding_mask (b, m) bool, True = ignore, stream (b, m, d)) -> (b, m, d)``.
    """

    def __init__(self, dim: int, num_heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout=dropout)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, stream: Tensor | None = None) -> Tensor:
        h = self.norm1(x)
        x = (x if stream is None else stream) + self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention + MLP: queries ``x`` attend to ``context``.

    ``forward(x (b, m, d), context (b, l, d_ctx), context_padding_mask (b, l) True = ignore)``.
    """

    def __init__(
        self, dim: int, context_dim: int | None = None, num_heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        context_dim = context_dim or dim
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(context_dim)
        self.attn = nn.MultiheadAttention(
            dim, num_heads, dropout=dropout, batch_first=True, kdim=context_dim, vdim=context_dim
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout=dropout)

    def forward(self, x: Tensor, context: Tensor, context_padding_mask: Tensor | None = None) -> Tensor:
        kv = self.norm_kv(context)
        x = x + self.attn(self.norm_q(x), kv, kv, key_padding_mask=context_padding_mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def masked_mean(x: Tensor, mask: Tensor | None, dim: int = 1) -> Tensor:
    """Mean of ``x`` over ``dim`` counting only positions where ``mask`` is True."""
    if mask is None:
        return x.mean(dim)
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim) / w.sum(dim).clamp_min(1.0)


def sinusoidal_positions(n: int, dim: int) -> Tensor:
    """Fixed sine/cosine position table ``(n, dim)`` (Vaswani et al., 2017)."""
    pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    i = torch.arange(0, dim, 2, dtype=torch.float32)
    angles = pos / torch.pow(10000.0, i / dim)
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table
