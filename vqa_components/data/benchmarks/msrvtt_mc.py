"""``msrvtt_mc``: MSRVTT multiple choice (Yu et al., JSFusion, ECCV 2018): pick the clip's caption of five.

Release (the JSONL form of ClipBERT / ALPRO / all-in-one ``msrvtt_mc_test.jsonl``; videos: the
MSR-VTT clips as in Frozen-in-Time's ``videos/all``)::

    <root>/msrvtt_mc_test.jsonl
    <root>/videos/all/video7010.mp4 ...

One record per line: ``{"clip_name": "video7010", "options": [five captions], "answer": 3,
"qid": ...}`` (``video_id`` is accepted in place of ``clip_name``; ``answer`` is the position of
the right caption). ``annotation_file`` and ``video_dir`` (relative to ``root``) override the names.

Only a ``test`` split exists (2,990 questions): the benchmark evaluates models trained on other
data (zero-shot, or after MSR-VTT retrieval training). Samples: ``options``, ``answer_idx`` = the
right caption's position, an empty ``question`` (the model scores each ``"" + " " + caption``
pair), ``caption`` = the right caption, ``family`` ``mc``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqa_components.data.benchmarks._base import (
    BenchmarkDataset,
    BenchmarkRecord,
    Fields,
    VideoDirs,
    read_jsonl,
)
from vqa_components.registry import DATASETS


@DATASETS.register("msrvtt_mc")
class MSRVTTMCDataset(BenchmarkDataset):
    """MSRVTT multiple choice (the right caption of five) from msrvtt_mc_test.jsonl; test split only."""

    release = "MSRVTT-MC"
    id_keys = ("qid", "clip_name", "video_id")
    kind = "multiple_choice"
    splits = ("test",)
    family_names = ()

    def __init__(
        self,
        root: str,
        split: str = "test",
        *,
        annotation_file: str = "msrvtt_mc_test.jsonl",
        video_dir: VideoDirs = "videos/all",
        **kwargs: Any,
    ) -> None:
        self.annotation_name, self.clip_dir = annotation_file, video_dir
        if split != "test":
            raise ValueError(
                f"msrvtt_mc: MSRVTT-MC has only a test split, got split {split!r}: evaluate with `vqa test` "
                f"(data.train_split: null, data.val_split: null) a model trained on other data"
            )
        super().__init__(root, split, **kwargs)

    def annotation_path(self, split: str) -> Path:
        return self.root / self.annotation_name

    def load_split(self, split: str) -> list[BenchmarkRecord]:
        path = self.require_file(self.annotation_path(split), f"the {self.release} file")
        videos = self.video_folders(self.clip_dir, "the MSR-VTT video folder")
        return self.parse_records(path, read_jsonl(path), lambda f: self._parse(f, videos))

    def _parse(self, f: Fields, videos: tuple[Path, ...]) -> BenchmarkRecord:
        clip = f.ident("clip_name" if "clip_name" in f.raw else "video_id")
        options = tuple(f.text_list("options", length=5))
        label = f.integer("answer", lo=0, hi=4)
        return BenchmarkRecord(
            video_id=clip,
            video=self.clip_path(videos, f"{clip}.mp4"),
            question="",
            answer=options[label],
            family="mc",
            id=f.ident("qid") if f.has("qid") else None,
            options=options,
            label=label,
            caption=options[label],
        )
