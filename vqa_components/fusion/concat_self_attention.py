"""Single-stream fusion: self-attention over the concatenated video and text tokens."""

from __future__ import annotations

import torch
from torch import nn

from vqa_components.fusion.cross_attention import video_padding_mask
from vqa_components.interfaces import Fusion, FusionOutput, TextFeatures, VideoFeatures
from vqa_components.layers.transformer import TransformerBlock
from vqa_components.registry import FUSIONS


@FUSIONS.register("concat_self_attention")
class ConcatSelfAttentionFusion(Fusion):
    """A transformer over ``[CLS; text tokens; video tokens]``; the CLS output is pooled.

    ::

        [cls] + (text (b l d_t) -> proj + type_t) + (video (b t*n d_v) -> proj + type_v)
            -> TransformerBlock x L -> LayerNorm -> pooled = token 0

    This is the "3-layer transformer to fuse the vision and language" of the
    VideoDistill ablations (Table 4 a, d) when ``num_layers=3``.

    Args:
        video_dim: width of the backbone's tokens.
        text_dim: width of the text encoder's tokens.
        dim: fusion width (``out_dim``).
        num_layers: transformer blocks.
        num_heads: attention heads.
        dropout: dropout in the blocks.
    """

    def __init__(
        self, video_dim: int, text_dim: int, dim: int = 128, num_layers: int = 2, num_heads: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.out_dim = dim
        self.text_proj = nn.Linear(text_dim, dim)
        self.video_proj = nn.Linear(video_dim, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.type_embed = nn.Parameter(torch.zeros(2, dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, dropout=dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, video: VideoFeatures, text: TextFeatures) -> FusionOutput:
        b = text.tokens.shape[0]
        t = self.text_proj(text.tokens) + self.type_embed[0]
        v = self.video_proj(video.flat_tokens()) + self.type_embed[1]
        x = torch.cat([self.cls.expand(b, -1, -1), t, v], dim=1)
        v_pad = video_padding_mask(video)
        if v_pad is None:
            v_pad = torch.zeros(v.shape[:2], dtype=torch.bool, device=v.device)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=v.device), ~text.mask, v_pad], dim=1)
        for block in self.blocks:
            x = block(x, key_padding_mask=pad)
        x = self.norm(x)
        return FusionOutput(pooled=x[:, 0], tokens=x, mask=~pad)
