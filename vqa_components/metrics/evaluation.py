"""Evaluation of a model's answers, per stage: a Lightning callback.

:class:`AnswerEvaluation` is added to every trainer by :class:`~vqa_components.model.VideoQAModel`
(``configure_callbacks``). After each validation and test step it gives the step's output to the
metric of the head's task (:func:`~vqa_components.metrics.answer_metric`: accuracy overall, per
question family and per breakdown; exact match of generated text; retrieval ranks), which asks the
head what it needs (``metric.update_from(head, out, batch)``). At the end of the epoch it logs what
``compute()`` returns: ``val/acc``, ``test/acc_<family>``, ... (already summed over every DDP rank).
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.callbacks import Callback
from torchmetrics import Metric

from vqa_components.metrics import answer_metric


class AnswerEvaluation(Callback):
    """The head task's metric of each evaluation stage (module docstring). The model gives the
    context: ``answer_vocab``, ``families`` and ``breakdowns`` (from the datamodule, or the checkpoint)."""

    def __init__(self) -> None:
        self.metrics: dict[str, Metric | None] = {}

    def metric(self, pl_module: Any, stage: str) -> Metric | None:
        """The metric of ``stage``, made at first use (the groups are known by then, the same on every rank)."""
        if pl_module.head is None:
            return None
        if stage not in self.metrics:
            metric = answer_metric(pl_module.head.task, pl_module.families, pl_module.breakdowns, pl_module.answer_vocab)
            self.metrics[stage] = None if metric is None else metric.to(pl_module.device)
        return self.metrics[stage]

    def update(self, pl_module: Any, outputs: Any, batch: dict[str, Any], stage: str) -> None:
        metric = self.metric(pl_module, stage)
        if metric is not None and outputs is not None and outputs.head is not None:  # head None: backbone only
            metric.update_from(pl_module.head, outputs, batch)  # type: ignore[attr-defined]

    def log_epoch(self, pl_module: Any, stage: str) -> None:
        metric = self.metrics.pop(stage, None)
        if metric is None:
            return
        # compute() sums the counts over all ranks (every rank calls it once, also one that saw no
        # answer), so the values are global already: logging them needs no second reduction
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*before the ``update``")
            values = metric.compute()
        if values["num_samples"] > 0:  # no ground truth anywhere (caption pretraining): no accuracy
            for key, value in values.items():
                pl_module.log(f"{stage}/{key}", value.float(), prog_bar=key == "acc", sync_dist=False)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.update(pl_module, outputs, batch, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.update(pl_module, outputs, batch, "test")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.log_epoch(pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.log_epoch(pl_module, "test")
