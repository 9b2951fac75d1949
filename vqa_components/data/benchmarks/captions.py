"""Caption corpora for pretraining: ``webvid`` (WebVid-2M/10M CSVs) and ``video_text_jsonl`` (any (video, text) JSONL).

``webvid`` (Bain et al., Frozen in Time, ICCV 2021; https://github.com/m-bain/webvid; the layout
its ``download.py`` and Frozen-in-Time's ``WebVid`` loader use)::

    <root>/metadata/results_2M_train.csv  results_2M_val.csv     (or results_10M_train.csv, cut: 10M)
    <root>/videos/<page_dir>/<videoid>.mp4 ...

CSV (comma-separated, header) columns ``videoid, contentUrl, duration, page_dir, name``; ``name``
is the caption. ``csv`` (a path relative to ``root``, may contain ``{split}`` and ``{cut}``) and
``video_dir`` override the names.

``video_text_jsonl``: one ``{"video": "relative/path.mp4", "text": "a caption"}`` per line in
``<root>/<split>.jsonl`` (``annotation_file``), the video relative to ``<root>/videos``
(``video_dir``; an absolute path is taken as is). ``text`` may be a list: one sample per caption.
Optional ``start``/``end`` (seconds) take that part of the video; optional ``id``. The key names
are ``video_key`` and ``text_key``.

Samples: ``video``, ``caption`` and ``question`` (both the caption, so ``text_field`` may be
either), ``video_id``, ``index``, ``family`` ``caption``; no answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqa_components.data.benchmarks._base import (
    BenchmarkDataset,
    BenchmarkRecord,
    Fields,
    read_csv,
    read_jsonl,
)
from vqa_components.registry import DATASETS

WEBVID_COLUMNS = ("videoid", "page_dir", "name")


class _Captions(BenchmarkDataset):
    kind = "captions"
    family_names = ()

    def sample_fields(self, record: BenchmarkRecord) -> dict[str, Any]:
        return {"caption": record.caption, "question": record.caption}


@DATASETS.register("webvid")
class WebVidDataset(_Captions):
    """WebVid-2M/10M captions (metadata/results_<cut>_<split>.csv, videos/<page_dir>/<videoid>.mp4)."""

    release = "WebVid"
    id_keys = ("videoid",)
    splits = ("train", "val")

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        cut: str = "2M",
        csv: str = "metadata/results_{cut}_{split}.csv",
        video_dir: str = "videos",
        **kwargs: Any,
    ) -> None:
        self.cut, self.csv_name, self.clip_dir = cut, csv, video_dir
        super().__init__(root, split, **kwargs)

    def annotation_path(self, split: str) -> Path:
        return self.root / self.csv_name.format(cut=self.cut, split=split)

    def load_split(self, split: str) -> list[BenchmarkRecord]:
        path = self.require_file(self.annotation_path(split), f"the WebVid-{self.cut} {split} CSV")
        videos = self.require_dir(self.root / self.clip_dir, "the WebVid video folder")
        return self.parse_records(path, read_csv(path, WEBVID_COLUMNS), lambda f: self._parse(f, videos))

    def _parse(self, f: Fields, videos: Path) -> BenchmarkRecord:
        video_id, page_dir, caption = f.text("videoid"), f.text("page_dir"), f.text("name")
        return BenchmarkRecord(
            video_id=video_id,
            video=videos / page_dir / f"{video_id}.mp4",
            question=caption,
            answer="",
            family="caption",
            id=video_id,
            caption=caption,
        )


@DATASETS.register("video_text_jsonl")
class VideoTextJSONLDataset(_Captions):
    """(video, text) pairs from <root>/<split>.jsonl, videos under <root>/videos: generic caption pretraining."""

    release = "video-text JSONL"
    id_keys = ("id", "video")
    splits = ("train", "val", "test")

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        annotation_file: str = "{split}.jsonl",
        video_dir: str = "videos",
        video_key: str = "video",
        text_key: str = "text",
        **kwargs: Any,
    ) -> None:
        self.annotation_name, self.clip_dir = annotation_file, video_dir
        self.video_key_name, self.text_key = video_key, text_key
        super().__init__(root, split, **kwargs)

    def annotation_path(self, split: str) -> Path:
        return self.root / self.annotation_name.format(split=split)

    def load_split(self, split: str) -> list[BenchmarkRecord]:
        path = self.require_file(self.annotation_path(split), f"the {split} (video, text) file")
        videos = self.require_dir(self.root / self.clip_dir, "the video folder")
        return self.parse_records(path, read_jsonl(path), lambda f: self._parse(f, videos))

    def _parse(self, f: Fields, videos: Path) -> list[BenchmarkRecord]:
        rel = f.text(self.video_key_name)
        value = f.raw.get(self.text_key)
        texts = f.text_list(self.text_key) if isinstance(value, list) else [f.text(self.text_key)]
        if not texts:
            raise f.fail("must hold at least one caption", self.text_key)
        start = f.number("start") if f.has("start") else None
        end = f.number("end") if f.has("end") else None
        if start is not None and end is not None and end <= start:
            raise f.fail(f"end ({end}) must be after start ({start})", "end")
        path = Path(rel) if Path(rel).is_absolute() else videos / rel
        rid = f.ident("id") if f.has("id") else None
        video_id = str(Path(rel).with_suffix(""))
        return [
            BenchmarkRecord(
                video_id=video_id,
                video=path,
                question=t,
                answer="",
                family="caption",
                id=rid,
                caption=t,
                start=start,
                end=end,
            )
            for t in texts
        ]
