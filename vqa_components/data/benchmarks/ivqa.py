"""``ivqa``: iVQA (Yang et al., "Just Ask", ICCV 2021), open-ended with five annotator answers.

Release (https://github.com/antoyang/just-ask, README "iVQA": the folder holds ``train.csv``,
``val.csv``, ``test.csv``; the clips come with it or from YouTube)::

    <root>/train.csv  val.csv  test.csv
    <root>/video/<video_id>_<start>_<end>.mp4 ...     (or <video_id>.mp4, or any name starting with it)

CSV (comma-separated, header) with at least ``video_id, question, answer1, answer2, answer3,
answer4, answer5``: the columns just-ask's ``preproc_ivqa.py`` and ``data/videoqa_loader.py`` and
FrozenBiLM's iVQA loader read (they key each clip's features by ``video_id``, and just-ask's
``extract/merge_features.py`` takes a clip's ``video_id`` from its file name's first 11
characters, the YouTube id): five answers, one per annotator. ``start`` and ``end`` (seconds) are
optional columns, used when a row has both. The clip of a row is ``video/`` + ``video_name`` with the
row's values filled in; the default is ``"{video_id}_{start}_{end}.mp4"`` for a row with times and
``"{video_id}.mp4"`` for one without, and when that file does not exist, the file of the video
folder whose name begins with the ``video_id`` (the merge script's rule). When ``video_name`` has no
``{start}`` (e.g. ``"{video_id}.mp4"``, whole videos) and the row has times, frames are taken from
``[start, end)`` seconds of the file. ``start``/``end`` are written as in the CSV (``12`` stays ``12``).

Vocabulary: every answer given at least twice among the five answers of the training questions
(``min_count: 2``, ``max_answers: null``; just-ask's ``preproc_ivqa.py``). Samples keep all five
answers in ``answers`` (list of str) and their vocabulary indices in ``answers_idx`` (-1 when not
in it), from which the heads score the soft accuracy ``min(#annotators who gave the prediction /
2, 1)`` (:func:`~vqa_components.metrics.soft_accuracy.annotator_agreement`); ``answer`` is the most frequent of the five that is in the vocabulary (ties:
annotator order), else the most frequent, and ``answer_idx`` its index (-1 when none of the five
is in the vocabulary). Training questions with none of their answers in the vocabulary are
dropped. No question types: ``family`` is ``all``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from vqa_components.data.benchmarks._base import (
    BenchmarkDataset,
    BenchmarkRecord,
    Fields,
    VideoDirs,
    read_csv,
)
from vqa_components.registry import DATASETS

ANSWER_COLUMNS = tuple(f"answer{i}" for i in range(1, 6))
COLUMNS = ("video_id", "question", *ANSWER_COLUMNS)
TIMED_NAME, WHOLE_NAME = "{video_id}_{start}_{end}.mp4", "{video_id}.mp4"


def _cell(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@DATASETS.register("ivqa")
class IVQADataset(BenchmarkDataset):
    """iVQA from the release's train/val/test CSVs (five annotator answers per question) and clips."""

    release = "iVQA"
    default_max_answers = None
    vocab_source = "just-ask's preproc_ivqa.py: every answer given at least twice in train"
    family_names = ()

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        video_dir: VideoDirs = "video",
        video_name: str | None = None,
        min_count: int = 2,
        **kwargs: Any,
    ) -> None:
        if min_count < 1:
            raise ValueError(f"ivqa: min_count must be >= 1, got {min_count}")
        self.clip_dir, self.video_name, self.min_count = video_dir, video_name, min_count
        self._by_prefix: dict[tuple[Path, ...], dict[str, Path]] = {}
        super().__init__(root, split, **kwargs)

    def annotation_path(self, split: str) -> Path:
        return self.root / f"{split}.csv"

    def load_split(self, split: str) -> list[BenchmarkRecord]:
        path = self.require_file(self.annotation_path(split), f"the {self.release} {split} file")
        videos = self.video_folders(self.clip_dir, f"the {self.release} video folder")
        return self.parse_records(path, read_csv(path, COLUMNS), lambda f: self._parse(f, videos))

    def _parse(self, f: Fields, videos: tuple[Path, ...]) -> BenchmarkRecord:
        video_id = f.text("video_id")
        timed = f.has("start") and f.has("end")
        start, end = (f.number("start"), f.number("end")) if timed else (None, None)
        if start is not None and end is not None and end <= start:
            raise f.fail(f"end ({end}) must be after start ({start})", "end")
        answers = [f.text(c) for c in ANSWER_COLUMNS]
        pattern = self.video_name or (TIMED_NAME if timed else WHOLE_NAME)
        if not timed and ("{start}" in pattern or "{end}" in pattern):
            raise f.fail(
                f"needed by video_name {pattern!r}; this row has no start and end", "start", "missing_field"
            )
        try:
            name = pattern.format(
                video_id=video_id, start=_cell(start) if timed else "", end=_cell(end) if timed else ""
            )
        except (KeyError, IndexError) as exc:
            raise ValueError(
                f"ivqa: video_name {pattern!r} may use {{video_id}}, {{start}}, {{end}}"
            ) from exc
        whole = "{start}" not in pattern
        path = self.clip_path(videos, name)
        if self.video_name is None and not os.path.lexists(path):
            path = self._by_video_id(videos).get(video_id, path)
        return BenchmarkRecord(
            video_id=Path(name).stem,
            video=path,
            question=f.text("question"),
            answer=Counter(answers).most_common(1)[0][0],
            family="all",
            start=start if whole else None,
            end=end if whole else None,
            extra={"answers": answers},
        )

    def _by_video_id(self, videos: tuple[Path, ...]) -> dict[str, Path]:
        """``{first 11 characters of the name: file}`` over the video folders (listed once; the first
        folder, then the first name in sorted order, wins), and each file's stem."""
        if videos not in self._by_prefix:
            found: dict[str, Path] = {}
            for folder in videos:
                for name in sorted(os.listdir(folder)):
                    for key in (name[:11], Path(name).stem):
                        found.setdefault(key, folder / name)
            self._by_prefix[videos] = found
        return self._by_prefix[videos]

    def vocab_answers(self, record: BenchmarkRecord) -> list[str]:
        return list(record.extra["answers"])

    def build_vocab(self) -> tuple[list[str], str]:
        counts = Counter(a for r in self.split_records(self.vocab_split) for a in self.vocab_answers(r))
        ranked = [a for a in sorted(counts, key=lambda a: (-counts[a], a)) if counts[a] >= self.min_count]
        if self.max_answers is not None:
            ranked = ranked[: self.max_answers]
        return ranked, f"train answers given at least {self.min_count} times ({len(ranked)} of {len(counts)})"

    @property
    def metric(self) -> str:
        return "soft accuracy min(#annotators who gave the answer / 2, 1), over all questions of the split"

    def in_vocab(self, record: BenchmarkRecord) -> bool:
        return any(a in self._answer_to_idx for a in record.extra["answers"])

    def sample_fields(self, record: BenchmarkRecord) -> dict[str, Any]:
        answers = list(record.extra["answers"])
        counts = Counter(answers)
        known = [a for a in answers if a in self._answer_to_idx]
        pool = known or answers
        best = max(pool, key=lambda a: (counts[a], -answers.index(a)))
        return {
            "answers": answers,
            "answers_idx": [self.answer_index(a) for a in answers],
            "answer": best,
            "answer_idx": self.answer_index(best),
        }
