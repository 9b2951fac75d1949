"""Caption corpora for pretraining: ``webvid`` (WebVid-2M/10M CSVs) and ``video_text_jsonl`` (any (video, text) JSONL).

``webvid`` (Bain et al., Frozen in Time, ICCV 2021; https://github.com/m-bain/webvid; the layout
its ``download.py`` and Frozen-in-Time's ``WebVid`` loader use)::

    <root>/metadata/results_2M_train.csv  results_2M_val.csv     (or results_10M_train.csv, cut: 10M)
    <root>/videos/<page_dir>/<videoid>.mp4 ...

CSV (comma-separated, header) columns ``videoid, contentUrl, duration, page_dir, name``; ``name``
is the caption. Where the CSVs are: ``metadata/results_<cut>_<split>.csv`` (Frozen-in-Time's
``WebVid`` loader), else ``results_<cut>_<split>.csv`` directly in ``root`` (the files as
downloaded); ``csv`` names the file instead (relative to ``root`` or absolute; may contain
``{split}`` and ``{cut}``), and ``root`` may be a CSV file itself (then its folder is the root).
``video_dir`` overrides the video folder. WebVid has no test split: evaluate on ``val``
(``vqa test --data.test_split val``, which the error for ``test`` says).

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
    VideoDirs,
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
    test_split_hint = "val"
    #: where the CSV of a split is looked for, in order, when ``csv`` is not given
    csv_names = ("metadata/results_{cut}_{split}.csv", "results_{cut}_{split}.csv")

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        cut: str = "2M",
        csv: str | None = None,
        video_dir: VideoDirs = "videos",
        **kwargs: Any,
    ) -> None:
        given = Path(root).expanduser()
        if given.suffix.lower() == ".csv" and given.is_file():  # the CSV itself
            root, csv = str(given.parent), str(given.resolve())
        self.cut, self.csv_name, self.clip_dir = cut, csv, video_dir
        super().__init__(root, split, **kwargs)

    def annotation_path(self, split: str) -> Path:
        names = (self.csv_name,) if self.csv_name else self.csv_names
        paths = [self.root / n.format(cut=self.cut, split=split) for n in names]
        return next((p for p in paths if p.is_file()), paths[0])

    def load_split(self, split: str) -> list[BenchmarkRecord]:
        where = (
            ""
            if self.csv_name
            else f" (or results_{self.cut}_{split}.csv in the root folder, or csv: <file>)"
        )
        path = self.require_file(self.annotation_path(split), f"the WebVid-{self.cut} {split} CSV{where}")
        videos = self.video_folders(self.clip_dir, "the WebVid video folder")
        return self.parse_records(path, read_csv(path, WEBVID_COLUMNS), lambda f: self._parse(f, videos))

    def _parse(self, f: Fields, videos: tuple[Path, ...]) -> BenchmarkRecord:
        video_id, page_dir, caption = f.text("videoid"), f.text("page_dir"), f.text("name")
        return BenchmarkRecord(
            video_id=video_id,
            video=self.clip_path(videos, f"{page_dir}/{video_id}.mp4"),
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
        video_dir: VideoDirs = "videos",
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
        videos = self.video_folders(self.clip_dir, "the video folder")
        return self.parse_records(path, read_jsonl(path), lambda f: self._parse(f, videos))

    def _parse(self, f: Fields, videos: tuple[Path, ...]) -> list[BenchmarkRecord]:
        rel = f.text(self.video_key_name)
        value = f.raw.get(self.text_key)
        texts = f.text_list(self.text_key) if isinstance(value, list) else [f.text(self.text_key)]
        if not texts:
            raise f.fail("must hold at least one caption", self.text_key)
        start = f.number("start") if f.has("start") else None
        end = f.number("end") if f.has("end") else None
        if start is not None and end is not None and end <= start:
            raise f.fail(f"end ({end}) must be after start ({start})", "end")
        path = Path(rel) if Path(rel).is_absolute() else self.clip_path(videos, rel)
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
