"""Video-text matching (VTM) head, used to score multiple-choice options (VideoDistill)."""

from __future__ import annotations

from torch import Tensor

from vqa_components.interfaces import FusionOutput, Head, HeadOutput, TextFeatures
from vqa_components.layers.matching import MatchingClassifier
from vqa_components.registry import HEADS


@HEADS.register("vtm_choice")
class VTMHead(Head):
    """Linear two-class video-text matching head on ``v_cls*``; one score per (question, option) pair.

    VideoDistill (section 3.5, eq. 7) puts a linear projection on the pooled video
    feature ``v_cls*`` (``FusionOutput.pooled``) to predict two matching logits
    ``y = W v_cls* + b``, ``y = (y_nomatch, y_match)``; on multiple-choice datasets
    it answers with the option whose pair has the largest matching logit
    (section 4, appendix B.2). This head reports, per pair, the log-odds::

        score = y_match - y_nomatch = log p(match | v_cls*) - log p(no match | v_cls*)

    a monotone function of ``p(match)``, so the argmax over options is the
    paper's choice, and a softmax over the options of a question (what
    ``answer_cross_entropy`` computes) is well defined. ``logits`` are ``(b, 1)``;
    the model's multiple-choice path regroups them to ``(b, options)``.

    The 2-class layer is ``self.proj``, a
    :class:`~vqa_components.layers.matching.MatchingClassifier` (class 1 = matched, 0 = not
    matched), so the ``vtm`` objective (``share_head=True``) trains the same weights.

    Args:
        in_dim: width of ``FusionOutput.pooled``.
    """

    task = "multiple_choice"

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.proj = MatchingClassifier(in_dim)

    def matching_logits(self, pooled: Tensor) -> Tensor:
        """``(b, d) -> (b, 2)`` the two VTM logits ``(no match, match)``."""
        return self.proj(pooled)

    def forward(self, fused: FusionOutput, text: TextFeatures, targets: list[str] | None = None) -> HeadOutput:
        return HeadOutput(logits=self.proj.log_odds(fused.pooled)[:, None])
