"""Accuracy overall and per group (question family, type, ...), exact under DDP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def group_key(group: str) -> str:
    """A group's name as it appears in metric names: lower case, anything but letters and digits as ``_``."""
    return "".join(c if c.isalnum() else "_" for c in str(group).lower())


class GroupedAccuracy(Metric):
    """Mean answer score (accuracy), overall and for each of a fixed list of groups.

    Each answer's score is 1 (correct) or 0 (wrong), or a fraction for the soft scores some
    benchmarks use (e.g. iVQA's ``min(#annotators who gave it / 2, 1)``); the head decides
    (:meth:`~vqa_components.interfaces.Head.score`). The states are sums (of scores and of
    answers seen, overall and per group; float64, exact for integer counts below 2**53), summed across ranks, so
    every rank computes the same totals whatever each rank's shard held: a group that one rank
    never saw is still reduced (no rank waits on another), and nothing is averaged twice. The
    groups are fixed at construction so that every rank holds states of the same shape; a sample
    of a group not in the list counts toward the overall accuracy only.

    Args:
        groups: the group names (e.g. the dataset's question families).

    ``compute()`` returns ``{"acc": overall, "num_samples": n, "acc_<group>": ...}`` with one
    ``acc_<group>`` for each group that has at least one sample (:func:`group_key` names it).
    """

    full_state_update = False

    def __init__(self, groups: Sequence[str] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.groups = [str(g) for g in groups]
        self._index = {g: i for i, g in enumerate(self.groups)}
        n = len(self.groups)
        self.add_state("correct", torch.zeros(n + 1, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(n + 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct: Tensor, groups: Sequence[str] | None = None) -> None:
        """``correct``: ``(b,)`` booleans, or scores in ``[0, 1]``; ``groups``: the group of each sample (optional)."""
        correct = correct.reshape(-1).double()
        if correct.numel() and not bool(((correct >= 0) & (correct <= 1)).all()):
            raise ValueError("GroupedAccuracy: answer scores must lie in [0, 1]")
        n = len(self.groups)
        slot = torch.full_like(correct, n)  # slot n: overall only
        if groups is not None:
            if len(groups) != correct.numel():
                raise ValueError(f"GroupedAccuracy: {correct.numel()} answers but {len(groups)} groups")
            slot = torch.tensor([self._index.get(str(g), n) for g in groups], device=correct.device)
        self.correct += torch.bincount(slot, weights=correct, minlength=n + 1)
        self.total += torch.bincount(slot, minlength=n + 1).double()

    def compute(self) -> dict[str, Tensor]:
        total = self.total.sum()
        out = {"acc": self.correct.sum() / total.clamp(min=1), "num_samples": total.round().long()}
        for i, g in enumerate(self.groups):
            if self.total[i] > 0:
                out[f"acc_{group_key(g)}"] = self.correct[i] / self.total[i]
        return out
