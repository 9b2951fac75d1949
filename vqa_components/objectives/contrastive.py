"""Contrastive constraint on matched video-text pairs (VideoDistill eq. 8, appendix A)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_components.interfaces import ModelOutput, Objective
from vqa_components.layers.precision import float32_region
from vqa_components.objectives._pairs import matched_pairs
from vqa_components.registry import OBJECTIVES


@OBJECTIVES.register("contrastive")
class MatchedPairContrastive(Objective):
    """InfoNCE between ``v_cls*`` and ``t_cls`` of the matched pairs of a batch (eq. 8).

    ::

        s_ij = cos(P_v v_i, P_t t_j)
        L_CL = -(1/B) sum_i log [ exp(s_ii / tau) / sum_j exp(s_ij / tau) ]

    with ``v_i = v_cls*`` (``out.fused.pooled``) and ``t_j = t_cls``
    (``out.text.cls``) of the un-swapped default forward, ``tau = 0.07``.

    This is the paper's *incomplete* contrastive learning (appendix A): ``v_i``
    is language-aware and was computed with its own text ``t_i``, so no video is
    re-encoded with the other texts of the batch (the full version would need
    ``B^2`` fusions). The paper uses it only as a stabiliser next to VTM and
    VG-MLM; alone it can be met by copying the text into ``v_cls*``.

    Choices where the paper is silent: the loss is averaged over the batch
    (eq. 8 writes a sum; the mean keeps it batch-size independent); it is one-sided
    (video-to-text rows, as eq. 8's denominator sums over ``j``); the projections
    ``P_v``/``P_t`` are identities when ``embed_dim`` is ``None`` and the widths agree,
    otherwise ``nn.Linear`` to ``embed_dim`` (default ``min(video_dim, text_dim)``);
    ``tau`` is fixed. In the multiple-choice forward only each question's correct
    (question, option) pair takes part (see ``matched_pairs``).

    Args:
        video_dim: width of ``FusionOutput.pooled``.
        text_dim: width of ``TextFeatures.cls``.
        embed_dim: shared width (``None``: identity if the widths agree, else the smaller one).
        temperature: ``tau``.
        weight: scale of this loss in the total.
    """

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        embed_dim: int | None = None,
        temperature: float = 0.07,
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"contrastive: temperature must be > 0, got {temperature}")
        self.weight = weight
        self.temperature = temperature
        if embed_dim is None and video_dim == text_dim:
            self.video_proj: nn.Module = nn.Identity()
            self.text_proj: nn.Module = nn.Identity()
        else:
            dim = min(video_dim, text_dim) if embed_dim is None else embed_dim
            self.video_proj = nn.Linear(video_dim, dim)
            self.text_proj = nn.Linear(text_dim, dim)

    def similarity(self, video: Tensor, text: Tensor) -> Tensor:
        """``(b, video_dim), (b, text_dim) -> (b, b)`` cosine similarities ``s_ij``, float32 also under autocast."""
        v, t = self.video_proj(video).float(), self.text_proj(text).float()
        with float32_region(v.device):
            return F.normalize(v, dim=-1) @ F.normalize(t, dim=-1).T

    def forward(self, model: nn.Module, batch: dict[str, Any], out: ModelOutput) -> dict[str, Tensor]:
        rows, _ = matched_pairs(model, batch, out)
        if len(rows) == 0:
            zero = out.fused.pooled.sum() * 0.0
            return {"loss": zero, "acc": zero.detach()}
        s = self.similarity(out.fused.pooled[rows], out.text.cls[rows])
        target = torch.arange(len(rows), device=s.device)
        with float32_region(s.device):
            loss = F.cross_entropy(s / self.temperature, target)
        acc = (s.argmax(-1) == target).float().mean()
        return {"loss": loss, "acc": acc.detach()}
