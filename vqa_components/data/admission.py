"""What reaches the model: the samples a stage left out are counted, and long questions screened.

:class:`SkippedSamples` is a Lightning callback that :class:`~vqa_components.model.VideoQAModel`
adds to every trainer (``configure_callbacks``). Before each training, validation and test step
it takes the batch the loader produced and, in place, leaves in it only the samples the model can
take::

    loader batch ──> count what the loader left out ──> screen long questions ──> model step
    (batch["skipped"]: missing,     (SkipReport of the stage)   (on_long_question:       (admissible
     empty, undecodable clips)                                   skip / raise / truncate)  samples only)

At the end of each epoch it merges the ranks' reports with the records the dataset left out at
start-up, logs ``<stage>/skipped_videos`` and ``<stage>/skipped_<cause>``, warns with the first ids
of each cause (rank 0), and keeps the :class:`~vqa_components.data.bad_input.SkipSummary` in
:attr:`SkippedSamples.summaries` (``vqa test`` writes it to ``test_metrics.json``). Prediction is not
screened: every sample gets an answer (the encoder truncates).
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import Callback

from vqa_components.data.bad_input import (
    LONG_QUESTION_POLICIES,
    SkipReport,
    SkipSummary,
    question_token_counter,
    screen_long_questions,
    startup_skips,
)
from vqa_components.errors import ConfigError
from vqa_components.interfaces import pair_texts

log = logging.getLogger(__name__)


def batch_size(batch: dict[str, Any]) -> int:
    """The number of samples in a batch (``batch_size``, else the video's first dimension)."""
    if "batch_size" in batch:
        return int(batch["batch_size"])
    video = batch["video"]
    if isinstance(video, (tuple, list)):
        video = video[0]
    return int(video.shape[0])


def stage_dataset(trainer: Any, stage: str) -> Any:
    """The dataset the trainer's loader of ``stage`` reads (``None`` if there is none)."""
    loaders = {
        "train": lambda: trainer.train_dataloader,
        "val": lambda: trainer.val_dataloaders,
        "test": lambda: trainer.test_dataloaders,
    }[stage]()
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return getattr(loaders, "dataset", None)


class SkippedSamples(Callback):
    """Counts the samples each stage leaves out and screens questions longer than the text encoder's
    limit (module docstring).

    Args:
        on_long_question: ``"skip"`` leaves such a sample out and counts it (``question_too_long``),
            ``"raise"`` stops naming the record, ``"truncate"`` lets the encoder cut it. Encoders whose
            tokenizer cannot count (``TextEncoder.token_counter`` is ``None``) are not checked.
    """

    def __init__(self, on_long_question: str = "skip") -> None:
        if on_long_question not in LONG_QUESTION_POLICIES:
            raise ConfigError(
                f"on_long_question must be one of {', '.join(LONG_QUESTION_POLICIES)}, got {on_long_question!r}"
            )
        self.on_long_question = on_long_question
        self.reports: dict[str, SkipReport] = {}
        #: the last summary of each stage (``train``, ``val``, ``test``): what it left out, over every rank
        self.summaries: dict[str, SkipSummary] = {}
        self._unchecked_logged = False

    # ------------------------------------------------------------------ per batch
    def admit(self, trainer: Any, pl_module: Any, batch: dict[str, Any], stage: str) -> None:
        """Count what the loader left out of ``batch`` and drop (in place) the questions too long."""
        if batch.get("num_skipped"):
            self.reports.setdefault(stage, SkipReport()).add(batch.get("skipped", []))
        encoder, head = getattr(pl_module, "text_encoder", None), getattr(pl_module, "head", None)
        if (self.on_long_question == "truncate" or getattr(pl_module, "text_field", "question") != "question"
                or encoder is None or head is None or "question" not in batch or batch_size(batch) == 0):
            return
        counter = question_token_counter(encoder)  # looked up per batch: nothing unpicklable kept
        if counter is None:
            if not self._unchecked_logged:
                log.info("on_long_question: the text encoder cannot count tokens; questions are not checked")
                self._unchecked_logged = True
            return
        if head.task == "multiple_choice" and "options" in batch:
            texts = [pair_texts(q, opts) for q, opts in zip(batch["question"], batch["options"])]
        else:
            texts = [[q] for q in batch["question"]]
        source = str(getattr(stage_dataset(trainer, stage), "annotation_file", "") or "")
        admitted, skipped = screen_long_questions(batch, counter, texts, self.on_long_question, stage, source)
        if skipped:
            self.reports.setdefault(stage, SkipReport()).add(skipped)
            batch.clear()
            batch.update(admitted)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.admit(trainer, pl_module, batch, "train")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.admit(trainer, pl_module, batch, "val")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.admit(trainer, pl_module, batch, "test")

    # ------------------------------------------------------------------ per epoch
    def report(self, trainer: Any, pl_module: Any, stage: str) -> SkipSummary:
        """Merge the ranks' reports of ``stage`` (a collective: every rank calls it), log and keep it."""
        summary = self.reports.pop(stage, SkipReport()).reduce(startup_skips(stage_dataset(trainer, stage)))
        self.summaries[stage] = summary
        if summary.total and trainer.global_rank == 0:
            log.warning("%s", summary.format(stage))
        # the values are global already: no second reduction
        pl_module.log(f"{stage}/skipped_videos", float(summary.videos), sync_dist=False)
        for cause, n in summary.counts.items():
            pl_module.log(f"{stage}/skipped_{cause}", float(n), sync_dist=False)
        return summary

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.report(trainer, pl_module, "test")
