"""VideoDistill vision refinement: LA-Gates interleaved with divided space-time attention over the selected frames."""

from __future__ import annotations

import torch
from torch import nn

from vqa_components.fusion.cross_attention import ONE_STREAM_REMEDY, READS_ONE_STREAM
from vqa_components.interfaces import Fusion, FusionOutput, TextFeatures, VideoFeatures, require_single_stream
from vqa_components.layers.divided_space_time import DividedSpaceTimeBlock, check_residual
from vqa_components.layers.la_gate import build_gate, check_gate, gate_text
from vqa_components.layers.position_table import resize_table
from vqa_components.registry import FUSIONS


@FUSIONS.register("vision_refinement")
class VisionRefinement(Fusion):
    """Language-aware refinement of the K selected frames into a video token ``v_cls*`` (VideoDistill 3.4).

    ::

        v_* = [v_cls*; P(v_patch^K) + T_k + S_p]        P: Linear(video_dim -> dim); T: temporal, S: spatial
                                                        learnable embeddings; v_cls*: learnable token
        block l = 1..L, skip form of Frozen in Time (residual="frozen_in_time", default):
            u   = Gate_l(v_*, t_cls)                    LA-Gate with its own input skip: v + W_o(g * W_v(LN(v)))
            y   = u + TemporalAttn_l(LN(u))
            v_* = v_* + SpatialAttn_l(LN(y))            gate and temporal step reach the stream only through it
            v_* = v_* + MLP_l(LN(v_*))
        pooled = LN(v_*)[0]                             the final v_cls*  (b, dim)
        tokens = LN(v_*)                                (b, 1 + K*n, dim)

    Each block first distills the visual tokens by the question (LA-Gate: every token, the
    video CLS included, is scaled by its cosine similarity to ``t_cls``; no text is added),
    then lets them interact by divided space-time attention borrowed from Frozen in Time:
    temporal attention among tokens at the same spatial position, spatial attention within
    each frame, the CLS attending to every token. Only the last block's ``v_cls*`` is pooled.
    ``residual="sequential"`` is the earlier form of this library: every step adds to the
    stream, ``v_* = Gate(v_*)``, ``v_* = v_* + TemporalAttn(LN(v_*))``, ``v_* = v_* + SpatialAttn(LN(v_*))``,
    then the MLP.

    The embeddings are added once, at the input of the first block (Appendix B): ``T`` has
    ``max_frames`` rows and ``S`` ``max_tokens_per_frame`` rows; longer inputs use the
    tables linearly interpolated. The CLS token gets no position embedding. Tokens of padded
    frames (``frame_mask`` False) are never attended to and are masked in the output.

    Args:
        video_dim: width of the (selected) frames' tokens.
        text_dim: width of the text features.
        dim: width ``D`` of the blocks (``out_dim``).
        num_layers: ``L`` refinement blocks.
        num_heads: heads of the gates and of the space-time attention.
        max_frames: rows of the temporal embedding (``K``).
        max_tokens_per_frame: rows of the spatial embedding (``n``).
        gate: ``"la_gate"`` (paper); ``"cross_attention"``: V2T cross-attention over the text
            tokens instead (Table 4 e); ``"none"``: no language in the blocks.
        dropout: dropout in the space-time blocks and cross-attention gates.
        residual: ``"frozen_in_time"`` (the paper's skip form, default) or ``"sequential"``.

    ``extras["gates"]``: list (one per block) of LA-Gate importances ``(b, heads, 1 + K*n)``,
    the first token being ``v_cls*``; an empty list for the other gates. Features of several
    streams (a ``multi_stream`` backbone) raise :class:`ConfigError`.
    """

    fsdp_blocks = ("DividedSpaceTimeBlock", "LAGate", "CrossAttentionGate")  # its repeated blocks: FSDP units (vqa_components.fsdp)

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        dim: int = 1024,
        num_layers: int = 3,
        num_heads: int = 8,
        max_frames: int = 64,
        max_tokens_per_frame: int = 256,
        gate: str = "la_gate",
        dropout: float = 0.0,
        residual: str = "frozen_in_time",
    ) -> None:
        super().__init__()
        check_gate(gate)
        self.residual = check_residual(residual)
        self.out_dim = dim
        self.video_proj = nn.Linear(video_dim, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.temporal_embed = nn.Parameter(torch.zeros(max_frames, dim))
        self.spatial_embed = nn.Parameter(torch.zeros(max_tokens_per_frame, dim))
        for p in (self.cls, self.temporal_embed, self.spatial_embed):
            nn.init.trunc_normal_(p, std=0.02)
        self.gates = nn.ModuleList(
            nn.Identity() if (g := build_gate(gate, dim, text_dim, num_heads, dropout)) is None else g
            for _ in range(num_layers)
        )
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(dim, num_heads, dropout=dropout, residual=residual) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, video: VideoFeatures, text: TextFeatures) -> FusionOutput:
        require_single_stream(video, f"fusion {self.registry_name}", READS_ONE_STREAM, ONE_STREAM_REMEDY)
        b, k, n, _ = video.tokens.shape
        x = self.video_proj(video.tokens)
        x = x + resize_table(self.temporal_embed, k).to(x.dtype)[:, None] + resize_table(self.spatial_embed, n).to(x.dtype)
        x = torch.cat([self.cls.expand(b, -1, -1).to(x.dtype), x.reshape(b, k * n, -1)], dim=1)
        frame_mask = video.frame_mask
        all_gates = []
        for gate, block in zip(self.gates, self.blocks):
            if isinstance(gate, nn.Identity):
                x = block(x, k, frame_mask)
                continue
            t, t_mask = gate_text(gate, text.cls, text.tokens, text.mask)
            u, g = gate(x, t, t_mask, return_gates=True)
            if g is not None:
                all_gates.append(g)
            x = block(u, k, frame_mask, stream=x) if self.residual == "frozen_in_time" else block(u, k, frame_mask)
        x = self.norm(x)
        mask = None
        if frame_mask is not None:
            real = frame_mask.bool().repeat_interleave(n, dim=1)
            mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=real.device), real], dim=1)
        return FusionOutput(pooled=x[:, 0], tokens=x, mask=mask, extras={"gates": all_gates})
