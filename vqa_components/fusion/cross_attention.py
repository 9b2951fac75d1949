"""Question-to-video cross-attention fusion."""

from __future__ import annotations

from torch import nn

from vqa_components.interfaces import Fusion, FusionOutput, TextFeatures, VideoFeatures, require_single_stream
from vqa_components.layers.transformer import CrossAttentionBlock, TransformerBlock, masked_mean
from vqa_components.registry import FUSIONS

#: What a fusion that reads only ``tokens`` says when it is given several streams (:func:`require_single_stream`).
READS_ONE_STREAM = "reads the tokens of one stream"
ONE_STREAM_REMEDY = "use a fusion that reads every stream (co_tokenizer) or a single-stream backbone"


def video_padding_mask(video: VideoFeatures):
    """``(b, t*n)`` True at tokens of padded frames (for attention masks), or None."""
    if video.frame_mask is None:
        return None
    n = video.tokens.shape[2]
    return ~video.frame_mask.repeat_interleave(n, dim=1)


@FUSIONS.register("cross_attention")
class CrossAttentionFusion(Fusion):
    """Text tokens attend to every video token (T2V cross-attention), then to each other.

    ::

        text (b l d_t) -> proj -> [cross-attn(q=text, kv=video tokens) -> self-attn(text)] x L
                        -> masked mean over text tokens -> pooled (b d)

    Args:
        video_dim: width of the backbone's tokens.
        text_dim: width of the text encoder's tokens.
        dim: fusion width (``out_dim``).
        num_layers: ``L``.
        num_heads: attention heads.
        dropout: dropout in the blocks.

    Features of several streams (a ``multi_stream`` backbone) raise :class:`ConfigError`.
    """

    fsdp_blocks = ("CrossAttentionBlock", "TransformerBlock")  # its repeated blocks: FSDP units (vqa_components.fsdp)

    def __init__(
        self, video_dim: int, text_dim: int, dim: int = 128, num_layers: int = 2, num_heads: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.out_dim = dim
        self.text_proj = nn.Linear(text_dim, dim)
        self.video_proj = nn.Linear(video_dim, dim)
        self.cross = nn.ModuleList(CrossAttentionBlock(dim, dim, num_heads, dropout=dropout) for _ in range(num_layers))
        self.self_attn = nn.ModuleList(TransformerBlock(dim, num_heads, dropout=dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, video: VideoFeatures, text: TextFeatures) -> FusionOutput:
        require_single_stream(video, f"fusion {self.registry_name}", READS_ONE_STREAM, ONE_STREAM_REMEDY)
        x = self.text_proj(text.tokens)
        v = self.video_proj(video.flat_tokens())
        v_pad = video_padding_mask(video)
        for cross, attn in zip(self.cross, self.self_attn):
            x = cross(x, v, v_pad)
            x = attn(x, key_padding_mask=~text.mask)
        x = self.norm(x)
        return FusionOutput(pooled=masked_mean(x, text.mask), tokens=x, mask=text.mask)
