"""Bad input that loses nothing: why a sample was left out, and the report of each epoch.

A sample is left out, and counted under one cause, when::

    cause               found                                        strict mode (a clear error instead)
    missing_video       at read: no file (or frame folder) at the path on_bad_video: raise (also checked
    empty_video         at read: a 0-byte file, an empty frame folder   at start-up: the first missing
    undecodable_video   at read: no container, no video stream,         or empty clip is named)
                        corrupt data, no decodable frame
    missing_field       at start-up: a required field is absent        on_bad_record: raise (the default)
    empty_question      at start-up: the question is empty
    malformed_record    at start-up: any other field of the wrong type
                        or value
    question_too_long   before the step: more tokens than the text      model.on_long_question: raise
                        encoder's limit (which would truncate it)
    unreadable_sample   at read: a dataset returned ``None``            -

More missing clips than a dataset's ``max_missing_fraction`` (default 5 % of a split's distinct clips)
is not bad input but a folder set wrong: the dataset stops at start-up with :class:`MissingVideosError`
(a file-existence check, :func:`missing_paths`); corrupt clips are present and are counted when read.

Each left-out sample is a :class:`SkippedSample`. The callback
:class:`~vqa_components.data.admission.SkippedSamples` (which every ``VideoQAModel`` adds to its
trainer) collects those of a stage (training, validation, test) in a :class:`SkipReport`; at the end of the epoch :meth:`SkipReport.reduce`
merges the ranks' reports (every rank calls it: it is a collective under DDP) and the records
the dataset left out at start-up, and gives a :class:`SkipSummary`: the count of each cause
(a record is counted once, also when DDP's sampler served it twice) and the first ids of each
cause (lowest record index first, so the same on every run and rank).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from vqa_components.data.annotations import AnnotationError
from vqa_components.interfaces import TokenCounter

VIDEO_CAUSES = ("missing_video", "empty_video", "undecodable_video")
RECORD_CAUSES = ("missing_field", "empty_question", "malformed_record", "question_too_long")
SKIP_CAUSES = (*VIDEO_CAUSES, *RECORD_CAUSES, "unreadable_sample")
#: How many ids of each cause the report lists.
FIRST_IDS = 10
#: Batch keys that describe the batch, not one row of it (never selected by :func:`select_rows`).
BATCH_META = ("batch_size", "num_skipped", "skipped")
LONG_QUESTION_POLICIES = ("skip", "raise", "truncate")


class SkippedSample(NamedTuple):
    """A sample left out (what a dataset returns instead of a sample whose video it cannot read).

    A named tuple, so that it travels in a batch (``batch["skipped"]``) through DataLoader workers
    and Lightning's move of the batch to the device (which rebuilds tuples, not frozen dataclasses).

    Attributes:
        index: the record's position in the dataset (for records left out at start-up: in the
            annotation file); ``-1`` when unknown.
        video_id: the clip's id in the release.
        path: the file that failed (video or annotation file).
        reason: what went wrong, in words.
        cause: one of :data:`SKIP_CAUSES`.
        record_id: the release's id of a record left out at start-up (its identifying fields).
    """

    index: int
    video_id: str
    path: str
    reason: str
    cause: str = "undecodable_video"
    record_id: str = ""

    @property
    def ident(self) -> str:
        """What the report lists: the clip's id for a video cause, else the record's id."""
        if self.cause in VIDEO_CAUSES and self.video_id:
            return self.video_id
        return self.record_id or self.video_id or (f"record {self.index}" if self.index >= 0 else self.path or self.reason)

    def __str__(self) -> str:
        if self.cause in VIDEO_CAUSES:
            return f"{self.path} (record {self.index}, video_id={self.video_id!r}): {self.reason}"
        return self.reason


def file_problem(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(cause, reason)`` if the clip at ``path`` (a file or a frame folder) is missing or empty, else ``None``."""
    p = Path(path)
    if not p.exists():
        return "missing_video", "frame folder not found" if not p.suffix else "file not found"
    if p.is_dir():
        return None if any(os.scandir(p)) else ("empty_video", "the frame folder is empty")
    if p.stat().st_size == 0:
        return "empty_video", "file is empty (0 bytes)"
    return None


def video_cause(path: str | os.PathLike) -> str:
    """The cause of a clip that could not be read: missing, empty, or else undecodable."""
    found = file_problem(path)
    return found[0] if found else "undecodable_video"


# ------------------------------------------------------------ missing at start-up

#: ``max_missing_fraction``'s default: a few bad files are skipped and counted, more is a path set wrong.
DEFAULT_MAX_MISSING_FRACTION = 0.05


def check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def missing_paths(paths: Sequence[Path]) -> list[int]:
    """The positions of ``paths`` (files or frame folders) that do not exist: one ``stat`` each, nothing
    opened or decoded (about 2 µs a clip on a local disk: 100,000 clips in 0.25 s)."""
    exists = os.path.exists
    return [i for i, path in enumerate(paths) if not exists(path)]


class MissingVideosError(AnnotationError, FileNotFoundError):
    """More of a split's clips are missing at start-up than ``max_missing_fraction`` allows: a
    folder set wrong, not a few bad files (one line: the split, the folders, the count and fraction,
    the first missing ids, and how to change the threshold)."""

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        dataset: str,
        split: str,
        folders: Sequence[Path],
        missing_ids: Sequence[str],
        total: int,
        threshold: float,
    ) -> None:
        self.split, self.folders, self.total = split, tuple(folders), total
        self.missing_ids = list(missing_ids)
        n = len(self.missing_ids)
        where = ", ".join(str(f) for f in self.folders)
        more = ", ..." if n > FIRST_IDS else ""
        super().__init__(
            annotation_file,
            f"{dataset}: {n} of the {total} {split} videos ({n / total:.0%}) are missing from {where} "
            f"(first: {', '.join(self.missing_ids[:FIRST_IDS])}{more}); set video_dir to the folder(s) "
            f"that hold them (a list is searched in order, a {{split: folder}} dict gives each split its "
            f"own), or raise max_missing_fraction (now {threshold:g}; 1.0 turns this check off) to run "
            f"on those found",
        )


# ----------------------------------------------------------------------- report


@dataclass
class SkipSummary:
    """What one stage of one epoch left out, over every rank.

    Attributes:
        counts: left-out records per cause (causes with none are absent), in :data:`SKIP_CAUSES` order.
        first: the first :data:`FIRST_IDS` of each cause, by record index.
    """

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, list[SkippedSample]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def videos(self) -> int:
        """Records left out because of their clip (the ``skipped_videos`` figure)."""
        return sum(n for cause, n in self.counts.items() if cause in VIDEO_CAUSES)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{cause: {"count": n, "first_ids": [...], "first": "<path or record>: <reason>"}}`` (for JSON)."""
        return {
            cause: {"count": n, "first_ids": [s.ident for s in self.first[cause]], "first": str(self.first[cause][0])}
            for cause, n in self.counts.items()
        }

    def format(self, stage: str) -> str:
        """The end-of-epoch report: one line of counts, then one line per cause with its first ids."""
        head = ", ".join(f"{cause} {n}" for cause, n in self.counts.items())
        lines = [f"{stage} epoch: left out {self.total} sample(s): {head}"]
        for cause, n in self.counts.items():
            ids = ", ".join(s.ident for s in self.first[cause])
            more = f" (first {len(self.first[cause])} of {n})" if n > len(self.first[cause]) else ""
            lines.append(f"  {cause}: {ids}{more}; e.g. {self.first[cause][0]}")
        return "\n".join(lines)


class SkipReport:
    """The samples one stage left out during an epoch (see the module docstring)."""

    def __init__(self) -> None:
        self._found: dict[tuple[Any, ...], SkippedSample] = {}
        self._unkeyed = itertools.count()

    def __len__(self) -> int:
        return len(self._found)

    def add(self, skipped: Iterable[SkippedSample | str | None]) -> None:
        """Record left-out samples (a string or ``None`` from an older dataset counts as ``unreadable_sample``)."""
        for s in skipped:
            if not isinstance(s, SkippedSample):
                reason = "the dataset returned None" if s is None else str(s)
                s = SkippedSample(index=-1, video_id="", path="", reason=reason, cause="unreadable_sample")
            self._found[_key(s, self._unkeyed)] = s

    def reduce(self, startup: Iterable[SkippedSample] = ()) -> SkipSummary:
        """Merge every rank's report (a collective under DDP: every rank must call it) and the
        records left out at start-up (the same on every rank, so counted once)."""
        found = list(self._found.values())
        merged: dict[tuple[Any, ...], SkippedSample] = {}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world > 1:
                gathered: list[Any] = [None] * world
                torch.distributed.all_gather_object(gathered, found)
                unkeyed = itertools.count()
                for part in gathered:
                    for s in part or ():
                        merged[_key(s, unkeyed)] = s
        if not merged:
            merged = dict(self._found)
        unkeyed = itertools.count(len(merged))
        for s in startup:
            merged[_key(s, unkeyed)] = s
        by_cause: dict[str, list[SkippedSample]] = {}
        for s in merged.values():
            by_cause.setdefault(s.cause, []).append(s)
        order = {c: i for i, c in enumerate(SKIP_CAUSES)}
        summary = SkipSummary()
        for cause in sorted(by_cause, key=lambda c: order.get(c, len(order))):
            items = sorted(by_cause[cause], key=lambda s: (s.index < 0, s.index, s.ident))
            summary.counts[cause] = len(items)
            summary.first[cause] = items[:FIRST_IDS]
        return summary


def _key(s: SkippedSample, unkeyed: Iterator[int]) -> tuple[Any, ...]:
    """Records are counted once per cause; samples without an index are each their own entry."""
    if s.index >= 0:
        return (s.cause, s.index, s.path, s.record_id)
    return (s.cause, -1, next(unkeyed))


def startup_skips(dataset: Any) -> list[SkippedSample]:
    """The records ``dataset`` left out when it was built (``on_bad_record: skip``), if it says."""
    found = getattr(dataset, "skipped_records", None) or []
    return [s for s in found if isinstance(s, SkippedSample)]


# -------------------------------------------------------------- long questions


def select_rows(batch: dict[str, Any], keep: Sequence[int]) -> dict[str, Any]:
    """The batch with only the rows ``keep``: every per-row value (tensors, tuples of tensors and
    lists with one entry per sample) is indexed; :data:`BATCH_META` and other values are kept."""
    b = int(batch.get("batch_size", len(batch.get("question", ()))))
    index = torch.as_tensor(list(keep), dtype=torch.long)

    def rows(value: Any) -> Any:
        if isinstance(value, Tensor) and value.ndim and value.shape[0] == b:
            return value[index.to(value.device)]
        if isinstance(value, tuple) and value and all(isinstance(v, Tensor) for v in value):
            return tuple(rows(v) for v in value)
        if isinstance(value, list) and len(value) == b:
            return [value[i] for i in keep]
        return value

    out = {k: v if k in BATCH_META else rows(v) for k, v in batch.items()}
    out["batch_size"] = len(keep)
    return out


def question_token_counter(encoder: Any) -> tuple[int, TokenCounter] | None:
    """``(limit, count)``: the text encoder's limit in tokens and a function giving the untruncated
    token count of each text (special tokens included), or ``None`` for an encoder that cannot count
    (:meth:`~vqa_components.interfaces.TextEncoder.token_counter`)."""
    counter = getattr(encoder, "token_counter", None)
    return counter() if callable(counter) else None


class QuestionTooLongError(AnnotationError):
    """A question longer than the text encoder's limit, with ``on_long_question: raise`` (an
    :class:`~vqa_components.data.annotations.AnnotationError`: ``vqa`` prints it as one line)."""


def screen_long_questions(
    batch: dict[str, Any],
    counter: tuple[int, TokenCounter],
    texts: list[list[str]],
    policy: str,
    stage: str,
    source: str = "",
) -> tuple[dict[str, Any], list[SkippedSample]]:
    """Leave out the samples one of whose ``texts`` (what the model encodes for it: the question,
    or each question+option pair) has more tokens than the encoder's limit.

    Returns the batch without them and the :class:`SkippedSample` of each (``policy="skip"``), or
    raises :class:`QuestionTooLongError` naming the first, with its record and ``video_id`` in
    ``source`` (the annotation file, when known; ``policy="raise"``).
    """
    limit, count = counter
    flat = [t for group in texts for t in group]
    lengths = iter(count(flat)) if flat else iter(())
    longest = [max((next(lengths) for _ in group), default=0) for group in texts]
    long = [i for i, n in enumerate(longest) if n > limit]
    if not long:
        return batch, []
    indices = batch.get("index")
    video_ids = batch.get("video_id") or [""] * len(texts)
    skipped = []
    for i in long:
        index = int(indices[i]) if indices is not None else -1
        what = "record" if index >= 0 else "sample"
        reason = (
            f"{what} {index if index >= 0 else i} (video_id={video_ids[i]!r}): the question has {longest[i]} tokens, "
            f"more than the text encoder's limit of {limit}: {batch['question'][i]!r}"
        )
        record_id = f"record {index}" if index >= 0 else ""
        skipped.append(
            SkippedSample(index, str(video_ids[i]), path="", reason=reason, cause="question_too_long", record_id=record_id)
        )
    if policy == "raise":
        first = long[0]
        raise QuestionTooLongError(
            source or f"a {stage} batch",
            f"the question has {longest[first]} tokens, more than the text encoder's limit of {limit}: "
            f"{batch['question'][first]!r}. Shorten it, raise the text encoder's max_length, or set "
            f"--model.on_long_question skip (leave such samples out and report them) or truncate",
            index=skipped[0].index if skipped[0].index >= 0 else None,
            record={"video_id": skipped[0].video_id},
            field="question",
            keys=("video_id",),
        )
    dropped = set(long)
    keep = [i for i in range(len(texts)) if i not in dropped]
    return select_rows(batch, keep), skipped
