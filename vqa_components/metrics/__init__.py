"""Evaluation metrics (torchmetrics), correct under DDP: their states are summed across ranks.

:func:`answer_metric` chooses the metric object for a head's task; the head itself decides how
right each answer is (:meth:`~vqa_components.interfaces.Head.score`), so a new kind of answer
(generated text, soft multi-annotator scores) needs no change to the model.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchmetrics import Metric

from vqa_components.interfaces import HEAD_TASKS
from vqa_components.metrics.exact_match import normalize_answer
from vqa_components.metrics.grouped_accuracy import GroupedAccuracy

#: The answer metric of each head task: accuracy overall and per question family. A retrieval
#: head answers no question (its ranks are measured over a whole split; see docs/concepts.md).
TASK_METRICS: dict[str, type[Metric] | None] = {
    "classify": GroupedAccuracy,
    "multiple_choice": GroupedAccuracy,
    "generate": GroupedAccuracy,  # the head scores exact match of the normalised generated text
    "retrieval": None,
}
assert set(TASK_METRICS) == set(HEAD_TASKS)


def answer_metric(task: str, groups: Sequence[str] = ()) -> Metric | None:
    """A fresh metric for a head of ``task`` (``update(scores, groups)``), or ``None`` if it has none."""
    cls = TASK_METRICS[task]
    return None if cls is None else cls(groups)


__all__ = ["TASK_METRICS", "GroupedAccuracy", "answer_metric", "normalize_answer"]
