"""``msvd_qa``: MSVD-QA (Xu et al., ACM MM 2017), open-ended, from its release folder.

Release (https://github.com/xudejing/video-question-answering, data at
https://data.mendeley.com/datasets/h5j7cpwnvn; videos: the MSVD ``YouTubeClips`` archive)::

    <root>/train_qa.json  val_qa.json  test_qa.json
    <root>/youtube_mapping.txt
    <root>/YouTubeClips/-4wsuPCjDBc_5_15.avi ...

ALPRO's JSONL form (``layout: jsonl``, or ``auto`` when ``<root>/txt/`` exists; ALPRO's
``config_release/msvd_qa.json`` and README: ``data/msvd_qa/txt/*.jsonl``, the YouTubeClips unpacked
into ``data/msvd_qa/videos``, ``video_fmt = '.avi'`` in ``src/tasks/run_video_qa.py``)::

    <root>/txt/train.jsonl  val.jsonl  test.jsonl  train_ans2label.json (2,423 answers)
    <root>/videos/-4wsuPCjDBc_5_15.avi ...

one ``{"question", "answer", "video_id": <clip name>, "answer_type", "question_id"}`` per line; the
clip is ``videos/<video_id>.avi``. As for MSRVTT-QA, ``train_ans2label.json`` is the vocabulary
unless ``max_answers`` or ``answer_vocab`` is set, and ``txt_dir`` / ``video_dir`` override the folders.

Each JSON file of the original release is a list of ``{"answer": str, "id": int, "question": str,
"video_id": int}``.
``youtube_mapping.txt`` has one ``<clip name> vid<N>`` line per clip (space-separated, 1970 lines);
the clip of ``video_id: N`` is ``YouTubeClips/<clip name>.avi`` where ``vid<N>`` maps to it (the
mapping just-ask's README and the authors' ``preprocess_msvdqa.py`` use; the authors renamed
the clips ``vid<N>.avi``, which ``video_dir`` + ``renamed_videos: true`` reads instead).

Vocabulary: the 1,000 most frequent training answers (``max_answers: 1000``, the answer set of
the authors' ``preprocess_msvdqa.py``; ALPRO keeps all 2,423). Families: the question's first
word, what/who/how/where/when, as Xu et al. report them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks._base import BenchmarkRecord, Fields, VideoDirs
from vqa_components.data.benchmarks.msrvtt_qa import _OpenEndedQA
from vqa_components.registry import DATASETS

_VID = re.compile(r"^vid(\d+)$")


@DATASETS.register("msvd_qa")
class MSVDQADataset(_OpenEndedQA):
    """MSVD-QA from its release (train_qa.json, youtube_mapping.txt, YouTubeClips/*.avi) or ALPRO's JSONL."""

    release = "MSVD-QA"
    default_max_answers = 1000
    vocab_source = (
        "the answer set of Xu et al.'s preprocess_msvdqa.py: the 1,000 most frequent training answers"
    )
    layout_video_dirs: ClassVar[dict[str, str]] = {"original": "YouTubeClips", "jsonl": "videos"}
    jsonl_video_ext = ".avi"

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        layout: str = "auto",
        video_dir: VideoDirs | None = None,
        renamed_videos: bool = False,
        **kwargs: Any,
    ) -> None:
        self.renamed_videos = renamed_videos
        self._mapping: dict[int, str] | None = None
        super().__init__(root, split, layout=layout, video_dir=video_dir, **kwargs)

    def mapping(self) -> dict[int, str]:
        """``{N: clip name}`` from ``youtube_mapping.txt``."""
        if self._mapping is None:
            path = self.require_file(
                self.root / "youtube_mapping.txt", "the clip-name mapping youtube_mapping.txt"
            )
            mapping: dict[int, str] = {}
            for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.split()
                match = _VID.match(parts[-1]) if len(parts) == 2 else None
                if match is None:
                    raise AnnotationError(
                        path, f"expected '<clip name> vid<N>', got {line.strip()!r}", line=lineno
                    )
                number = int(match.group(1))
                if number in mapping:
                    raise AnnotationError(path, f"vid{number} is mapped twice", line=lineno)
                mapping[number] = parts[0]
            self._mapping = mapping
        return self._mapping

    def _original_video(self, f: Fields, videos: tuple[Path, ...]) -> tuple[str, Path]:
        number = f.integer("video_id", lo=0)
        if self.renamed_videos:
            return f"vid{number}", self.clip_path(videos, f"vid{number}.avi")
        clip = self.mapping().get(number)
        if clip is None:
            raise f.fail(f"vid{number} is not in youtube_mapping.txt", "video_id")
        return clip, self.clip_path(videos, f"{clip}.avi")

    def load_split(self, split: str) -> list[BenchmarkRecord]:
        if not self.renamed_videos and self._resolve_layout() == "original":
            self.mapping()  # a missing mapping file is a layout error before any record
        return super().load_split(split)
