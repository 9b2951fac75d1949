"""The training loader's sample order, kept in the checkpoint so that a resumed run goes on where it stopped.

Lightning saves the state of a training loader that has ``state_dict``/``load_state_dict`` with every
checkpoint and gives it back before the resumed run draws its first batch. :class:`ResumableDataLoader`
is such a loader: its state is the epoch's order (the seed it was drawn from) and the number of
batches the run has trained on, and its sampler, after a resume in the middle of an epoch, draws the
same order and leaves out the samples of those batches. Nothing else changes: a run that is not
resumed sees exactly the samples, in exactly the order, of a plain ``DataLoader(shuffle=True)``
(:class:`ResumableRandomSampler` draws its seed from torch's global RNG as ``RandomSampler`` does) or,
with several processes, of the ``DistributedSampler`` Lightning would have put in
(:class:`ResumableDistributedSampler`).

The count is the trainer's own (batches it has trained on in this epoch), not the batches the loader
has handed out: Lightning fetches one batch ahead, and worker processes more.

Each epoch's order also seeds the dataset's random draws (frame positions, crops) where the dataset
has ``set_draw_seed`` (:meth:`VideoQADataset.set_draw_seed
<vqa_components.data.dataset.VideoQADataset.set_draw_seed>`): a sample's draws are then a function of
the epoch's seed and its index, the same with 0 or 2 workers and after a resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler


def _draw_seed() -> int:
    """A seed from torch's global RNG, drawn as ``RandomSampler`` draws it (so the order is the same)."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class _Resumable:
    """What both samplers share: the samples to leave out at the start of the next epoch they draw."""

    dataset: Any

    def _init_resume(self) -> None:
        self.epoch_seed: int | None = None  # the seed of the order being drawn (None before the first)
        self._resume: tuple[int, int] | None = None  # (seed, samples to leave out) for the next __iter__

    def resume(self, seed: int, skip: int) -> None:
        """The next epoch drawn is the one of ``seed``, less its first ``skip`` samples."""
        self._resume = (seed, skip)

    def _seed_and_skip(self, fresh: Callable[[], int]) -> tuple[int, int]:
        seed, skip = self._resume if self._resume is not None else (fresh(), 0)
        self._resume = None
        self.epoch_seed = seed
        set_draw_seed = getattr(self.dataset, "set_draw_seed", None)
        if callable(set_draw_seed):
            set_draw_seed(seed)
        return seed, skip


class ResumableRandomSampler(_Resumable, RandomSampler):
    """``RandomSampler`` (no replacement) whose epoch can be drawn again from its seed and resumed part-way."""

    def __init__(self, dataset: Any) -> None:
        super().__init__(dataset)
        self.dataset = dataset
        self._init_resume()

    def __iter__(self) -> Iterator[int]:
        seed, skip = self._seed_and_skip(_draw_seed)
        self.generator = torch.Generator().manual_seed(seed)
        try:
            for position, index in enumerate(super().__iter__()):
                if position >= skip:
                    yield index
        finally:
            self.generator = None


class ResumableDistributedSampler(_Resumable, DistributedSampler):
    """Lightning's ``DistributedSampler`` (the run's seed, ``set_epoch`` every epoch), resumable part-way.

    Its seed for an epoch is ``seed + epoch`` as ``DistributedSampler`` draws it; being a
    ``DistributedSampler``, Lightning leaves it in place.
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self._init_resume()

    def __iter__(self) -> Iterator[int]:
        seed, skip = self._seed_and_skip(lambda: self.seed + self.epoch)
        base, epoch = self.seed, self.epoch
        self.seed, self.epoch = seed, 0  # DistributedSampler draws from seed + epoch
        try:
            order = list(super().__iter__())
        finally:
            self.seed, self.epoch = base, epoch
        yield from order[skip:]


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableRandomSampler` or :class:`ResumableDistributedSampler`
    whose ``state_dict`` Lightning keeps in each checkpoint.

    Args:
        dataset, sampler, batch_size, **kwargs: as for ``DataLoader``.
        trained_batches: the number of batches of the current epoch the run has trained on, ``None``
            once the epoch is over (read when a checkpoint is written; the DataModule gives the
            trainer's count).
    """

    def __init__(
        self,
        dataset: Any,
        *,
        sampler: ResumableRandomSampler | ResumableDistributedSampler,
        batch_size: int,
        trained_batches: Callable[[], int | None],
        **kwargs: Any,
    ) -> None:
        if kwargs.get("drop_last"):
            raise ValueError("ResumableDataLoader: drop_last is not supported (the skip counts whole batches)")
        super().__init__(dataset, sampler=sampler, batch_size=batch_size, **kwargs)
        self.trained_batches = trained_batches

    def state_dict(self) -> dict[str, Any]:
        """The epoch's seed and how many of its batches the run has trained on (``None``: all)."""
        # (Lightning may have put a sampler of its own in, e.g. for overfit_batches: nothing to resume then)
        return {"epoch_seed": getattr(self.sampler, "epoch_seed", None), "trained_batches": self.trained_batches(),
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the saved epoch after its trained batches; an epoch that was finished starts the next one."""
        done = state.get("trained_batches")
        if state.get("epoch_seed") is None or done is None or not isinstance(self.sampler, _Resumable):
            return
        if state.get("batch_size", self.batch_size) != self.batch_size:
            raise ValueError(
                f"resuming: the checkpoint's epoch was drawn in batches of {state['batch_size']}, this run's "
                f"data.batch_size is {self.batch_size}; resume with the same batch size"
            )
        self.sampler.resume(int(state["epoch_seed"]), done * self.batch_size)
