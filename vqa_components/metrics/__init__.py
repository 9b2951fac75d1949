"""Evaluation metrics (torchmetrics), correct under DDP: their states are summed (or gathered) across ranks.

:func:`answer_metric` chooses the metric object for a head's task. The model gives it every
evaluation batch (``metric.update_from(head, out, batch)``) and logs what ``compute()`` returns;
the metric asks the head what it needs: its answers and how right each is
(:meth:`~vqa_components.interfaces.Head.score`: exact, soft multi-annotator, exact match of
generated text) for the answer tasks, the pair embeddings for retrieval. A new kind of answer
needs a head method or a metric class, not a change to the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torchmetrics import Metric

from vqa_components.metrics.answer_metrics import AnswerMetrics
from vqa_components.metrics.count_error import CountError
from vqa_components.metrics.exact_match import normalize_answer
from vqa_components.metrics.grouped_accuracy import GroupedAccuracy
from vqa_components.metrics.retrieval import RetrievalRanks
from vqa_components.metrics.soft_accuracy import annotator_agreement

#: The metric of each head task (every one of :data:`vqa_components.interfaces.HEAD_TASKS`, which a
#: test checks: metrics sit below the interfaces and do not import them). Each class takes the
#: evaluation context (``groups``, ``breakdowns``, ``answer_vocab``) and has ``update_from(head, out, batch)``.
TASK_METRICS: dict[str, type[Metric] | None] = {
    "classify": AnswerMetrics,  # accuracy overall / per family / per breakdown; count MSE where counts are given
    "multiple_choice": AnswerMetrics,
    "generate": AnswerMetrics,  # the head scores exact match of the normalised generated text
    "retrieval": RetrievalRanks,  # R@1/5/10 and median rank over the whole split, both directions
}


def answer_metric(
    task: str,
    groups: Sequence[str] = (),
    breakdowns: Mapping[str, Sequence[str]] | None = None,
    answer_vocab: Sequence[str] = (),
) -> Metric | None:
    """A fresh metric for a head of ``task``, or ``None`` if the task has none."""
    cls = TASK_METRICS[task]
    return None if cls is None else cls(groups=groups, breakdowns=breakdowns, answer_vocab=answer_vocab)


__all__ = [
    "TASK_METRICS",
    "AnswerMetrics",
    "CountError",
    "GroupedAccuracy",
    "RetrievalRanks",
    "annotator_agreement",
    "answer_metric",
    "normalize_answer",
]
