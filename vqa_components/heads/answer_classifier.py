"""Open-ended answer classification over a fixed answer vocabulary."""

from __future__ import annotations

from torch import nn

from vqa_components.interfaces import FusionOutput, Head, HeadOutput, TextFeatures
from vqa_components.registry import HEADS


@HEADS.register("answer_classifier")
class AnswerClassifier(Head):
    """Two-layer MLP over the pooled fused feature: ``(b, d) -> (b, num_answers)``.

    ``Linear(d, hidden) -> GELU -> Dropout -> Linear(hidden, num_answers)``; with
    ``hidden_dim=0`` a single linear layer. VideoDistill's open-ended head is
    this MLP on its video feature ``v_cls*``.

    Answers are the argmax class; a batch with ``answer_idx`` scores 1 where it matches, and one
    with several annotators' answers (``answers_idx``, iVQA) the soft accuracy
    ``min(#annotators who gave it / 2, 1)`` (:meth:`Head.score <vqa_components.interfaces.Head.score>`).
    Over a count vocabulary (TGIF-QA Count) the metric also takes the mean squared error of the
    counts the predicted classes name (``metrics.count_error``).

    Args:
        in_dim: width of ``FusionOutput.pooled``.
        num_answers: size of the answer vocabulary.
        hidden_dim: hidden width (default ``2 * in_dim``; 0 = linear).
        dropout: dropout before the last layer.
    """

    task = "classify"

    def __init__(self, in_dim: int, num_answers: int, hidden_dim: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_answers = num_answers
        hidden = 2 * in_dim if hidden_dim is None else hidden_dim
        if hidden:
            self.mlp = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_answers)
            )
        else:
            self.mlp = nn.Linear(in_dim, num_answers)

    def forward(self, fused: FusionOutput, text: TextFeatures, targets: list[str] | None = None) -> HeadOutput:
        return HeadOutput(logits=self.mlp(fused.pooled))
