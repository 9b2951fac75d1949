"""Video-text retrieval by cosine similarity of ``v_cls*`` and ``t_cls`` (VideoDistill appendix D)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_components.interfaces import FusionOutput, Head, HeadOutput, ModelOutput, TextFeatures
from vqa_components.layers.precision import float32_region
from vqa_components.registry import HEADS


@HEADS.register("retrieval")
class RetrievalHead(Head):
    """Scores every video of a batch against every text: ``(b, b)`` scaled cosine similarities.

    ::

        e_v = normalize(W_v v_cls*)        v_cls* = FusionOutput.pooled  (b, video_dim)
        e_t = normalize(W_t t_cls)         t_cls  = TextFeatures.cls     (b, text_dim)
        logits[i, j] = cos(e_v_i, e_t_j) / tau

    Row ``i`` is video ``i`` against text ``j`` (video-to-text); the column view
    ``logits.T`` ranks videos for a text (text-to-video). VideoDistill's first way
    to retrieve (appendix B.2/D) picks the pair with the highest similarity of
    ``v_cls*`` and ``t_cls``. Because ``v_cls*`` is language-aware, row ``i`` was
    computed with text ``i``: off-diagonal entries compare a video distilled for
    another text (the "incomplete" contrast of appendix A). Train it with a
    cross-entropy over rows (target ``i``), as in the ``contrastive`` objective.

    The temperature is learnable by default, parameterised as in CLIP by
    ``log(1/tau)`` (initialised from ``temperature``, the paper's 0.07) with
    ``1/tau`` clamped to at most 100; ``learn_temperature=False`` keeps it fixed.

    Args:
        video_dim: width of ``FusionOutput.pooled``.
        text_dim: width of ``TextFeatures.cls``.
        embed_dim: width of the shared embedding space.
        temperature: initial (or fixed) ``tau``.
        learn_temperature: whether ``tau`` is a parameter.
    """

    task = "retrieval"
    max_scale = 100.0

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        embed_dim: int = 256,
        temperature: float = 0.07,
        learn_temperature: bool = True,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"retrieval: temperature must be > 0, got {temperature}")
        self.video_proj = nn.Linear(video_dim, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> Tensor:
        """``1 / tau`` (clamped to ``max_scale``)."""
        return self.log_scale.exp().clamp(max=self.max_scale)

    def embed_video(self, pooled: Tensor) -> Tensor:
        """``(b, video_dim) -> (b, embed_dim)`` unit-norm video embeddings."""
        return F.normalize(self.video_proj(pooled), dim=-1)

    def embed_text(self, cls: Tensor) -> Tensor:
        """``(b, text_dim) -> (b, embed_dim)`` unit-norm text embeddings."""
        return F.normalize(self.text_proj(cls), dim=-1)

    @staticmethod
    def similarity(video_emb: Tensor, text_emb: Tensor) -> Tensor:
        """Cosine similarity matrix ``(b_v, b_t)`` of two sets of embeddings (no temperature), float32 also under autocast."""
        with float32_region(video_emb.device):
            return F.normalize(video_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T

    def forward(self, fused: FusionOutput, text: TextFeatures, targets: list[str] | None = None) -> HeadOutput:
        sim = self.similarity(self.embed_video(fused.pooled), self.embed_text(text.cls))
        return HeadOutput(logits=sim * self.scale.float())

    def embeddings(self, out: ModelOutput) -> tuple[Tensor, Tensor]:
        """``(video (b, embed_dim), text (b, embed_dim))`` unit-norm embeddings of the batch's pairs,
        which the retrieval metric ranks over the whole split (``metrics.RetrievalRanks``)."""
        return self.embed_video(out.fused.pooled), self.embed_text(out.text.cls)

    def has_ground_truth(self, batch: dict[str, Any]) -> bool:
        """Retrieval answers no question (no answer accuracy): its metric ranks :meth:`embeddings`."""
        return False
