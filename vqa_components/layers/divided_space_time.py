"""Divided space-time attention block (TimeSformer's "divided" scheme, with the skip form of Frozen in Time)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_components.layers.transformer import MLP


class GroupedAttention(nn.Module):
    """Multi-head attention of a CLS token and ``G`` disjoint groups of tokens.

    ::

        cls'      = Attn(q = cls,      kv = [cls; every token of every group])
        group_g'  = Attn(q = group_g,  kv = [cls; group_g])        for g = 1..G

    One ``qkv`` and one output projection are shared by the CLS token and every group.
    ``forward(cls (b, 1, d), groups (b, G, S, d), pad (b, G, S) bool True = ignore)`` returns
    ``(cls' (b, 1, d), groups' (b, G, S, d))``. The CLS key is never masked, so no query ever
    attends to nothing.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"GroupedAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, cls: Tensor, groups: Tensor, pad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, g, s, d = groups.shape
        h = self.num_heads
        p = self.dropout if self.training else 0.0
        qc, kc, vc = self.qkv(cls).view(b, 1, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (b, h, 1, e)
        qg, kg, vg = self.qkv(groups).view(b, g, s, 3, h, d // h).permute(3, 0, 1, 4, 2, 5)  # (b, G, h, S, e)

        # the CLS token attends to itself and to every token
        k_all = torch.cat([kc, kg.transpose(1, 2).reshape(b, h, g * s, -1)], dim=2)
        v_all = torch.cat([vc, vg.transpose(1, 2).reshape(b, h, g * s, -1)], dim=2)
        keep_all = keep_grp = None
        if pad is not None:
            ones = torch.ones(b, 1, dtype=torch.bool, device=pad.device)
            keep_all = torch.cat([ones, ~pad.reshape(b, g * s)], dim=1)[:, None, None, :]
            keep_grp = torch.cat([ones[:, None].expand(b, g, 1), ~pad], dim=-1)[:, :, None, None, :]
        cls_out = F.scaled_dot_product_attention(qc, k_all, v_all, attn_mask=keep_all, dropout_p=p)

        # each group attends to the CLS token and to itself
        k_grp = torch.cat([kc.unsqueeze(1).expand(b, g, h, 1, -1), kg], dim=3)
        v_grp = torch.cat([vc.unsqueeze(1).expand(b, g, h, 1, -1), vg], dim=3)
        grp_out = F.scaled_dot_product_attention(qg, k_grp, v_grp, attn_mask=keep_grp, dropout_p=p)

        cls_out = cls_out.transpose(1, 2).reshape(b, 1, d)
        grp_out = grp_out.transpose(2, 3).reshape(b, g, s, d)
        return self.proj(cls_out), self.proj(grp_out)


#: Skip-connection forms of the blocks that chain two steps (VideoDistill's FS-blocks, vision
#: refinement and divided space-time blocks): ``"frozen_in_time"`` (the paper's) or ``"sequential"``.
RESIDUAL_FORMS = ("frozen_in_time", "sequential")


def check_residual(residual: str) -> str:
    if residual not in RESIDUAL_FORMS:
        raise ValueError(f"unknown residual form {residual!r}; choose one of {', '.join(RESIDUAL_FORMS)}")
    return residual


class DividedSpaceTimeBlock(nn.Module):
    """Divided space-time attention over ``[CLS; t*n patch tokens]`` (frame-major), pre-norm.

    Skip form of Frozen in Time (Bain et al., 2021; ``SpaceTimeBlock`` of its published code), the
    default, ``residual="frozen_in_time"``::

        y   = x + TemporalAttn(LN_t(x))          tokens at the same spatial position p, across the t frames
        out = s + SpatialAttn(LN_s(y))           tokens of the same frame f;  s = x  (or ``stream``)
        out = out + MLP(LN_m(out))

    The temporal output reaches the residual stream only through the spatial attention's input.
    TimeSformer's form, ``residual="sequential"``, adds both steps to the stream one after the other::

        x = x + TemporalAttn(LN_t(x));   x = x + SpatialAttn(LN_s(x));   x = x + MLP(LN_m(x))

    ``stream`` (Frozen in Time form only) is the residual stream the spatial output is added to
    when ``x`` is itself the output of an earlier step of the same block: VideoDistill's vision
    refinement passes the LA-Gate's output as ``x`` and the gate's input as ``stream``, so the
    gate, like the temporal step, reaches the stream only through the spatial attention.

    CLS handling (as in Frozen in Time): in both attention steps the CLS query attends to
    itself and to *all* patch tokens, and the CLS key/value is prepended to every group, so
    each patch token attends to ``[CLS; its group]``. Hence the temporal step mixes a patch
    token only with the tokens at its own spatial position (and the CLS), and the spatial step
    only with the tokens of its own frame (and the CLS). Tokens of padded frames
    (``frame_mask`` False) are never attended to.

    Args:
        dim: token width.
        num_heads: attention heads (both steps).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        dropout: attention-weight, residual and MLP dropout.
        residual: ``"frozen_in_time"`` (default) or ``"sequential"``.

    ``forward(x (b, 1 + t*n, d), num_frames t, frame_mask (b, t) bool True = real, stream (b, 1 + t*n, d))
    -> (b, 1 + t*n, d)``.
    """

    def __init__(
        self, dim: int, num_heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0, residual: str = "frozen_in_time"
    ) -> None:
        super().__init__()
        self.residual = check_residual(residual)
        self.norm_t = nn.LayerNorm(dim)
        self.attn_t = GroupedAttention(dim, num_heads, dropout)
        self.norm_s = nn.LayerNorm(dim)
        self.attn_s = GroupedAttention(dim, num_heads, dropout)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop = nn.Dropout(dropout)

    @staticmethod
    def _split(x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        b, m, d = x.shape
        if (m - 1) % t:
            raise ValueError(f"DividedSpaceTimeBlock: {m - 1} patch tokens are not {t} frames of equal size")
        return x[:, :1], x[:, 1:].reshape(b, t, (m - 1) // t, d)

    @staticmethod
    def _pad(frame_mask: Tensor | None, n: int) -> Tensor | None:
        return None if frame_mask is None else (~frame_mask.bool())[:, :, None].expand(-1, -1, n)

    def temporal_attention(self, x: Tensor, num_frames: int, frame_mask: Tensor | None = None) -> Tensor:
        """``TemporalAttn(LN_t(x))`` (no skip): groups are the spatial positions (``n`` groups of ``t`` tokens)."""
        cls, tok = self._split(self.norm_t(x), num_frames)
        b, t, n, d = tok.shape
        pad = self._pad(frame_mask, n)
        c, g = self.attn_t(cls, tok.transpose(1, 2), None if pad is None else pad.transpose(1, 2))
        return self.drop(torch.cat([c, g.transpose(1, 2).reshape(b, t * n, d)], dim=1))

    def spatial_attention(self, x: Tensor, num_frames: int, frame_mask: Tensor | None = None) -> Tensor:
        """``SpatialAttn(LN_s(x))`` (no skip): groups are the frames (``t`` groups of ``n`` tokens)."""
        cls, tok = self._split(self.norm_s(x), num_frames)
        b, t, n, d = tok.shape
        c, g = self.attn_s(cls, tok, self._pad(frame_mask, n))
        return self.drop(torch.cat([c, g.reshape(b, t * n, d)], dim=1))

    def forward(
        self, x: Tensor, num_frames: int, frame_mask: Tensor | None = None, stream: Tensor | None = None
    ) -> Tensor:
        y = x + self.temporal_attention(x, num_frames, frame_mask)
        if self.residual == "frozen_in_time":
            out = (x if stream is None else stream) + self.spatial_attention(y, num_frames, frame_mask)
        else:
            if stream is not None:
                raise ValueError("DividedSpaceTimeBlock: `stream` applies to the frozen_in_time residual form only")
            out = y + self.spatial_attention(y, num_frames, frame_mask)
        return out + self.drop(self.mlp(self.norm_m(out)))
