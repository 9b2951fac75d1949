"""``tgif_qa``: TGIF-QA (Jang et al., CVPR 2017), its four tasks, from the release folder.

Release (https://github.com/YunseokJANG/tgif-qa, ``dataset/``; GIFs from the TGIF release)::

    <root>/dataset/Train_frameqa_question.csv   Test_frameqa_question.csv
    <root>/dataset/Train_action_question.csv    Test_action_question.csv
    <root>/dataset/Train_transition_question.csv Test_transition_question.csv
    <root>/dataset/Train_count_question.csv     Test_count_question.csv
    <root>/gifs/tumblr_nk172bbdPI1u1lr18o1_250.gif ...

Tab-separated, with a header (the release's ``dataset/README.md`` and files):

=============  =====================================================================
task           columns
=============  =====================================================================
``frameqa``    gif_name, question, answer, type (0 object, 1 number, 2 color,
               3 location), vid_id, key, description
``action``     gif_name, question, a1, a2, a3, a4, a5, answer (0-4: the correct
``transition`` option), vid_id, key
``count``      gif_name, question, answer (an integer, 1-10), vid_id, key
=============  =====================================================================

The clip of a row is ``gifs/<gif_name>.gif``. ``annotation_dir`` and ``video_dir`` (relative to
``root``) override the two folders.

Splits: ``train`` and ``test`` are the release's files. TGIF-QA has no validation file:
``val`` is the ``Test`` file (``val_fraction: 0``, what most TGIF-QA code validates on), or,
with ``val_fraction > 0``, that fraction of the *GIFs* of the ``Train`` file, held out by a hash
of ``gif_name`` (deterministic) and then left out of ``train``.

Answers: ``frameqa`` is open-ended, over the 1,000 most frequent training answers
(``max_answers: 1000``, FrozenBiLM's ``preproc_tgifqa.py``); families object/number/color/location
from ``type`` (as ALPRO's ``evaluate_qa``). ``action`` and ``transition`` are 5-way multiple
choice (``options``, ``answer_idx`` = the correct option); their family is the task. ``count``
emits ``count`` (int) for the mean squared error the papers report, and, for a classifier, the
count as text over a vocabulary of every count from 1 to 10 (the range TGIF-QA's counts lie in and
the papers' code clamps predictions to, ``metrics/count_error.py``'s ``COUNT_RANGE``) and any other
training count, sorted numerically, so that a test count no training question has still has a class
(and a loss: with the training counts alone, a test split whose counts all lie outside them had
only ``answer_idx = -1`` targets, which the cross-entropy ignores, and ``test/loss`` read 0.0);
family ``count``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from vqa_components.data.benchmarks._base import (
    BenchmarkDataset,
    BenchmarkRecord,
    Fields,
    VideoDirs,
    holdout,
    read_csv,
)
from vqa_components.registry import DATASETS

TASKS = ("frameqa", "action", "transition", "count")
#: the counts every Count vocabulary holds (metrics/count_error.py's COUNT_RANGE)
COUNT_RANGE = (1, 10)
FRAMEQA_TYPES = ("object", "number", "color", "location")
_COLUMNS = {
    "frameqa": ("gif_name", "question", "answer", "type", "vid_id", "key"),
    "action": ("gif_name", "question", "a1", "a2", "a3", "a4", "a5", "answer", "vid_id", "key"),
    "transition": ("gif_name", "question", "a1", "a2", "a3", "a4", "a5", "answer", "vid_id", "key"),
    "count": ("gif_name", "question", "answer", "vid_id", "key"),
}


@DATASETS.register("tgif_qa")
class TGIFQADataset(BenchmarkDataset):
    """TGIF-QA FrameQA, Action, Transition or Count (task) from the release's tab-separated files and GIFs."""

    release = "TGIF-QA"
    id_keys = ("vid_id", "gif_name")
    default_max_answers = 1000
    vocab_source = "FrozenBiLM's preproc_tgifqa.py: the 1,000 most frequent FrameQA training answers"
    kinds: ClassVar[dict[str, str]] = {
        "frameqa": "open_ended",
        "action": "multiple_choice",
        "transition": "multiple_choice",
        "count": "count",
    }

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        task: str = "frameqa",
        annotation_dir: str = "dataset",
        video_dir: VideoDirs = "gifs",
        val_fraction: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"tgif_qa: task must be one of {TASKS}, got {task!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"tgif_qa: val_fraction must be in [0, 1), got {val_fraction!r}")
        self.task = task
        self.kind = self.kinds[task]  # type: ignore[misc]
        self.family_names = FRAMEQA_TYPES if task == "frameqa" else (task,)  # type: ignore[misc]
        self.annotation_dir, self.gif_dir, self.val_fraction = annotation_dir, video_dir, val_fraction
        if task == "count":
            kwargs.setdefault("max_answers", None)
            self.default_max_answers = None  # type: ignore[misc]
            self.vocab_source = (  # type: ignore[misc]
                f"every count from {COUNT_RANGE[0]} to {COUNT_RANGE[1]} (the range the papers' code clamps "
                f"predictions to) and any other training count"
            )
        super().__init__(root, split, **kwargs)

    def annotation_path(self, split: str) -> Path:
        prefix = "Train" if split == "train" or (split == "val" and self.val_fraction > 0) else "Test"
        return self.root / self.annotation_dir / f"{prefix}_{self.task}_question.csv"

    def load_split(self, split: str) -> list[BenchmarkRecord]:
        path = self.require_file(self.annotation_path(split), f"the {self.release} {self.task} {split} file")
        gifs = self.video_folders(self.gif_dir, f"the {self.release} GIF folder")
        records = self.parse_records(
            path, read_csv(path, _COLUMNS[self.task], delimiter="\t"), lambda f: self._parse(f, gifs)
        )
        if self.val_fraction > 0 and split in ("train", "val"):
            held = split == "val"
            records = [r for r in records if holdout(r.video_id, self.val_fraction) == held]
        return records

    def _parse(self, f: Fields, gifs: tuple[Path, ...]) -> BenchmarkRecord:
        gif_name = f.text("gif_name")
        common = {
            "video_id": gif_name,
            "video": self.clip_path(gifs, f"{gif_name}.gif"),
            "question": f.text("question"),
            "id": f.text("vid_id"),
        }
        if self.task == "frameqa":
            kind = f.integer("type", lo=0, hi=3)
            return BenchmarkRecord(answer=f.text("answer"), family=FRAMEQA_TYPES[kind], **common)
        if self.task == "count":
            count = f.integer("answer", lo=0)
            return BenchmarkRecord(answer=str(count), family="count", extra={"count": count}, **common)
        options = tuple(f.text(f"a{i}") for i in range(1, 6))
        label = f.integer("answer", lo=0, hi=4)
        return BenchmarkRecord(
            answer=options[label], family=self.task, options=options, label=label, **common
        )

    def build_vocab(self) -> tuple[list[str], str]:
        if self.task != "count":
            return super().build_vocab()
        found = {int(r.answer) for r in self.split_records("train")}
        counts = sorted(found | set(range(COUNT_RANGE[0], COUNT_RANGE[1] + 1)))
        outside = sorted(found - set(range(COUNT_RANGE[0], COUNT_RANGE[1] + 1)))
        extra = f" and the training counts {outside}" if outside else ""
        return [
            str(c) for c in counts
        ], f"the counts {COUNT_RANGE[0]}-{COUNT_RANGE[1]}{extra}, sorted ({len(counts)})"
