"""The LightningDataModule that serves any registered VideoQA dataset.

A recipe names the dataset by its registry name and passes its arguments::

    data:
      dataset: synthetic_vqa
      dataset_args: {num_frames: 16, frame_size: 64}
      batch_size: 32

The training loader's dataset is built with ``training=True`` (random frame
positions and crops where its options ask for them), the validation, test and
predict loaders' with ``training=False`` (evenly spaced frames, centre crops).

Batches are dicts (see :func:`collate_videoqa`). Samples a dataset could not
read (``None``, or a :class:`SkippedSample`) are dropped from the batch and
listed in ``batch["skipped"]`` (``batch["num_skipped"]`` counts them); the model
reports them by cause at the end of the epoch (:mod:`vqa_components.data.bad_input`).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vqa_components.data.data_order import (
    ResumableDataLoader,
    ResumableDistributedSampler,
    ResumableRandomSampler,
)
from vqa_components.data.dataset import SkippedSample
from vqa_components.registry import DATASETS, import_builtin_parts

log = logging.getLogger(__name__)


def collate_videoqa(samples: Sequence[dict[str, Any] | SkippedSample | None]) -> dict[str, Any]:
    """Stack samples into a batch dict.

    Tensors are stacked (a multi-stream ``video`` becomes a tuple of stacked
    streams), ints become a long tensor, everything else a list. Unreadable
    samples are dropped and listed in ``skipped`` (:class:`SkippedSample` objects,
    with their cause; ``None`` becomes one of cause ``unreadable_sample``), and
    ``num_skipped`` counts them; a batch may therefore be empty (``video`` with
    batch size 0 is then absent and ``batch_size`` is 0).
    """
    kept = [s for s in samples if isinstance(s, dict)]
    skipped = [
        s if isinstance(s, SkippedSample) else
        SkippedSample(index=-1, video_id="", path="", reason=f"the dataset returned {s!r}", cause="unreadable_sample")
        for s in samples if not isinstance(s, dict)
    ]  # fmt: skip
    batch: dict[str, Any] = {"num_skipped": len(skipped), "skipped": skipped, "batch_size": len(kept)}
    if not kept:
        return batch
    for key in kept[0]:
        values = [s[key] for s in kept]
        first = values[0]
        if isinstance(first, Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, tuple) and first and isinstance(first[0], Tensor):
            batch[key] = tuple(torch.stack([v[i] for v in values]) for i in range(len(first)))
        elif isinstance(first, bool) or not isinstance(first, int):
            batch[key] = values
        else:
            batch[key] = torch.tensor(values, dtype=torch.long)
    return batch


class VideoQADataModule(pl.LightningDataModule):
    """Train/val/test/predict loaders over one registered dataset.

    Args:
        dataset: registry name of the dataset (``vqa list dataset``).
        dataset_args: constructor arguments of the dataset, shared by every split
            (``split`` is filled in per loader, and ``training`` where the dataset takes it:
            ``True`` for the training loader, ``False`` for the others).
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size (default ``batch_size``).
        num_workers: DataLoader worker processes.
        keep_decoded_mb: the training split's decoded clips are kept in memory after their first
            epoch when all of them fit in this many MB (per loader process; a split that draws frames
            or crops at random, or is larger, is decoded every epoch); 0 turns it off.
        pin_memory: pin host memory (useful with a GPU).
        train_split, val_split, test_split, predict_split: split names passed to
            the dataset; ``None`` disables that loader.
    """

    def __init__(
        self,
        dataset: str = "synthetic_vqa",
        dataset_args: dict[str, Any] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        keep_decoded_mb: int = 1024,
        pin_memory: bool = False,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        predict_split: str | None = "test",
    ) -> None:
        super().__init__()
        import_builtin_parts()
        self.dataset_name = dataset
        self.dataset_cls = DATASETS.get(dataset)
        self.dataset_args = dict(dataset_args or {})
        if "training" in self.dataset_args:
            raise ValueError(
                "data.dataset_args.training: the DataModule sets it per loader (True for training, "
                "False for validation/test/predict); remove it"
            )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.keep_decoded_mb = keep_decoded_mb
        self.pin_memory = pin_memory
        self.splits = {"fit": train_split, "validate": val_split, "test": test_split, "predict": predict_split}
        #: built datasets by ``(split, training)``
        self.datasets: dict[tuple[str, bool], Dataset] = {}

    # ------------------------------------------------------------ datasets
    def _takes_training(self) -> bool:
        params = inspect.signature(self.dataset_cls).parameters
        return "training" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

    def _build(self, split: str, training: bool) -> Dataset:
        extra = {"training": training} if self._takes_training() else {}
        return self.dataset_cls(split=split, **self.dataset_args, **extra)

    def dataset(self, split: str, training: bool = False) -> Dataset:
        """The dataset of ``split`` for training (random draws) or evaluation (default); built once."""
        key = (split, training)
        if key not in self.datasets:
            self.datasets[key] = self._build(split, training)
        return self.datasets[key]

    def prepare_data(self) -> None:
        # Called on one process per node: generates/validates files (synthetic_vqa) once.
        if self.splits["fit"] is not None:
            self._build(self.splits["fit"], training=True)
        elif self.splits["test"] is not None:
            self._build(self.splits["test"], training=False)

    def setup(self, stage: str) -> None:
        wanted = {
            "fit": ("fit", "validate"),
            "validate": ("validate",),
            "test": ("test",),
            "predict": ("predict",),
        }.get(stage, ())
        for key in wanted:
            if self.splits[key] is not None:
                self.dataset(self.splits[key], training=key == "fit")

    @property
    def _reference(self) -> Dataset | None:
        for key in ("fit", "test", "validate", "predict"):
            built = (self.splits[key], key == "fit")
            if self.splits[key] is not None and built in self.datasets:
                return self.datasets[built]
        return None

    @property
    def kind(self) -> str | None:
        """What the data is, read without decoding a video: the dataset's ``kind`` where it says (the
        benchmark adapters: ``multiple_choice``, ``captions``, ...), else ``multiple_choice`` where its
        records have options and ``open_ended`` where they have none; ``None`` before a split is built."""
        ref = self._reference
        kind = getattr(ref, "kind", None)
        if isinstance(kind, str) or ref is None:
            return kind if isinstance(kind, str) else None
        records = getattr(ref, "records", None) or []
        if not records:
            return None
        return "multiple_choice" if any(getattr(r, "options", None) for r in records) else "open_ended"

    @property
    def answer_vocab(self) -> list[str]:
        """Answer vocabulary of the training data (what a classifier head predicts)."""
        ref = self._reference
        if ref is None:
            fit = self.splits["fit"]
            ref = self.dataset(fit, True) if fit is not None else self.dataset(self.splits["test"] or "train")
        return list(getattr(ref, "answer_vocab", []))

    @property
    def families(self) -> list[str]:
        """Question families (accuracy is reported for each)."""
        ref = self._reference
        return list(getattr(ref, "families", [])) if ref is not None else []

    @property
    def breakdowns(self) -> dict[str, list[str]]:
        """Other sample fields the accuracy is broken down by, with their groups (a benchmark's ``breakdowns``)."""
        ref = self._reference
        return {k: list(v) for k, v in (getattr(ref, "breakdowns", None) or {}).items()} if ref is not None else {}

    # ------------------------------------------------------------- loaders
    def _loader(self, key: str, shuffle: bool) -> DataLoader:
        split = self.splits[key]
        if split is None:
            raise ValueError(f"data: no split configured for {key} ({key}_split is null)")
        dataset = self.dataset(split, training=key == "fit")
        make_loader = getattr(dataset, "make_loader", None)
        if callable(make_loader):  # a dataset that orders and splits its own samples (``streaming``)
            return make_loader(
                batch_size=self.batch_size if key == "fit" else self.eval_batch_size,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                collate_fn=collate_videoqa,
            )
        trainer = self.trainer
        if key == "fit" and shuffle:
            return self._training_loader(dataset)
        sampler = None
        if key != "fit" and trainer is not None and trainer.world_size > 1:
            # Lightning's default DistributedSampler repeats samples so that every rank has as many;
            # evaluation counts each sample once instead (ranks may then differ by one batch)
            sampler = UnrepeatedDistributedSampler(dataset, trainer.world_size, trainer.global_rank, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if key == "fit" else self.eval_batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_videoqa,
            drop_last=False,
        )

    def _training_loader(self, dataset: Dataset) -> ResumableDataLoader:
        """The shuffled training loader, whose order a resumed run takes up where it stopped
        (:mod:`vqa_components.data.data_order`)."""
        keep = getattr(dataset, "keep_decoded", None)
        if callable(keep) and self.keep_decoded_mb > 0:
            keep(self.keep_decoded_mb * 2**20)
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:  # as Lightning would: the run's seed, set_epoch
            seed = int(os.getenv("PL_GLOBAL_SEED", "0"))
            sampler = ResumableDistributedSampler(dataset, trainer.world_size, trainer.global_rank, seed)
        else:
            sampler = ResumableRandomSampler(dataset)

        def trained_batches() -> int | None:
            if trainer is None:
                return None
            progress = trainer.fit_loop.epoch_loop.batch_progress
            done = progress.current.processed
            return None if progress.is_last_batch or done >= trainer.num_training_batches else done

        return ResumableDataLoader(
            dataset,
            sampler=sampler,
            batch_size=self.batch_size,
            trained_batches=trained_batches,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_videoqa,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("fit", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validate", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)

    # ----------------------------------------------------------- profiling
    def example_batch(self, batch_size: int = 1) -> dict[str, Any]:
        """A batch shaped like this data, built without touching the disk (for ``vqa profile``).

        Pixels are random; text is a plausible question of the dataset.
        """
        spec = self.dataset_cls.example_spec(**self.dataset_args)
        videos = tuple(torch.rand(batch_size, t, 3, h, w) for t, h, w in spec.video_shapes)
        questions = [spec.questions[i % len(spec.questions)] for i in range(batch_size)]
        batch: dict[str, Any] = {
            "video": videos if spec.multi_stream else videos[0],
            "question": questions,
            "caption": questions,
            "family": [spec.families[0] if spec.families else "all"] * batch_size,
            "batch_size": batch_size,
        }
        if spec.has_answers:  # caption datasets have none
            batch["answer_idx"] = torch.zeros(batch_size, dtype=torch.long)
        return batch
