"""Differentiable sparse sampling: question-aware top-K frame selection with straight-through Gumbel-Softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vqa_components.interfaces import SamplerOutput, TextFeatures, VideoFeatures, require_single_stream
from vqa_components.layers.precision import float32_region
from vqa_components.registry import SAMPLERS
from vqa_components.samplers._frame_scorer import ScoredSampler
from vqa_components.samplers.uniform import NO_SAMPLER, SELECTS_ONE_STREAM


def gumbel_noise(like: Tensor) -> Tensor:
    """Samples of the standard Gumbel distribution (``mu = 0``, ``beta = 1``): ``-log(E)``, ``E ~ Exp(1)``."""
    return -torch.empty_like(like).exponential_().log()


def straight_through_select(
    logits: Tensor, tau: float = 1.0, noise: bool = True, allow_repeats: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """One frame per slot from ``logits (b, K, N)``, in float32.

    ::

        y_soft^k = softmax((x^k + gumbels) / tau)           (no gumbels when noise=False)
        y_hard^k = onehot(argmax(y_soft^k))
        mask^k   = y_hard^k + (y_soft^k - stopgrad(y_soft^k))

    ``mask`` equals ``y_hard`` exactly in the forward pass and has the gradient of ``y_soft``.
    With ``allow_repeats=False`` the slots are filled in order ``k = 1..K`` and the frames taken
    by earlier slots get logit ``-inf`` before slot ``k``'s softmax, so no frame is chosen twice
    (if every selectable frame is taken, frames may repeat). ``-inf`` logits (padded frames)
    are never chosen.

    Returns ``(mask (b, K, N), y_soft (b, K, N), indices (b, K))``.
    """
    with float32_region(logits.device):
        x = logits.float()
        if noise:
            x = x + gumbel_noise(x)
        if allow_repeats:
            scores = x / tau
            idx = scores.argmax(-1)
            y_soft = scores.softmax(-1)
        else:
            b, k, n = x.shape
            taken = torch.zeros(b, n, dtype=torch.bool, device=x.device)
            softs, idxs = [], []
            for slot in range(k):
                s = x[:, slot] / tau
                finite = torch.isfinite(s)
                avail = finite & ~taken
                avail = torch.where(avail.any(-1, keepdim=True), avail, finite)
                s = s.masked_fill(~avail, float("-inf"))
                i = s.argmax(-1)
                softs.append(s.softmax(-1))
                idxs.append(i)
                taken = taken | F.one_hot(i, n).bool()
            y_soft, idx = torch.stack(softs, 1), torch.stack(idxs, 1)
        y_hard = F.one_hot(idx, x.shape[-1]).to(y_soft.dtype)
        mask = y_hard + (y_soft - y_soft.detach())
    return mask, y_soft, idx


@SAMPLERS.register("gumbel_topk")
class GumbelTopKSampler(ScoredSampler):
    """Question-aware top-K frame selection: FS-blocks score frames, straight-through Gumbel-Softmax picks K.

    VideoDistill section 3.3::

        x = FrameScorer(v_cls, t_cls)                         (b, K, N); see FrameScorer
        training:  mask^k = onehot(argmax(y_soft^k)) + y_soft^k - stopgrad(y_soft^k),
                   y_soft^k = softmax((x^k + gumbels) / tau)  (float32, also under autocast)
        eval:      no noise: argmax per slot (allow_repeats) or greedy distinct top-K
        v_patch^K = einsum('bkt,btnd->bknd', mask, v_patch)   (b, K, n, d)

    The forward selection is exactly one-hot per slot; gradients reach the scorer through
    ``y_soft``. With ``allow_repeats=False`` slot ``k`` cannot take a frame chosen by slots
    ``1..k-1`` (their logits are ``-inf`` for slot ``k``), so the K frames are distinct; at
    evaluation this is the greedy top-K by descending slot score.

    Slot order (the paper is silent): with ``sort_by_time`` the slots are reordered by the
    index of their chosen frame, in training and evaluation alike, so the selected frames
    keep their temporal order for the refinement blocks' temporal embedding. The rows of
    ``weights`` and of ``selection_logits`` are permuted together (gathering keeps gradients);
    ``extras["slot_order"]`` holds the permutation of the ``W_s`` rows.

    Args:
        video_dim: width of the backbone's tokens and frame CLS tokens.
        text_dim: width of the text features.
        num_frames: ``K``, frames selected.
        dim: hidden width of the FS-blocks (default ``video_dim``).
        num_layers: ``L`` FS-blocks.
        num_heads: heads of the gates and of the temporal attention.
        tau: Gumbel-Softmax temperature.
        allow_repeats: whether two slots may pick the same frame.
        gate: ``"la_gate"`` (paper) or ``"cross_attention"`` (Table 4 e; V2T attention over the
            text tokens), or ``"none"``.
        max_frames: rows of the learnable temporal embedding; longer clips use it interpolated.
        sort_by_time: reorder slots by chosen frame index.
        dropout: dropout in the blocks.
        residual: skip form of the FS-blocks: ``"frozen_in_time"`` (the paper's, default) or
            ``"sequential"`` (see ``FSBlock``).

    Output: ``SamplerOutput(video (K frames, frame_mask None), weights = mask (b, K, N) float32,
    indices (b, K))``; ``video.extras`` gains ``selection_logits (b, K, N)``, ``frame_gates``
    (list of ``(b, heads, N)``, one per FS-block) and ``slot_order (b, K)``.
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
        allow_repeats: bool = True,
        gate: str = "la_gate",
        max_frames: int = 128,
        sort_by_time: bool = True,
        dropout: float = 0.0,
        residual: str = "frozen_in_time",
    ) -> None:
        super().__init__(  # ScoredSampler's order up to tau; the ones after allow_repeats by name
            video_dim, text_dim, num_frames, dim, num_layers, num_heads, tau,
            gate=gate, max_frames=max_frames, sort_by_time=sort_by_time, dropout=dropout, residual=residual,
        )
        self.allow_repeats = allow_repeats

    def forward(self, video: VideoFeatures, text: TextFeatures) -> SamplerOutput:
        require_single_stream(video, f"sampler {self.registry_name}", SELECTS_ONE_STREAM, NO_SAMPLER)
        n = video.cls.shape[1]
        if not self.allow_repeats and n < self.num_frames:
            raise ValueError(f"cannot choose {self.num_frames} distinct frames of {n}; set allow_repeats=True")
        logits, gates = self.score(video, text)
        mask, _, idx = straight_through_select(logits, self.tau, noise=self.training, allow_repeats=self.allow_repeats)
        return self.select(video, mask, idx, logits, gates)
