"""``egotaskqa``: EgoTaskQA (Jia et al., NeurIPS 2022 Datasets and Benchmarks), direct or indirect split.

Release (https://sites.google.com/view/egotaskqa, https://github.com/Buzz-Beater/EgoTaskQA
``baselines/README.md``: question files under ``data/qa/<split type>/``; the LEMMA videos as
extracted JPEG frames, one folder per video and view, under ``videos/``: the path the release's
``baselines/dataset/dataset.py`` (class ``LEMMA``, ``load_frame_paths_from_interval``) reads)::

    <root>/qa/direct/train_qas.json  val_qas.json  test_qas.json
    <root>/qa/indirect/train_qas.json  val_qas.json  test_qas.json
    <root>/videos/<video name>/fpv1/img_00001.jpg ...

Each ``*_qas.json`` is a list of records with (at least) ``question``, ``answer`` and
``interval`` = ``"<video name>|<view>|<start>|<end>"``: the clip is frames ``[start, end)`` of
``videos/<video name>/fpv<last character of view>/`` in frame-number order, i.e. the files
``img_<start+1>`` to ``img_<end>`` (what the release's ``LEMMA`` dataset class reads). Optional
fields used: ``semantic`` (family), ``structural``, ``reference`` (direct / indirect), ``type``
and ``category`` (lists, the question's scope and kind), ``question_id``. ``annotation_dir`` (the
folder holding ``direct/`` and ``indirect/``) and ``frames_dir`` (default ``videos``, the
release's; ``frames`` is this adapter's former default) override the folders.

``split_type``: ``direct`` (questions split 3:1:1 at random) or ``indirect`` (trained on direct
references, tested on indirect ones), the release's two splits.

Families: ``semantic`` (as found in the training file; the paper's action / object / state /
change). Samples also carry ``ans_type`` (``binary`` for yes/no answers, else ``open``: the
paper's Open / Binary columns), ``structural``, ``reference`` and ``categories`` (type + category),
and accuracy is reported for each (``acc_ans_type_binary``, ``acc_categories_<c>``, ...).

Vocabulary: every training answer (``max_answers: null``; the release's ``answer_set.txt`` is
built from all of them). The feature cache is refused (it keys clips by one file's bytes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks._base import (
    BenchmarkDataset,
    BenchmarkRecord,
    Fields,
    VideoDirs,
    read_json,
)
from vqa_components.registry import DATASETS

SPLIT_TYPES = ("direct", "indirect")


@DATASETS.register("egotaskqa")
class EgoTaskQADataset(BenchmarkDataset):
    """EgoTaskQA (direct or indirect split) from the release's *_qas.json and JPEG frame folders."""

    release = "EgoTaskQA"
    id_keys = ("question_id", "interval")
    default_max_answers = None
    vocab_source = "every training answer (the release's answer_set.txt)"
    breakdown_fields = ("ans_type", "structural", "reference", "categories")

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        split_type: str = "direct",
        annotation_dir: str = "qa",
        frames_dir: VideoDirs = "videos",
        **kwargs: Any,
    ) -> None:
        if split_type not in SPLIT_TYPES:
            raise ValueError(f"egotaskqa: split_type must be one of {SPLIT_TYPES}, got {split_type!r}")
        self.split_type, self.annotation_dir, self.frames_dir = split_type, annotation_dir, frames_dir
        super().__init__(root, split, **kwargs)

    def enable_feature_cache(self, root: str | None, fingerprint: str | None = None) -> None:
        if root is not None:
            raise ValueError("egotaskqa: feature_cache is not supported for clips stored as frame folders")
        super().enable_feature_cache(None)

    def annotation_path(self, split: str) -> Path:
        return self.root / self.annotation_dir / self.split_type / f"{split}_qas.json"

    def load_split(self, split: str) -> list[BenchmarkRecord]:
        path = self.require_file(
            self.annotation_path(split), f"the {self.release} {self.split_type} {split} file"
        )
        frames = self.video_folders(self.frames_dir, f"the {self.release} frame folder")
        data = read_json(path)
        if not isinstance(data, list):
            raise AnnotationError(path, f"the top level must be a list of records, got {type(data).__name__}")
        return self.parse_records(path, ((None, r) for r in data), lambda f: self._parse(f, frames))

    def _parse(self, f: Fields, frames: tuple[Path, ...]) -> BenchmarkRecord:
        interval = f.text("interval")
        parts = interval.split("|")
        if len(parts) != 4 or not all(p.strip() for p in parts):
            raise f.fail(f"must be '<video>|<view>|<start>|<end>', got {interval!r}", "interval")
        video, view, start, end = (p.strip() for p in parts)
        try:
            first, last = int(start), int(end)
        except ValueError:
            raise f.fail(f"start and end must be integers, got {interval!r}", "interval") from None
        if not 0 <= first < last:
            raise f.fail(f"needs 0 <= start < end, got {interval!r}", "interval")
        answer = f.ident("answer")
        categories = [
            str(c) for key in ("type", "category") for c in (f.raw.get(key) or []) if isinstance(c, str)
        ]
        return BenchmarkRecord(
            video_id=interval,
            video=self.clip_path(frames, f"{video}/fpv{view[-1]}"),
            question=f.text("question"),
            answer=answer,
            family=f.text("semantic") if f.has("semantic") else "all",
            id=f.ident("question_id") if f.has("question_id") else None,
            first_frame=first,
            last_frame=last,
            extra={
                "ans_type": "binary" if answer.lower() in ("yes", "no") else "open",
                "structural": f.text("structural") if f.has("structural") else "",
                "reference": f.text("reference") if f.has("reference") else "",
                "categories": categories,
            },
        )
