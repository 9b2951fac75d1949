"""Frame-sampling blocks (VideoDistill FS-Blocks) that score every frame for each of K slots.

Shared by the ``gumbel_topk`` and ``soft`` samplers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vqa_components.interfaces import (
    Sampler,
    SamplerOutput,
    TextFeatures,
    VideoFeatures,
    require_single_stream,
)
from vqa_components.layers.divided_space_time import check_residual
from vqa_components.layers.la_gate import build_gate, check_gate, gate_text
from vqa_components.layers.position_table import resize_table
from vqa_components.layers.transformer import TransformerBlock
from vqa_components.samplers.uniform import NO_SAMPLER, SELECTS_ONE_STREAM


class FSBlock(nn.Module):
    """One frame-sampling block: language gate on the frame CLS tokens, then temporal self-attention.

    "We borrow the form of skip connections from the divided block in [Frozen in Time]"
    (VideoDistill 3.3): the gate plays the divided block's temporal step and the self-attention
    its spatial step, so with ``residual="frozen_in_time"`` (default)::

        u = Gate(v, t_cls)                 LA-Gate with its own input skip: v + W_o(g * W_v(LN(v)))
        v = v + MHSA(LN(u))                inter-frame interaction; the gate reaches the stream only through it
        v = v + MLP(LN(v))

    ``residual="sequential"`` adds the steps one after the other: ``v = Gate(v)``, then
    ``v = v + MHSA(LN(v))``, ``v = v + MLP(LN(v))``. Without a gate (``gate="none"``) both are
    a standard pre-norm transformer block.
    """

    def __init__(
        self,
        dim: int,
        text_dim: int,
        num_heads: int,
        gate: str = "la_gate",
        dropout: float = 0.0,
        residual: str = "frozen_in_time",
    ) -> None:
        super().__init__()
        self.residual = check_residual(residual)
        self.gate = build_gate(gate, dim, text_dim, num_heads, dropout)
        self.attn = TransformerBlock(dim, num_heads, dropout=dropout)

    def forward(self, v: Tensor, text: TextFeatures, pad: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if self.gate is None:
            return self.attn(v, key_padding_mask=pad), None
        t, t_mask = gate_text(self.gate, text.cls, text.tokens, text.mask)
        u, gates = self.gate(v, t, t_mask, return_gates=True)
        stream = v if self.residual == "frozen_in_time" else None
        return self.attn(u, key_padding_mask=pad, stream=stream), gates


class FrameScorer(nn.Module):
    """Selection logits ``x (b, K, N)``: L FS-blocks on the frame CLS tokens, then ``W_s``.

    ::

        v^0 = P(v_cls) + T[1..N]               P: Linear(video_dim -> dim) (identity if equal)
        v^l = FSBlock_l(v^{l-1}, t_cls)        l = 1..L
        x   = (W_s LN(v^L))^T                  (b, N, K) -> (b, K, N): row x^k scores every frame for slot k

    ``T`` is a learnable temporal embedding of ``max_frames`` rows; a clip of more frames uses
    the table linearly interpolated to ``N`` rows. Logits of padded frames are ``-inf``.

    Args:
        video_dim: width of the frame CLS tokens.
        text_dim: width of the text features.
        num_frames: ``K``, selection slots.
        dim: hidden width ``D`` of the blocks (default ``video_dim``).
        num_layers: ``L``.
        num_heads: heads of the gates and of the temporal attention.
        max_frames: rows of the temporal embedding.
        gate: ``"la_gate"``, ``"cross_attention"`` (V2T over the text tokens) or ``"none"``.
        dropout: dropout in the blocks.
        residual: skip form of the FS-blocks, ``"frozen_in_time"`` (paper) or ``"sequential"``.

    ``forward(cls (b, N, video_dim), text, frame_mask (b, N) True = real)`` returns
    ``(logits (b, K, N) float32, gates: list of (b, heads, N) per block, empty without LA-Gates)``.
    """

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        num_frames: int,
        dim: int | None = None,
        num_layers: int = 3,
        num_heads: int = 8,
        max_frames: int = 128,
        gate: str = "la_gate",
        dropout: float = 0.0,
        residual: str = "frozen_in_time",
    ) -> None:
        super().__init__()
        check_gate(gate)
        dim = dim or video_dim
        self.num_frames = num_frames
        self.in_proj = nn.Linear(video_dim, dim) if dim != video_dim else nn.Identity()
        self.temporal_embed = nn.Parameter(torch.zeros(max_frames, dim))
        nn.init.trunc_normal_(self.temporal_embed, std=0.02)
        self.blocks = nn.ModuleList(
            FSBlock(dim, text_dim, num_heads, gate, dropout, residual) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.w_s = nn.Linear(dim, num_frames)

    def forward(
        self, cls: Tensor, text: TextFeatures, frame_mask: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        n = cls.shape[1]
        v = self.in_proj(cls) + resize_table(self.temporal_embed, n).to(cls.dtype)
        valid = frame_validity(frame_mask)
        pad = None if valid is None else ~valid
        gates = []
        for block in self.blocks:
            v, g = block(v, text, pad)
            if g is not None:
                gates.append(g)
        logits = self.w_s(self.norm(v)).transpose(1, 2).float()
        if pad is not None:
            logits = logits.masked_fill(pad[:, None, :], float("-inf"))
        return logits, gates


def frame_validity(frame_mask: Tensor | None) -> Tensor | None:
    """``frame_mask`` with rows of no real frame treated as all real (so that something is selectable)."""
    if frame_mask is None:
        return None
    m = frame_mask.bool()
    return m | ~m.any(-1, keepdim=True)


def sort_slots(order_key: Tensor, *rows: Tensor) -> tuple[Tensor, ...]:
    """Reorder the K slots of every ``(b, K, ...)`` tensor in ``rows`` by ascending ``order_key (b, K)``
    (stable). Gathering keeps gradients. Returns ``(permutation (b, K), *sorted rows)``."""
    perm = order_key.argsort(dim=-1, stable=True)
    out = []
    for r in rows:
        idx = perm.view(*perm.shape, *([1] * (r.ndim - 2))).expand(*perm.shape, *r.shape[2:])
        out.append(r.gather(1, idx))
    return (perm, *out)


def apply_selection(video: VideoFeatures, weights: Tensor, **extras) -> VideoFeatures:
    """``VideoFeatures`` of the K slots: ``tokens = einsum('bkt,btnd->bknd', weights, tokens)``, same for ``cls``.

    Computed in float32 (outside autocast) so that a one-hot selection copies the frames
    exactly; the result has the input's dtype.
    """
    with torch.autocast(device_type=weights.device.type, enabled=False):
        w = weights.float()
        tokens = torch.einsum("bkt,btnd->bknd", w, video.tokens.float()).to(video.tokens.dtype)
        cls = torch.einsum("bkt,btd->bkd", w, video.cls.float()).to(video.cls.dtype)
    return video.replace(tokens=tokens, cls=cls, frame_mask=None, streams=None, extras={**video.extras, **extras})


class ScoredSampler(Sampler):
    """Shared body of the samplers that score frames with FS-blocks (``gumbel_topk``, ``soft``).

    Subclasses turn the scorer's logits ``(b, K, N)`` into selection weights; this class
    owns the scorer, the temperature and the slot ordering. Its constructor is the ``soft``
    sampler's (which keeps it; the arguments are documented there); ``gumbel_topk`` adds
    ``allow_repeats``.
    """

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        num_frames: int = 16,
        dim: int | None = None,
        num_layers: int = 3,
        num_heads: int = 8,
        tau: float = 1.0,
        gate: str = "la_gate",
        max_frames: int = 128,
        sort_by_time: bool = True,
        dropout: float = 0.0,
        residual: str = "frozen_in_time",
    ) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.num_frames = num_frames
        self.tau = tau
        self.sort_by_time = sort_by_time
        self.scorer = FrameScorer(
            video_dim=video_dim,
            text_dim=text_dim,
            num_frames=num_frames,
            dim=dim,
            num_layers=num_layers,
            num_heads=num_heads,
            max_frames=max_frames,
            gate=gate,
            dropout=dropout,
            residual=residual,
        )

    def score(self, video: VideoFeatures, text: TextFeatures) -> tuple[Tensor, list[Tensor]]:
        """Selection logits ``(b, K, N)`` and the FS-blocks' gates (:class:`ConfigError` for several streams)."""
        require_single_stream(video, f"sampler {self.registry_name}", SELECTS_ONE_STREAM, NO_SAMPLER)
        return self.scorer(video.cls, text, video.frame_mask)

    def select(
        self, video: VideoFeatures, weights: Tensor, idx: Tensor, logits: Tensor, gates: list[Tensor]
    ) -> SamplerOutput:
        """Order the slots (by frame index with ``sort_by_time``) and gather their features."""
        order = torch.arange(self.num_frames, device=idx.device).expand_as(idx)
        if self.sort_by_time:
            order, idx, weights, logits = sort_slots(idx, idx, weights, logits)
        selected = apply_selection(video, weights, selection_logits=logits, frame_gates=gates, slot_order=order)
        return SamplerOutput(video=selected, weights=weights, indices=idx)
