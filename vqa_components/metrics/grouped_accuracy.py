"""Accuracy overall, per question family and per other breakdown of the questions, exact under DDP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


def group_key(group: str) -> str:
    """A group's name as it appears in metric names: lower case, anything but letters and digits as ``_``."""
    return "".join(c if c.isalnum() else "_" for c in str(group).lower())


class GroupedAccuracy(Metric):
    """Mean answer score (accuracy), overall, for each question family and for each group of other
    breakdowns of the questions.

    Each answer's score is 1 (correct) or 0 (wrong), or a fraction for the soft scores some
    benchmarks use (e.g. iVQA's ``min(#annotators who gave it / 2, 1)``); the head decides
    (:meth:`~vqa_components.interfaces.Head.score`). The states are sums (of scores and of
    answers seen, overall and per group; float64, exact for integer counts below 2**53), summed
    across ranks, so every rank computes the same totals whatever each rank's shard held: a group
    that one rank never saw is still reduced (no rank waits on another), and nothing is averaged
    twice. The groups are fixed at construction so that every rank holds states of the same shape;
    a sample of a group not in the lists counts toward the overall accuracy only.

    Args:
        groups: the question families (the samples' ``family``).
        breakdowns: ``{field: [group, ...]}``, other sample fields to break the accuracy down by
            (NExT-QA's ``question_type``, AGQA's ``reasoning``, ...). A sample's value of a field
            is one group, or a list of groups (multi-label: the question counts toward each, as
            AGQA counts a question toward each of its reasoning categories).

    ``compute()`` returns ``{"acc": overall, "num_samples": n, "acc_<family>": ...,
    "acc_<field>_<group>": ...}`` with one entry for each group that has at least one sample
    (:func:`group_key` writes the names).
    """

    full_state_update = False

    def __init__(
        self, groups: Sequence[str] = (), breakdowns: Mapping[str, Sequence[str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.groups = [str(g) for g in groups]
        self.breakdowns = {str(f): [str(g) for g in values] for f, values in (breakdowns or {}).items()}
        # slot of each (field, group); "family" is the first field and keeps the plain names acc_<family>
        self._slots: dict[str, dict[str, int]] = {}
        self._names: list[str] = []
        for name, values in [("family", self.groups), *self.breakdowns.items()]:
            slots = self._slots.setdefault(name, {})
            for g in values:
                if g not in slots:
                    slots[g] = len(self._names)
                    self._names.append(f"acc_{group_key(g)}" if name == "family" else f"acc_{group_key(name)}_{group_key(g)}")
        n = len(self._names)
        self.add_state("correct", torch.zeros(n + 1, dtype=torch.float64), dist_reduce_fx="sum")  # slot n: overall
        self.add_state("total", torch.zeros(n + 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        correct: Tensor,
        groups: Sequence[str] | None = None,
        fields: Mapping[str, Sequence[Any] | None] | None = None,
    ) -> None:
        """``correct``: ``(b,)`` booleans, or scores in ``[0, 1]``; ``groups``: the family of each sample
        (optional); ``fields``: ``{field: the value of each sample}`` for the breakdowns (a value is
        a group or a list of groups; a field that is absent or ``None`` is left out)."""
        correct = correct.reshape(-1).double()
        b = correct.numel()
        if b and not bool(((correct >= 0) & (correct <= 1)).all()):
            raise ValueError("GroupedAccuracy: answer scores must lie in [0, 1]")
        n = len(self._names)
        rows: list[int] = list(range(b))  # the overall slot counts every sample once
        slots: list[int] = [n] * b
        columns = [("family", groups), *((f, (fields or {}).get(f)) for f in self.breakdowns)]
        for name, values in columns:
            if values is None:
                continue
            if len(values) != b:
                what = "groups" if name == "family" else f"values of {name!r}"
                raise ValueError(f"GroupedAccuracy: {b} answers but {len(values)} {what}")
            index = self._slots[name]
            for i, value in enumerate(values):
                for g in value if isinstance(value, (list, tuple)) else (value,):
                    slot = index.get(str(g))
                    if slot is not None:
                        rows.append(i)
                        slots.append(slot)
        slot_t = torch.tensor(slots, dtype=torch.long, device=correct.device)
        weights = correct[torch.tensor(rows, dtype=torch.long, device=correct.device)]
        self.correct += torch.bincount(slot_t, weights=weights, minlength=n + 1)
        self.total += torch.bincount(slot_t, minlength=n + 1).double()

    def compute(self) -> dict[str, Tensor]:
        n = len(self._names)
        out = {"acc": self.correct[n] / self.total[n].clamp(min=1), "num_samples": self.total[n].round().long()}
        for i, name in enumerate(self._names):
            if self.total[i] > 0:
                out[name] = self.correct[i] / self.total[i]
        return out
