"""The LightningCLI behind ``vqa fit/validate/test/predict``, and the callback that writes test metrics.

Module-level classes (not built inside a function) so that ``ddp_spawn`` can pickle the trainer
and its callbacks. Importing it filters Lightning's noise (:func:`quiet_lightning`).
:mod:`vqa_components.cli` imports it only when a Lightning subcommand runs.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from vqa_components import (
    fsdp,  # noqa: F401  registers --trainer.strategy vqa_fsdp (Lightning's StrategyRegistry)
    weights,
)
from vqa_components.cli_common import CLIError, find_checkpoint, is_launching_process
from vqa_components.data.admission import SkippedSamples, stage_dataset
from vqa_components.random_state import RandomStateCheckpoint

log = logging.getLogger(__name__)

#: Lightning messages that are not the user's business: internal deprecations, an advert, and the
#: advice to reduce epoch-level metrics across ranks, which the metrics and skip counts of the model's
#: callbacks (AnswerEvaluation, SkippedSamples) already are (only its losses are reduced by Lightning).
_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)",
    r"It is recommended to use `self.log\('(train|val|test)/(?![^']*loss)",
    r"LightningCLI's args parameter is intended to run from within Python",
)


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_lightning() -> None:
    """Filter what in Lightning's output is not the user's business; keep everything else."""
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


quiet_lightning()  # at import: also in the processes that ddp_spawn starts, which unpickle this module


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``monitor`` and ``mode`` may be ``"auto"`` (the ``vqa`` defaults).

    ``monitor: auto`` is what the model reports: at the first validation that is not the sanity
    check it becomes ``val/acc`` if the model logged an answer accuracy (its head has answers to
    score and the validation data has ground truth), else ``val/loss``, else no metric (the latest
    checkpoint is kept); the choice is logged once. ``mode: auto`` is ``min`` for a metric whose
    name contains ``loss`` and ``max`` for any other (accuracies, recalls). Other values are
    ``ModelCheckpoint``'s.
    """

    AUTO = "auto"

    def __init__(self, monitor: str | None = AUTO, mode: str = AUTO, **kwargs: Any) -> None:
        self.auto_mode = mode == self.AUTO
        self._configured = (monitor, mode)
        super().__init__(monitor=monitor, mode="min" if self.auto_mode else mode, **kwargs)
        if self.auto_mode and monitor != self.AUTO:
            self._set_mode(self._mode_for(monitor))

    @staticmethod
    def _mode_for(monitor: str | None) -> str:
        return "min" if monitor is None or "loss" in monitor else "max"

    def _set_mode(self, mode: str) -> None:
        self.mode = mode
        self.kth_value = torch.tensor(torch.inf if mode == "min" else -torch.inf)

    def _resolve_monitor(self, trainer: Any) -> None:
        if self.monitor != self.AUTO:
            return
        metrics = trainer.callback_metrics
        self.monitor = next((m for m in ("val/acc", "val/loss") if m in metrics), None)
        if self.auto_mode:
            self._set_mode(self._mode_for(self.monitor))
        log.info("checkpoint.monitor auto: %s", f"{self.monitor} (mode {self.mode})" if self.monitor else "none (the latest)")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._resolve_monitor(trainer)
        super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._should_save_on_train_epoch_end(trainer):  # no validation loop: decide from what is there
            self._resolve_monitor(trainer)
        super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """``last.ckpt`` is the state at the end of training. (Lightning 2.6 writes it here only when no
        ``last.ckpt`` was written earlier in the run, so a run that stops at ``max_steps`` in the middle
        of an epoch would leave the one of the epoch before.)"""
        if self.save_last and self._last_checkpoint_saved and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    @property
    def state_key(self) -> str:
        """Keyed on the configured ``monitor``/``mode`` (``auto``), so a resumed run finds its state."""
        return self._generate_state_key(
            monitor=self._configured[0], mode=self._configured[1], every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs, train_time_interval=self._train_time_interval,
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("monitor")
        if self.monitor == self.AUTO and saved not in (None, self.AUTO):  # resuming: keep the run's choice
            self.monitor = saved
            if self.auto_mode:
                self._set_mode(self._mode_for(saved))
        super().load_state_dict(state_dict)


class TestMetricsWriter(Callback):
    """Writes the final test metrics to ``<default_root_dir>/test_metrics.json`` and prints a table.

    The file holds every ``test/...`` figure the model logged (accuracies, ``count_mse``, retrieval
    recalls, ``num_samples``, ``skipped_videos`` and ``skipped_<cause>`` counts) as numbers, and:

    * ``"protocol"``: how the test split is scored, when its dataset says (the benchmark
      adapters' ``protocol``: metric, vocabulary size and origin, unknown answers, skipped records);
    * ``"skipped"``: ``{cause: {"count", "first_ids", "first"}}`` for the samples the test left
      out, when it left any out (over every rank; ``vqa_components.data.bad_input``).
    """

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        written: dict[str, Any] = dict(metrics)
        protocol = getattr(stage_dataset(trainer, "test"), "protocol", None)
        if isinstance(protocol, dict):
            written["protocol"] = protocol
        admission = next((c for c in trainer.callbacks if isinstance(c, SkippedSamples)), None)
        summary = admission.summaries.get("test") if admission is not None else None
        if summary is not None and summary.total:
            written["skipped"] = summary.as_dict()
        path = Path(trainer.default_root_dir) / "test_metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
        rows = [("overall", metrics["test/acc"])] if "test/acc" in metrics else []
        rows += sorted((k[len("test/acc_") :], v) for k, v in metrics.items() if k.startswith("test/acc_"))
        if rows:
            width = max(15, *(len(r[0]) for r in rows))
            print(f"\n{'question family'.ljust(width)}  test accuracy")
            for name, value in rows:
                print(f"{name.ljust(width)}  {100 * value:12.2f} %")
        others = sorted((k[len("test/") :], v) for k, v in metrics.items() if k.startswith(_OTHER_FIGURES))
        if others:
            width = max(15, *(len(r[0]) for r in others))
            print(f"\n{'metric'.ljust(width)}  test value")
            for name, value in others:
                recall = re.fullmatch(r"(t2v|v2t)_r\d+", name) is not None
                print(f"{name.ljust(width)}  {f'{100 * value:12.2f} %' if recall else f'{value:12.4g}'}")
        if "test/num_samples" in metrics:
            print(f"samples evaluated: {int(metrics['test/num_samples'])}")
        if summary is not None and summary.total:
            print(summary.format("test"))
        print(f"test metrics written to {path}")


class PredictionsWriter(Callback):
    """Writes what ``vqa predict`` answered to ``<default_root_dir>/predictions.jsonl``: one line per
    sample, ``{"video_id", "question", "prediction"}`` (the model's ``predict_step`` rows), in the
    loader's order, every rank's rows gathered on rank 0."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self.rows = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.rows.extend(outputs or [])

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        rows = self.rows
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        if not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / "predictions.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{len(rows)} predictions written to {path}")


#: ``test/`` figures besides accuracies printed in the table (the count error, retrieval ranks)
_OTHER_FIGURES = ("test/count_mse", "test/t2v_", "test/v2t_")


def guard_earlier_run(ckpt_dir: Path, root: Path, overwrite: bool) -> None:
    """Stop a ``fit`` that would write over an earlier run's checkpoints, or remove them with ``overwrite``."""
    found = sorted(ckpt_dir.glob("*.ckpt"))
    if not found:
        return
    if not overwrite:
        names = ", ".join(f.name for f in found[:3]) + (" ..." if len(found) > 3 else "")
        raise CLIError(
            f"{ckpt_dir} already holds checkpoints of an earlier run ({names}): resume it with --ckpt_path last, "
            f"replace it with --overwrite, or choose another --trainer.default_root_dir"
        )
    # the earlier run's test figures go too: they would describe another model
    for f in [*found, root / "test_metrics.json"]:
        f.unlink(missing_ok=True)
    log.warning("--overwrite: removed %d checkpoint(s) of an earlier run from %s", len(found), ckpt_dir)


class VQACLI(LightningCLI):
    """LightningCLI with our checkpoint defaults, ``--ckpt_path best|last`` and the earlier-run guard.

    ``overwrite`` (the ``vqa fit --overwrite`` flag, taken off the command line by
    :func:`vqa_components.cli.run_cli`) lets ``fit`` replace an earlier run's checkpoints.
    """

    def __init__(self, *args: Any, overwrite: bool = False, **kwargs: Any) -> None:
        self.overwrite = overwrite  # before super().__init__, which runs before_instantiate_classes
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": BestCheckpoint.AUTO,
                "checkpoint.mode": BestCheckpoint.AUTO,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:02d}",
                "checkpoint.enable_version_counter": False,
            }
        )

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        root = cfg.trainer.default_root_dir or "runs/default"
        cfg.trainer.default_root_dir = root
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = str(Path(root) / "checkpoints")
        if cfg.trainer.get("fast_dev_run"):
            # fast_dev_run promises no checkpoints, but Lightning 2.6's ModelCheckpoint.on_train_end
            # still writes last.ckpt when save_last is set (a full copy of the model on disk).
            cfg.checkpoint.save_last = False
        if cfg.trainer.logger is None or cfg.trainer.logger is True:
            cfg.trainer.logger = {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": root, "name": "logs"},
            }
        ckpt = cfg.get("ckpt_path")
        if ckpt in ("best", "last"):  # fit too: Lightning's own "last" would start from scratch without one
            cfg.ckpt_path = find_checkpoint(root, ckpt)
        if ckpt is not None:  # every weight comes from the checkpoint: an earlier stage's would be replaced
            cfg.model.init_from = cfg.model.init_parts = None
        if self.subcommand == "fit":
            self._check_fit_target(cfg, Path(root))

    def _check_fit_target(self, cfg: Any, root: Path) -> None:
        if cfg.get("ckpt_path") is not None:
            if self.overwrite:
                raise CLIError("--overwrite removes the run's checkpoints but --ckpt_path resumes from one: give only one")
            return  # resuming writes on in the same folder
        writes = not cfg.trainer.get("fast_dev_run") and cfg.trainer.get("enable_checkpointing") is not False
        if writes and is_launching_process():  # not in the DDP ranks that re-run this command line
            guard_earlier_run(Path(cfg.checkpoint.dirpath), root, self.overwrite)

    def before_fit(self) -> None:
        """Refuse frozen random weights before any process is launched (the model checks again at fit start)."""
        if self.config_init[self.subcommand].get("ckpt_path") is None:
            weights.check_frozen_parts_have_weights(self.model)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if config.get("enable_checkpointing") is False:  # the recipe's checkpoint callback would contradict it
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        trainer = self._instantiate_trainer(config, callbacks)
        trainer.callbacks.extend([TestMetricsWriter(), PredictionsWriter()])
        # before the checkpoint callbacks (Lightning runs those last), so that a checkpoint written at a
        # batch's end holds the random states after that batch
        first_checkpoint = next((i for i, c in enumerate(trainer.callbacks) if isinstance(c, ModelCheckpoint)),
                                len(trainer.callbacks))
        trainer.callbacks.insert(first_checkpoint, RandomStateCheckpoint())
        return trainer
