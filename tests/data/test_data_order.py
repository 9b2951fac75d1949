"""The training loader's order (vqa_components/data/data_order.py): what a plain loader would draw, and
after a resume the rest of the same epoch; random draws keyed on the epoch's seed and the index."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from vqa_components.data.data_order import (
    ResumableDataLoader,
    ResumableDistributedSampler,
    ResumableRandomSampler,
)

N = 22  # not a multiple of the batch size: the last batch is short


def test_a_fresh_epoch_is_the_order_random_sampler_draws_from_the_same_global_state():
    data = list(range(N))
    torch.manual_seed(3)
    plain = [list(RandomSampler(data)) for _ in range(2)]
    torch.manual_seed(3)
    ours = ResumableRandomSampler(data)
    assert [list(ours) for _ in range(2)] == plain and plain[0] != plain[1]


def test_the_distributed_order_is_lightnings_and_ranks_cover_the_epoch():
    data = list(range(N))
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            ours = ResumableDistributedSampler(data, num_replicas=2, rank=rank, seed=7)
            theirs = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=7)
            ours.set_epoch(epoch), theirs.set_epoch(epoch)
            assert list(ours) == list(theirs)
            seen += list(ours)
        assert sorted(set(seen)) == data


def loader(data, trained: list[int | None]) -> ResumableDataLoader:
    return ResumableDataLoader(data, sampler=ResumableRandomSampler(data), batch_size=4,
                               trained_batches=lambda: trained[0])


def test_a_resumed_epoch_goes_on_after_the_trained_batches_and_the_next_is_fresh():
    data = list(range(N))
    trained: list[int | None] = [None]
    first = loader(data, trained)
    epoch = [b.tolist() for b in first]
    trained[0] = 2  # the run trained on 2 batches of this epoch when the checkpoint was written
    state = first.state_dict()
    again = loader(data, [None])
    again.load_state_dict(state)
    assert [b.tolist() for b in again] == epoch[2:]
    assert [b.tolist() for b in again] != epoch  # the epoch after is drawn anew
    finished = loader(data, [None])
    finished.load_state_dict({**state, "trained_batches": None})  # written at the epoch's end
    assert [b.tolist() for b in finished] != epoch


def test_a_resume_with_another_batch_size_is_refused():
    data = list(range(N))
    state = {**loader(data, [1]).state_dict(), "epoch_seed": 5}
    other = ResumableDataLoader(data, sampler=ResumableRandomSampler(data), batch_size=2, trained_batches=lambda: None)
    try:
        other.load_state_dict(state)
    except ValueError as exc:
        assert "batches of 4" in str(exc) and "batch_size is 2" in str(exc)
    else:
        raise AssertionError("a different batch size was accepted")


class Draws(torch.utils.data.Dataset):
    """A dataset whose samples are draws, keyed like VideoQADataset's (set_draw_seed)."""

    def __init__(self) -> None:
        from vqa_components.data.dataset import VideoQADataset

        self.seed = torch.full((), -1, dtype=torch.int64).share_memory_()
        self._draw_seed = self.seed
        self.sample_generator = VideoQADataset.sample_generator.__get__(self)
        self.set_draw_seed = VideoQADataset.set_draw_seed.__get__(self)
        self.generator = lambda: torch.Generator().manual_seed(torch.initial_seed())

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> int:
        return int(torch.randint(1 << 30, (), generator=self.sample_generator(index)))


def test_draws_depend_on_the_epoch_and_index_not_on_the_workers():
    def epochs(workers: int) -> list[dict[int, int]]:
        torch.manual_seed(0)
        data = Draws()
        sampler = ResumableRandomSampler(data)
        out = []
        for _ in range(2):
            order = list(sampler)  # what the loader below will draw in this epoch (same global state)
            seen = {}
            loader = DataLoader(data, sampler=order, batch_size=1, num_workers=workers)
            data.set_draw_seed(sampler.epoch_seed)
            for i, b in zip(order, loader):
                seen[i] = int(b)
            out.append(seen)
        return out

    zero, two = epochs(0), epochs(2)
    assert zero == two
    assert zero[0] != zero[1]  # a new draw every epoch
