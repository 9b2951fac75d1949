"""Video-text retrieval over a whole split: recall at 1, 5, 10 and median rank, in both directions.

Each evaluation sample is a (video, text) pair. The metric keeps every pair's two embeddings
(what the head's ``embeddings(out)`` returns; for the ``retrieval`` head the projected, unit-norm
``v_cls*`` and ``t_cls``) and, at the end of the split, ranks all of them against all::

    sim[i, j] = cos(video_i, text_j)                          (N x N over the whole split)
    text-to-video rank of pair j  = 1 + #{videos i of another clip : sim[i, j] > sim[j, j]}
    video-to-text rank of pair i  = 1 + #{texts j of another clip  : sim[i, j] > sim[i, i]}
    R@K = share of ranks <= K;  median rank = floor(median of the ranks)

Choices: ties count for the query (a candidate must score strictly higher to rank above the
true one); a candidate from the same clip (same ``video_id``: several captions of one video) is
neither counted above nor below, so a clip's other captions do not push its rank down; the median
of an even number of ranks is the mean of the middle two, floored (what CLIP4Clip's evaluation
reports as MdR). Under DDP every rank's pairs are gathered before ranking (each sample is
counted once: evaluation loaders do not repeat samples), so the figures equal one process's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

RECALL_AT = (1, 5, 10)
#: rows of the similarity matrix computed at once (memory: CHUNK x N floats)
CHUNK = 1024


def clip_keys(video_ids: Sequence[Any] | None, n: int) -> Tensor:
    """``(n,)`` int64 keys that are equal for samples of the same clip (a stable hash of ``video_id``),
    ``-1`` (every sample its own clip) without ids."""
    if not video_ids:
        return torch.full((n,), -1, dtype=torch.long)
    return torch.tensor(
        [int.from_bytes(hashlib.sha1(str(v).encode("utf-8")).digest()[:7], "big") for v in video_ids], dtype=torch.long
    )


def retrieval_ranks(queries: Tensor, candidates: Tensor, keys: Tensor) -> Tensor:
    """``(n,)`` the rank (1 = first) of candidate ``i`` for query ``i`` among all ``candidates``, by
    cosine similarity; candidates with the query's key (other than ``i`` itself) are not counted."""
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    c = torch.nn.functional.normalize(candidates.float(), dim=-1)
    n = q.shape[0]
    ranks = torch.empty(n, dtype=torch.long)
    for start in range(0, n, CHUNK):
        rows = torch.arange(start, min(start + CHUNK, n))
        sim = q[rows] @ c.T  # (chunk, n)
        true = sim[torch.arange(len(rows)), rows][:, None]
        same = (keys[rows][:, None] == keys[None, :]) & (keys[rows][:, None] >= 0)
        same[torch.arange(len(rows)), rows] = True
        ranks[rows] = 1 + ((sim > true) & ~same).sum(1)
    return ranks


def _gather(local: Tensor) -> Tensor:
    """Every rank's rows, in rank order (a collective under DDP); the local rows otherwise."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local
    world = torch.distributed.get_world_size()
    if world == 1:
        return local
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, local.cpu())
    return torch.cat([p for p in parts if p is not None and p.numel()] or [local[:0].cpu()])


class RetrievalRanks(Metric):
    """R@1/5/10 and median rank of text-to-video and video-to-text retrieval over a split.

    ``update_from(head, out, batch)`` stores the batch's embeddings (``head.embeddings(out)``) and
    clip keys; ``compute()`` (every rank must call it under DDP) gathers them and returns
    ``{"t2v_r1", "t2v_r5", "t2v_r10", "t2v_median_rank", "v2t_r1", ..., "num_samples"}``.
    The embeddings are kept on the CPU (N x d floats for each side).
    """

    full_state_update = False

    def __init__(
        self, groups: Sequence[str] = (), breakdowns: Any = None, answer_vocab: Sequence[str] = (), **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)  # the evaluation context every task metric is given; ranks need none of it
        self._video: list[Tensor] = []
        self._text: list[Tensor] = []
        self._keys: list[Tensor] = []

    def update(self, video: Tensor, text: Tensor, keys: Tensor | None = None) -> None:
        """``video``, ``text``: ``(b, e)`` embeddings of the pairs; ``keys``: ``(b,)`` clip keys (:func:`clip_keys`)."""
        if video.shape != text.shape or video.ndim != 2:
            raise ValueError(f"RetrievalRanks: video {tuple(video.shape)} and text {tuple(text.shape)} embeddings must be (b, e)")
        self._video.append(video.detach().float().cpu())
        self._text.append(text.detach().float().cpu())
        self._keys.append(torch.full((video.shape[0],), -1, dtype=torch.long) if keys is None else keys.cpu().long())

    def update_from(self, head: Any, out: Any, batch: dict[str, Any]) -> None:
        embeddings = getattr(head, "embeddings", None)
        if embeddings is None:
            raise TypeError(
                f"the retrieval metric needs head.embeddings(out) -> (video, text); "
                f"{type(head).__name__} has no embeddings method"
            )
        video, text = embeddings(out)
        self.update(video, text, clip_keys(batch.get("video_id"), video.shape[0]))

    def compute(self) -> dict[str, Tensor]:
        def local(parts: list[Tensor], width: int) -> Tensor:
            return torch.cat(parts) if parts else torch.zeros(0, width)

        width = self._video[0].shape[1] if self._video else 0
        video, text = _gather(local(self._video, width)), _gather(local(self._text, width))
        keys = _gather(torch.cat(self._keys) if self._keys else torch.zeros(0, dtype=torch.long))
        n = video.shape[0]
        out: dict[str, Tensor] = {"num_samples": torch.tensor(n)}
        if n == 0:
            return out
        for name, ranks in (("t2v", retrieval_ranks(text, video, keys)), ("v2t", retrieval_ranks(video, text, keys))):
            for k in RECALL_AT:
                out[f"{name}_r{k}"] = (ranks <= k).double().mean()
            out[f"{name}_median_rank"] = torch.tensor(float(ranks.double().quantile(0.5).floor()))
        return out
