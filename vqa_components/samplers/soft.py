"""Soft frame sampling: each of K slots is a softmax-weighted sum of all dense frames (VideoDistill Table 4 c)."""

from __future__ import annotations

from vqa_components.interfaces import SamplerOutput, TextFeatures, VideoFeatures
from vqa_components.layers.precision import float32_region
from vqa_components.registry import SAMPLERS
from vqa_components.samplers._frame_scorer import ScoredSampler


@SAMPLERS.register("soft")
class SoftSampler(ScoredSampler):
    """The FS-block scores of ``gumbel_topk`` weight a sum of the dense frames instead of a hard top-K.

    VideoDistill Table 4 (c), "using the weighted sum of dense frames rather than top-k selection"::

        x = FrameScorer(v_cls, t_cls)                          (b, K, N), as in gumbel_topk
        w^k = softmax(x^k / tau)                               over the N frames; no Gumbel noise, no hard step
        v_patch^K = einsum('bkt,btnd->bknd', w, v_patch)       (b, K, n, d)

    Training and evaluation compute the same thing (deterministic). Padded frames get
    weight 0. ``indices`` is ``argmax_t w^k`` (the frame with the largest weight, for
    inspection only). With ``sort_by_time`` the slots are reordered by that index, as
    ``gumbel_topk`` orders its slots by the chosen frame.

    Args:
        video_dim: width of the backbone's tokens and frame CLS tokens.
        text_dim: width of the text features.
        num_frames: ``K``, slots produced.
        dim: hidden width of the FS-blocks (default ``video_dim``).
        num_layers: ``L`` FS-blocks.
        num_heads: heads of the gates and of the temporal attention.
        tau: softmax temperature.
        gate: ``"la_gate"``, ``"cross_attention"`` or ``"none"``.
        max_frames: rows of the learnable temporal embedding.
        sort_by_time: reorder slots by their argmax frame.
        dropout: dropout in the blocks.
        residual: skip form of the FS-blocks: ``"frozen_in_time"`` (the paper's, default) or
            ``"sequential"`` (see ``FSBlock``).

    Output: ``SamplerOutput(video (K slots), weights = w (b, K, N) float32, indices (b, K))``;
    ``video.extras`` gains ``selection_logits``, ``frame_gates`` and ``slot_order`` as in ``gumbel_topk``.
    """

    def forward(self, video: VideoFeatures, text: TextFeatures) -> SamplerOutput:
        logits, gates = self.score(video, text)
        with float32_region(logits.device):
            weights = (logits.float() / self.tau).softmax(-1)
        return self.select(video, weights, weights.argmax(-1), logits, gates)
