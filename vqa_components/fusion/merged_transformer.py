"""E-ViLM's multimodal decoder: one transformer over [CLS; text tokens; video tokens] (eq. 2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vqa_components.fusion.cross_attention import ONE_STREAM_REMEDY, READS_ONE_STREAM, video_padding_mask
from vqa_components.interfaces import Fusion, FusionOutput, TextFeatures, VideoFeatures, require_single_stream
from vqa_components.layers.position_table import resize_table
from vqa_components.layers.transformer import TransformerBlock
from vqa_components.registry import FUSIONS

#: rows of ``type_embed``: ``t^L`` and ``t^V``
TEXT, VIDEO = 0, 1


@FUSIONS.register("merged_transformer")
class MergedTransformerFusion(Fusion):
    """E-ViLM's merged multimodal decoder DEC_VL: one transformer over [CLS; text; video] (eq. 2).

    ::

        [h^CLS, h^L, h^V] = DEC_VL([e^CLS, e^L + t^L, e^V + t^V])                      (2)

        e^CLS  learnable (1, dim)
        e^L  = W_L text.tokens                  (b, l, dim)       t^L, t^V: learnable token types
        e^V  = W_V video.tokens  [+ T_f] [+ S_p] (b, t*n, dim)    frame-major: token f*n + p
                  │
        [CLS │ e^L + t^L │ e^V + t^V] ──► TransformerBlock x num_layers ──► LayerNorm
                  │                            (key padding: text mask, frame_mask)
        pooled = h^CLS (b, dim);  tokens = all (b, 1 + l + t*n, dim)
        extras["text_tokens"] = h^L (b, l, dim);  extras["video_tokens"] = h^V (b, t*n, dim)

    The paper's decoder is "4 transformer blocks with decreased hidden size (384)", the
    defaults here. ``h^L`` and ``h^V`` hold one output per input token, in input order, so
    masked language modelling (``objective: mlm``) and masked video modelling predict at
    those positions; ``h^CLS`` is what video-text matching and the QA heads read.

    Choices the paper leaves open:

    * ``num_heads=6`` (heads of width 64, BERT's) and ``mlp_ratio=4`` (BERT's); the blocks are
      the library's pre-norm :class:`TransformerBlock` (BERT is post-norm), so the outputs pass
      a final LayerNorm.
    * ``W_L`` and ``W_V`` are linear layers with bias inside this fusion (the paper puts them at
      the end of each encoder: "a linear projection layer maps the language embedding to a
      consistent dimension"); there is no LayerNorm on the summed inputs.
    * No position embedding is added to the text tokens: the text encoder (a BERT) has them.
    * Video positions are not in eq. 2. ``frame_positions=True`` (default) adds a learnable
      per-frame embedding ``T_f``: the backbone encodes each frame alone, and without it the
      decoder would see the frames as an unordered set (order matters for TGIF Action and
      Transition). ``grid_positions=False`` (default) adds no per-grid-position embedding
      ``S_p``: the backbones' grid tokens already carry their place (frame_cnn and ViT add
      position embeddings, EdgeNeXt a positional encoding in its first SDTA block). The tables have
      ``max_frames`` / ``max_tokens_per_frame`` rows, linearly stretched for longer inputs
      (:func:`resize_table`). Both off is eq. 2 as written.
    * ``extras["video_features"]`` is the :class:`VideoFeatures` this fusion was given (after
      the sampler, if any), so that ``head: unimodal_retrieval`` can embed the video without the
      decoder.

    Args:
        video_dim: width of the backbone's tokens.
        text_dim: width of the text encoder's tokens.
        dim: decoder width (``out_dim``).
        num_layers: transformer blocks.
        num_heads: attention heads (``dim`` must be divisible by it).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        dropout: dropout on attention weights and in the MLPs.
        frame_positions: add ``T_f`` to the video tokens of frame ``f``.
        grid_positions: add ``S_p`` to the video tokens at grid position ``p``.
        max_frames: rows of ``T``.
        max_tokens_per_frame: rows of ``S``.

    Key padding: padding text tokens (``text.mask`` False) and the tokens of padded frames
    (``video.frame_mask`` False) are never attended to and are False in ``mask``; the CLS always
    is real, so no row attends to nothing. Features of several streams raise :class:`ConfigError`.
    """

    fsdp_blocks = ("TransformerBlock",)  # its repeated blocks: FSDP units (vqa_components.fsdp)

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        dim: int = 384,
        num_layers: int = 4,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        frame_positions: bool = True,
        grid_positions: bool = False,
        max_frames: int = 16,
        max_tokens_per_frame: int = 64,
    ) -> None:
        super().__init__()
        self.out_dim = dim
        self.text_proj = nn.Linear(text_dim, dim)
        self.video_proj = nn.Linear(video_dim, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.type_embed = nn.Parameter(torch.zeros(2, dim))
        embeddings = [self.cls, self.type_embed]
        self.temporal_embed = nn.Parameter(torch.zeros(max_frames, dim)) if frame_positions else None
        self.spatial_embed = nn.Parameter(torch.zeros(max_tokens_per_frame, dim)) if grid_positions else None
        embeddings += [p for p in (self.temporal_embed, self.spatial_embed) if p is not None]
        for p in embeddings:
            nn.init.trunc_normal_(p, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def video_positions(self, t: int, n: int) -> Tensor | None:
        """``(t*n, dim)`` what is added to the video tokens besides ``t^V`` (frame-major), or None."""
        if self.temporal_embed is None and self.spatial_embed is None:
            return None
        pos = self.type_embed.new_zeros(t, n, self.out_dim)
        if self.temporal_embed is not None:
            pos = pos + resize_table(self.temporal_embed, t)[:, None]
        if self.spatial_embed is not None:
            pos = pos + resize_table(self.spatial_embed, n)[None]
        return pos.reshape(t * n, self.out_dim)

    def forward(self, video: VideoFeatures, text: TextFeatures) -> FusionOutput:
        require_single_stream(video, f"fusion {self.registry_name}", READS_ONE_STREAM, ONE_STREAM_REMEDY)
        b, t, n, _ = video.tokens.shape
        length = text.tokens.shape[1]
        e_text = self.text_proj(text.tokens) + self.type_embed[TEXT]
        e_video = self.video_proj(video.flat_tokens()) + self.type_embed[VIDEO]
        pos = self.video_positions(t, n)
        if pos is not None:
            e_video = e_video + pos.to(e_video.dtype)
        x = torch.cat([self.cls.expand(b, -1, -1).to(e_text.dtype), e_text, e_video], dim=1)
        device = x.device
        video_pad = video_padding_mask(video)
        pad = torch.cat(
            [
                torch.zeros(b, 1, dtype=torch.bool, device=device),
                ~text.mask.bool(),
                torch.zeros(b, t * n, dtype=torch.bool, device=device) if video_pad is None else video_pad,
            ],
            dim=1,
        )
        for block in self.blocks:
            x = block(x, key_padding_mask=pad)
        x = self.norm(x)
        extras = {
            "text_tokens": x[:, 1 : 1 + length],
            "video_tokens": x[:, 1 + length :],
            "video_features": video,
        }
        return FusionOutput(pooled=x[:, 0], tokens=x, mask=~pad, extras=extras)
