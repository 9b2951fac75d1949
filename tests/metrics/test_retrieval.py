"""RetrievalRanks: ranks, R@K and median rank against hand-worked similarities, clips with several
captions, a batch-by-batch split, and the same figures from 2 real gloo processes."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import gloo_ranks

from vqa_components.metrics import RetrievalRanks
from vqa_components.metrics.retrieval import clip_keys, retrieval_ranks

# 4 pairs in 2-d; angles (degrees) video: 0, 90, 180, 270; text: 10, 200, 170, 260
ANGLES_V = [0.0, 90.0, 180.0, 270.0]
ANGLES_T = [10.0, 200.0, 170.0, 260.0]


def unit(degrees):
    r = torch.deg2rad(torch.tensor(degrees))
    return torch.stack([r.cos(), r.sin()], dim=1)


def test_ranks_against_hand_worked_similarities():
    v, t = unit(ANGLES_V), unit(ANGLES_T)
    # text-to-video: text j's true video is video j; angular distance ranks the videos
    #   text 0 (10):  videos 0 (10), 1 (80), 3 (100), 2 (170)   -> rank 1
    #   text 1 (200): videos 2 (20), 3 (70), 1 (110), 0 (160)   -> rank 3
    #   text 2 (170): videos 2 (10), 1 (80), 3 (100), 0 (170)   -> rank 1
    #   text 3 (260): videos 3 (10), 2 (80), 0 (100), 1 (170)   -> rank 1
    keys = torch.full((4,), -1)
    assert retrieval_ranks(t, v, keys).tolist() == [1, 3, 1, 1]
    # video-to-text: video 1 (90): texts 2 (80), 0 (80), 1 (110), 3 (170): tie at 80 does not rank above -> 3
    #   video 0 (0): texts 0 (10) -> 1; video 2 (180): texts 2 (10) -> 1; video 3 (270): texts 3 (10) -> 1
    assert retrieval_ranks(v, t, keys).tolist() == [1, 3, 1, 1]
    m = RetrievalRanks()
    m.update(v[:3], t[:3], keys[:3])  # two batches: the ranks are over the whole split
    m.update(v[3:], t[3:], keys[3:])
    out = {k: float(x) for k, x in m.compute().items()}
    assert out["num_samples"] == 4
    assert out["t2v_r1"] == pytest.approx(3 / 4) and out["t2v_r5"] == 1.0 and out["t2v_r10"] == 1.0
    assert out["t2v_median_rank"] == 1.0 and out["v2t_r1"] == pytest.approx(3 / 4)
    # 4 ranks [1, 3, 1, 1]: median 1; [2, 3, 4, 5]: median 3.5, floored to 3
    assert float(torch.tensor([2, 3, 4, 5]).double().quantile(0.5).floor()) == 3.0


def test_another_caption_of_the_same_clip_does_not_push_a_rank_down():
    v, t = unit(ANGLES_V), unit(ANGLES_T)
    # pairs 1 and 2 are two captions of one clip: for text 1, video 2 (its own clip) no longer counts
    keys = clip_keys(["a", "b", "b", "c"], 4)
    assert keys[1] == keys[2] and keys[0] != keys[1]
    assert retrieval_ranks(t, v, keys).tolist() == [1, 2, 1, 1]


def test_nothing_seen_gives_no_figures():
    with pytest.warns(UserWarning):
        assert RetrievalRanks().compute() == {"num_samples": torch.tensor(0)}


def split_pairs():
    """7 seeded (video, text) pairs, the first 4 easy to match, and their clip keys."""
    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    t[:4] += 2 * v[:4]
    return v, t, torch.arange(7)


# each rank builds the same pairs (split_pairs' own source) inside the process group
WORKER = inspect.getsource(split_pairs) + """
from vqa_components.metrics import RetrievalRanks
v, t, keys = split_pairs()
m = RetrievalRanks()
rows = [0, 1, 2, 3, 4] if rank == 0 else [5, 6]   # uneven shards
m.update(v[rows], t[rows], keys[rows])
out = {k: float(x) for k, x in m.compute().items()}
alone = RetrievalRanks()     # rank 1 sees nothing at all
if rank == 0:
    alone.update(v, t, keys)
import warnings
warnings.simplefilter("ignore")
alone = {k: float(x) for k, x in alone.compute().items()}
print(json.dumps({"ddp": out, "alone": alone}))
"""


@pytest.mark.slow  # several real processes
def test_two_processes_rank_over_the_whole_split():
    # one process with the whole split: this one, where no process group exists (in the workers the
    # group exists from the start, and compute() would gather)
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    single = RetrievalRanks()
    single.update(*split_pairs())
    single = {k: float(x) for k, x in single.compute().items()}
    results = gloo_ranks(WORKER)
    assert results[0]["ddp"] == results[1]["ddp"] == single
    assert results[0]["alone"] == results[1]["alone"] == single
    assert results[0]["ddp"]["num_samples"] == 7 and 0 < results[0]["ddp"]["t2v_r1"] < 1
