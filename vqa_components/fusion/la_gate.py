"""Minimal fusion: LA-Gates on the video tokens, conditioned on the question's sentence feature."""

from __future__ import annotations

from torch import nn

from vqa_components.fusion.cross_attention import ONE_STREAM_REMEDY, READS_ONE_STREAM, video_padding_mask
from vqa_components.interfaces import Fusion, FusionOutput, TextFeatures, VideoFeatures, require_single_stream
from vqa_components.layers.la_gate import LAGate
from vqa_components.layers.transformer import masked_mean
from vqa_components.registry import FUSIONS


@FUSIONS.register("la_gate")
class LAGateFusion(Fusion):
    """Video tokens gated by their cosine similarity to ``t_cls`` (LA-Gate), then mean-pooled.

    ::

        v = W_in(video tokens)                                     (b, t*n, dim)
        v = LAGate_l(v, t_cls)   l = 1..L                          v_i + W_o(concat_h(g_i^h * W_v(LN(v_i))^h)),
                                                                   g_i^h = cos(W_q(LN(v_i))^h, W_k(t_cls)^h)
        tokens = LN(v);  pooled = mean of tokens over real frames  (b, dim)

    No token mixes with another (LA-Gates act row by row), so the pooled vector is the mean
    of independently gated tokens; tokens of padded frames are left out of the mean. The text
    enters only through the gates' importances, never as an added vector.

    Args:
        video_dim: width of the backbone's tokens.
        text_dim: width of ``text.cls``.
        dim: fusion width (``out_dim``); defaults to ``video_dim``.
        num_heads: gate heads.
        num_layers: stacked LA-Gates.

    ``extras["gates"]``: list (one per gate) of ``(b, heads, t*n)`` importances. Features of
    several streams (a ``multi_stream`` backbone) raise :class:`ConfigError`.
    """

    fsdp_blocks = ("LAGate",)  # its repeated blocks: FSDP units (vqa_components.fsdp)

    def __init__(
        self, video_dim: int, text_dim: int, dim: int | None = None, num_heads: int = 8, num_layers: int = 1
    ) -> None:
        super().__init__()
        dim = dim or video_dim
        self.out_dim = dim
        self.video_proj = nn.Linear(video_dim, dim)
        self.gates = nn.ModuleList(LAGate(dim, text_dim, num_heads, pre_norm=True) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, video: VideoFeatures, text: TextFeatures) -> FusionOutput:
        require_single_stream(video, f"fusion {self.registry_name}", READS_ONE_STREAM, ONE_STREAM_REMEDY)
        v = self.video_proj(video.flat_tokens())
        gates = []
        for gate in self.gates:
            v, g = gate(v, text.cls, return_gates=True)
            gates.append(g)
        v = self.norm(v)
        pad = video_padding_mask(video)
        mask = None if pad is None else ~pad
        return FusionOutput(pooled=masked_mean(v, mask), tokens=v, mask=mask, extras={"gates": gates})
