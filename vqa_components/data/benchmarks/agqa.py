"""``agqa``: AGQA 2.0 balanced (Grunde-McLaughlin et al., CVPR 2021 / arXiv 2204.06105), open-ended.

Release (https://cs.stanford.edu/people/ranjaykrishna/agqa/: ``AGQA_balanced.zip``; videos: the
Charades 480p archive ``Charades_v1_480``)::

    <root>/AGQA_balanced/train_balanced.txt  test_balanced.txt
    <root>/Charades_v1_480/YSKX3.mp4 ...

(``train_balanced.txt`` directly in ``<root>`` works too.) Each file is ONE JSON object mapping
question ids to records (the AGQA README's "Training/Testing Question Format")::

    "YSKX3-8": {"question": "Were they interacting with a blanket while holding a pillow?",
                "answer": "no", "video_id": "YSKX3", "global": ["exists"], "local": "...",
                "ans_type": "binary", "steps": 3, "semantic": "object", "structural": "verify", ...}

The clip is ``Charades_v1_480/<video_id>.mp4``. ``annotation_dir`` and ``video_dir`` override
the folders.

Splits: ``train`` and ``test``; AGQA has no validation file: ``val`` is the test file
(``val_fraction: 0``) or that fraction of the training *videos* (hash of ``video_id``), then left
out of ``train``.

Families: ``semantic`` (object / relation / action, AGQA's "semantic" split of the test set).
Samples also carry ``structural`` (query / compare / choose / logic / verify), ``ans_type``
(binary / open) and ``reasoning`` (the ``global`` list: a question counts toward each of its
reasoning categories), the other breakdowns the AGQA README defines; accuracy is reported for
each (``acc_structural_verify``, ``acc_ans_type_binary``, ``acc_reasoning_exists``, ...).

Vocabulary: every training answer (``max_answers: null``); AGQA's answers are the templates'
object, action and relation names plus yes/no/before/after, a closed set.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks._base import (
    BenchmarkDataset,
    BenchmarkRecord,
    Fields,
    ReleaseLayoutError,
    VideoDirs,
    holdout,
    read_json,
)
from vqa_components.registry import DATASETS

SEMANTIC = ("object", "relation", "action")


@DATASETS.register("agqa")
class AGQADataset(BenchmarkDataset):
    """AGQA 2.0 balanced from train_balanced.txt / test_balanced.txt and the Charades videos."""

    release = "AGQA 2.0"
    default_max_answers = None
    vocab_source = "every training answer (AGQA's answer set is closed)"
    family_names = SEMANTIC
    breakdown_fields = ("structural", "ans_type", "reasoning")

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        annotation_dir: str | None = None,
        video_dir: VideoDirs = "Charades_v1_480",
        val_fraction: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"agqa: val_fraction must be in [0, 1), got {val_fraction!r}")
        self._annotation_dir, self.clip_dir, self.val_fraction = annotation_dir, video_dir, val_fraction
        super().__init__(root, split, **kwargs)

    def _folder(self) -> Path:
        if self._annotation_dir is not None:
            return self.root / self._annotation_dir
        nested = self.root / "AGQA_balanced"
        return (
            nested
            if (nested / "train_balanced.txt").is_file() or not (self.root / "train_balanced.txt").is_file()
            else self.root
        )

    def annotation_path(self, split: str) -> Path:
        name = "train" if split == "train" or (split == "val" and self.val_fraction > 0) else "test"
        return self._folder() / f"{name}_balanced.txt"

    def load_split(self, split: str) -> list[BenchmarkRecord]:
        path = self.annotation_path(split)
        if not path.is_file():
            raise ReleaseLayoutError(
                path,
                f"{self.name}: expected the {self.release} balanced {split} file here "
                f"(or {self.root / path.name})",
            )
        videos = self.video_folders(self.clip_dir, f"the Charades video folder for {self.release}")
        data = read_json(path)
        if not isinstance(data, dict):
            raise AnnotationError(
                path, f"must be one JSON object mapping question ids to records, got {type(data).__name__}"
            )
        records = self.parse_records(
            path,
            ((None, {"id": k, **v} if isinstance(v, dict) else v) for k, v in data.items()),
            lambda f: self._parse(f, videos),
        )
        if self.val_fraction > 0 and split in ("train", "val"):
            held = split == "val"
            records = [r for r in records if holdout(r.video_id, self.val_fraction) == held]
        return records

    def _parse(self, f: Fields, videos: tuple[Path, ...]) -> BenchmarkRecord:
        video_id = f.ident("video_id")
        semantic = f.text("semantic")
        if semantic not in SEMANTIC:
            raise f.fail(f"must be one of {', '.join(SEMANTIC)}, got {semantic!r}", "semantic")
        reasoning = [sys.intern(r) for r in f.text_list("global")] if "global" in f.raw else []
        return BenchmarkRecord(
            video_id=video_id,
            video=self.clip_path(videos, f"{video_id}.mp4"),
            question=f.text("question"),
            answer=f.ident("answer"),
            family=sys.intern(semantic),
            id=f.ident("id"),
            extra={
                "structural": sys.intern(f.text("structural")) if f.has("structural") else "",
                "ans_type": sys.intern(f.text("ans_type")) if f.has("ans_type") else "",
                "reasoning": reasoning,
            },
        )
