"""Fusion baseline: self-attention over the concatenated text tokens and every stream's video tokens."""

from __future__ import annotations

import torch
from torch import nn

from vqa_components.fusion.co_tokenizer import (
    check_streams,
    clip_time_embedding,
    relative_frame_times,
    stream_valid,
    stream_widths,
    video_streams,
)
from vqa_components.interfaces import Fusion, FusionOutput, TextFeatures, VideoFeatures
from vqa_components.layers.transformer import TransformerBlock
from vqa_components.registry import FUSIONS


@FUSIONS.register("concat_self_attention")
class ConcatSelfAttentionFusion(Fusion):
    """A transformer over [CLS; text tokens; video tokens of every stream]; the CLS output is pooled.

    ::

        [cls] + (text (b l d_t) -> proj + type_t)
              + (stream s (b t_s*n_s d_s) -> proj_s + type_v [+ e_s] [+ time(tau)])   s = 1..S
            -> TransformerBlock x L -> LayerNorm -> pooled = token 0

    This is the "3-layer transformer to fuse the vision and language" of the
    VideoDistill ablations (Table 4 a, d) when ``num_layers=3``, and the concatenation
    baseline of the co-tokenization ablations: with several streams (``video.streams``)
    every stream's tokens join the sequence, so attention costs grow with the square of
    the total number of video tokens (``co_tokenizer`` grows linearly).

    Several streams: each has its own linear layer (``video_proj`` for the first,
    ``extra_video_proj[s - 1]`` for the others, also when the widths are equal) and a
    learned stream embedding ``e_s`` (``stream_embed``). A single stream builds exactly the
    parameters of earlier versions (same names, same initialisation order), so their
    checkpoints load; ``time_embedding=True`` adds the co-tokenizer's fixed sinusoidal code
    of each frame's relative clip time (no parameters; off by default, as before), which a
    comparison with ``co_tokenizer`` should turn on so both see the same information.

    Args:
        video_dim: width of the backbone's tokens: one int for every stream, or one width per
            stream (the stream count is its length).
        text_dim: width of the text encoder's tokens.
        dim: fusion width (``out_dim``).
        num_layers: transformer blocks.
        num_heads: attention heads.
        dropout: dropout in the blocks.
        num_streams: number of streams when ``video_dim`` is one int (default 1).
        time_embedding: add ``time(tau)`` (see ``co_tokenizer.clip_time_embedding``) to video tokens.

    With several streams ``extras["stream_bounds"]`` gives each stream's ``(start, stop)``
    slice of ``tokens`` (after the CLS and text tokens).
    """

    fsdp_blocks = ("TransformerBlock",)  # its repeated blocks: FSDP units (vqa_components.fsdp)

    def __init__(
        self,
        video_dim: int | list[int],
        text_dim: int,
        dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.0,
        num_streams: int | None = None,
        time_embedding: bool = False,
    ) -> None:
        super().__init__()
        widths = stream_widths(video_dim, num_streams, "concat_self_attention")
        self.video_dims = widths
        self.time_embedding = time_embedding
        self.out_dim = dim
        self.text_proj = nn.Linear(text_dim, dim)
        self.video_proj = nn.Linear(widths[0], dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.type_embed = nn.Parameter(torch.zeros(2, dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, dropout=dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        if len(widths) > 1:  # created last: a single stream keeps the earlier parameters and their init
            self.extra_video_proj = nn.ModuleList(nn.Linear(w, dim) for w in widths[1:])
            self.stream_embed = nn.Parameter(torch.zeros(len(widths), dim))
            nn.init.trunc_normal_(self.stream_embed, std=0.02)

    def forward(self, video: VideoFeatures, text: TextFeatures) -> FusionOutput:
        streams = video_streams(video)
        check_streams(streams, self.video_dims, "concat_self_attention")
        b = text.tokens.shape[0]
        device = text.tokens.device
        t = self.text_proj(text.tokens) + self.type_embed[0]
        parts = [self.cls.expand(b, -1, -1), t]
        pads = [torch.zeros(b, 1, dtype=torch.bool, device=device), ~text.mask]
        bounds, start = [], 1 + t.shape[1]
        for s, stream in enumerate(streams):
            proj = self.video_proj if s == 0 else self.extra_video_proj[s - 1]
            v = proj(stream.flat_tokens()) + self.type_embed[1]
            if len(streams) > 1:
                v = v + self.stream_embed[s]
            if self.time_embedding:
                time = clip_time_embedding(relative_frame_times(stream), self.out_dim).to(v.dtype)
                v = v + time.repeat_interleave(stream.tokens.shape[2], dim=1)
            valid = stream_valid(stream)
            parts.append(v)
            pads.append(
                torch.zeros(v.shape[:2], dtype=torch.bool, device=device) if valid is None else ~valid
            )
            bounds.append((start, start + v.shape[1]))
            start += v.shape[1]
        x = torch.cat(parts, dim=1)
        pad = torch.cat(pads, dim=1)
        for block in self.blocks:
            x = block(x, key_padding_mask=pad)
        x = self.norm(x)
        extras = {"stream_bounds": bounds} if len(streams) > 1 else {}
        return FusionOutput(pooled=x[:, 0], tokens=x, mask=~pad, extras=extras)
