"""Language-Aware Gate (VideoDistill, Zou et al., section 3.2) and its cross-attention ablation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LAGate(nn.Module):
    """Multi-head language-aware gate: each visual row is scaled by its cosine similarity to the text.

    For visual rows ``v_i`` (``i = 1..m``) and text ``t`` (``t_cls``, or ``L`` text tokens),
    with ``H`` heads of width ``D / H`` (superscript ``h`` = the ``h``-th slice)::

        key_l = W_k(t_l),   query_i = W_q(v_i),   value_i = W_v(v_i)                     (eq. 1)
        g_i^h = sum_{l real} cos(query_i^h, key_l^h)                                    (eq. 2)
        out_i = W_o(concat_h(g_i^h * value_i^h)) + v_i                                  (eq. 3 + skip)

    With ``t_cls`` alone (``L = 1``, the VideoDistill setting) ``g_i^h`` is one cosine; with
    ``L > 1`` text tokens the per-token similarities are summed ("we sum the similarity
    matrix"), padding tokens (``text_mask`` False) contributing nothing. ``g`` is the importance
    the paper expands ("repeat") over the value's width; it lies in ``[-L, L]``.

    Unlike attention, rows are never mixed: ``out_i`` depends on ``v_i`` and ``t`` only.

    Args:
        dim: width ``D`` of the visual rows (input and output).
        text_dim: width of the text input (``W_k`` maps it to ``D``); defaults to ``dim``.
        num_heads: ``H``; ``dim`` must be divisible by it.
        skip: add the input skip connection ``+ v_i``.
        pre_norm: compute queries and values from ``LayerNorm(v)`` (the skip still adds the
            raw ``v``), as in a pre-norm transformer block. Not in the paper's equations; the
            VideoDistill blocks of this library turn it on for stable stacking.
        eps: floor of the norms in the cosine.

    ``forward(v (b, m, D), text (b, d_t) or (b, L, d_t), text_mask (b, L) bool True = real,
    return_gates)`` returns ``out (b, m, D)``, and with ``return_gates`` also ``g (b, H, m)``.
    """

    def __init__(
        self,
        dim: int,
        text_dim: int | None = None,
        num_heads: int = 8,
        skip: bool = True,
        pre_norm: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"LAGate: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.skip = skip
        self.eps = eps
        self.norm = nn.LayerNorm(dim) if pre_norm else nn.Identity()
        self.w_q = nn.Linear(dim, dim)
        self.w_k = nn.Linear(text_dim or dim, dim)
        self.w_v = nn.Linear(dim, dim)
        self.w_o = nn.Linear(dim, dim)

    def importance(self, v: Tensor, text: Tensor, text_mask: Tensor | None = None) -> Tensor:
        """``g (b, H, m)``: per-head importance of each row (sum of cosines over real text tokens)."""
        b, m, _ = v.shape
        h = self.num_heads
        if text.ndim == 2:
            text, text_mask = text[:, None], None
        q = F.normalize(self.w_q(v).view(b, m, h, -1), dim=-1, eps=self.eps)
        k = F.normalize(self.w_k(text).view(b, text.shape[1], h, -1), dim=-1, eps=self.eps)
        sims = torch.einsum("bmhe,blhe->bhml", q, k)
        if text_mask is not None:
            sims = sims * text_mask[:, None, None, :].to(sims.dtype)
        return sims.sum(-1)

    def forward(
        self, v: Tensor, text: Tensor, text_mask: Tensor | None = None, return_gates: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        b, m, d = v.shape
        x = self.norm(v)
        gates = self.importance(x, text, text_mask)
        value = self.w_v(x).view(b, m, self.num_heads, -1)
        out = self.w_o((value * gates.transpose(1, 2).unsqueeze(-1)).reshape(b, m, d))
        if self.skip:
            out = out + v
        return (out, gates) if return_gates else out


class CrossAttentionGate(nn.Module):
    """Video-to-text cross-attention in place of an LA-Gate (VideoDistill Table 4 e).

    ::

        out = v + MHA(q = LayerNorm(v), k = v' = LayerNorm(t))      (rows of v attend to the text)

    Same call as :class:`LAGate`; ``return_gates`` gives ``None`` for the gates (a cross-attention
    has no per-row importance). Note that with a single text vector (``t_cls``) the attention
    weights are identically 1 and the block adds the same projected text vector to every row,
    which is why the VideoDistill parts pass the text *tokens* to this gate.

    Args:
        dim: width of the visual rows.
        text_dim: width of the text input; defaults to ``dim``.
        num_heads: attention heads.
        dropout: attention dropout.
    """

    def __init__(self, dim: int, text_dim: int | None = None, num_heads: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        text_dim = text_dim or dim
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(text_dim)
        self.attn = nn.MultiheadAttention(
            dim, num_heads, dropout=dropout, batch_first=True, kdim=text_dim, vdim=text_dim
        )

    def forward(
        self, v: Tensor, text: Tensor, text_mask: Tensor | None = None, return_gates: bool = False
    ) -> Tensor | tuple[Tensor, None]:
        if text.ndim == 2:
            text, text_mask = text[:, None], None
        kv = self.norm_kv(text)
        pad = None if text_mask is None else ~text_mask
        out = v + self.attn(self.norm_q(v), kv, kv, key_padding_mask=pad, need_weights=False)[0]
        return (out, None) if return_gates else out


GATES = ("la_gate", "cross_attention", "none")


def check_gate(kind: str) -> str:
    """``kind`` if it is one of :data:`GATES`, else ``ValueError`` (checked before any block is built)."""
    if kind not in GATES:
        raise ValueError(f"unknown gate {kind!r}; choose one of {', '.join(GATES)}")
    return kind


def build_gate(kind: str, dim: int, text_dim: int, num_heads: int, dropout: float = 0.0) -> nn.Module | None:
    """The language gate of a VideoDistill block: ``"la_gate"``, ``"cross_attention"`` or ``"none"`` (``None``)."""
    if check_gate(kind) == "la_gate":
        return LAGate(dim, text_dim, num_heads, skip=True, pre_norm=True)
    if kind == "cross_attention":
        return CrossAttentionGate(dim, text_dim, num_heads, dropout=dropout)
    return None


def gate_text(gate: nn.Module | None, text_cls: Tensor, text_tokens: Tensor, text_mask: Tensor) -> tuple:
    """``(text, mask)`` a gate reads: ``t_cls`` for an LA-Gate, the masked tokens for a cross-attention."""
    if isinstance(gate, CrossAttentionGate):
        return text_tokens, text_mask
    return text_cls, None
