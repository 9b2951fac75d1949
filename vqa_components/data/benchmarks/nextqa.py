"""``nextqa``: NExT-QA multiple choice (Xiao et al., CVPR 2021), from the release folder.

Release (https://github.com/doc-doc/NExT-QA: ``dataset/nextqa/``; videos: ``NExTVideo``, the
VidOR clips the README links)::

    <root>/nextqa/train.csv  val.csv  test.csv
    <root>/nextqa/map_vid_vidorID.json
    <root>/NExTVideo/0004/4010069381.mp4 ...

CSV (comma-separated, header) columns ``video, frame_count, width, height, question, answer, qid,
type, a0, a1, a2, a3, a4``: ``answer`` is the position (0-4) of the correct option among
``a0..a4``; ``type`` is one of CW, CH (causal why/how), TN, TC, TP (temporal next/current/previous),
DC, DL, DO (descriptive count/location/other). ``map_vid_vidorID.json`` maps ``video`` (a number,
as text) to its VidOR path without extension (``"4010069381": "0004/4010069381"``); the clip is
``NExTVideo/<that>.mp4``. ``annotation_dir`` and ``video_dir`` (relative to ``root``) override the
two folders.

Samples: ``options`` (five), ``answer_idx`` = the correct option, ``family`` causal / temporal /
descriptive (the first letter of ``type``, as the release's ``eval_mc.py`` groups them), and
``question_type`` = ``type`` with TP counted as TN (``eval_mc.py`` merges them); accuracy is
reported per family and per ``question_type`` (``acc_question_type_cw``, ...). The question id
is ``<video>_<qid>`` (``eval_mc.py``'s key).
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
    read_csv,
    read_json,
)
from vqa_components.registry import DATASETS

COLUMNS = ("video", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4")
TYPE_FAMILIES = {"C": "causal", "T": "temporal", "D": "descriptive"}
TYPES = ("CW", "CH", "TN", "TC", "TP", "DC", "DL", "DO")


@DATASETS.register("nextqa")
class NExTQADataset(BenchmarkDataset):
    """NExT-QA multiple choice from the release's CSVs, map_vid_vidorID.json and NExTVideo clips."""

    release = "NExT-QA"
    id_keys = ("video", "qid")
    kind = "multiple_choice"
    family_names = ("causal", "temporal", "descriptive")
    breakdown_fields = ("question_type",)

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        annotation_dir: str = "nextqa",
        video_dir: VideoDirs = "NExTVideo",
        **kwargs: Any,
    ) -> None:
        self.annotation_dir, self.clip_dir = annotation_dir, video_dir
        self._map: dict[str, str] | None = None
        super().__init__(root, split, **kwargs)

    def annotation_path(self, split: str) -> Path:
        return self.root / self.annotation_dir / f"{split}.csv"

    def video_map(self) -> dict[str, str]:
        if self._map is None:
            path = self.require_file(
                self.root / self.annotation_dir / "map_vid_vidorID.json", "the video map map_vid_vidorID.json"
            )
            data = read_json(path)
            if not isinstance(data, dict):
                raise AnnotationError(
                    path, f"must be an object mapping video ids to paths, got {type(data).__name__}"
                )
            for key, value in data.items():
                if not isinstance(value, str) or not value.strip():
                    raise AnnotationError(
                        path, f"must map to a non-empty path string, got {value!r}", field=key
                    )
            self._map = {str(k): v.strip() for k, v in data.items()}
        return self._map

    def load_split(self, split: str) -> list[BenchmarkRecord]:
        path = self.require_file(self.annotation_path(split), f"the {self.release} {split} file")
        videos = self.video_folders(self.clip_dir, f"the {self.release} video folder")
        mapping = self.video_map()
        return self.parse_records(path, read_csv(path, COLUMNS), lambda f: self._parse(f, videos, mapping))

    def _parse(self, f: Fields, videos: tuple[Path, ...], mapping: dict[str, str]) -> BenchmarkRecord:
        video = f.text("video")
        if video not in mapping:
            raise f.fail(f"video {video} is not in map_vid_vidorID.json", "video")
        code = f.text("type").upper()
        if code not in TYPES:
            raise f.fail(f"must be one of {', '.join(TYPES)}, got {code!r}", "type")
        options = tuple(f.text(f"a{i}") for i in range(5))
        label = f.integer("answer", lo=0, hi=4)
        return BenchmarkRecord(
            video_id=video,
            video=self.clip_path(videos, f"{mapping[video]}.mp4"),
            question=f.text("question"),
            answer=options[label],
            family=TYPE_FAMILIES[code[0]],
            id=f"{video}_{f.text('qid')}",
            options=options,
            label=label,
            extra={"question_type": "TN" if code == "TP" else code},
        )
