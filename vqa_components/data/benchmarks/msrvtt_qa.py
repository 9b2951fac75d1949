"""``msrvtt_qa``: MSRVTT-QA (Xu et al., ACM MM 2017), open-ended, in either of its two distributed forms.

**Original release** (``layout: original``; https://github.com/xudejing/video-question-answering,
data at https://data.mendeley.com/datasets/bvxhs33bw6, videos from MSR-VTT)::

    <root>/train_qa.json  val_qa.json  test_qa.json
    <root>/video/video0.mp4 ... video9999.mp4

Each JSON file is a list of ``{"answer": str, "id": int, "question": str, "video_id": int, ...}``
(other fields, e.g. ``category_id``, are ignored); the clip of ``video_id: 7010`` is
``video/video7010.mp4`` (the naming of the authors' ``preprocess_msrvttqa.py``).

**JSONL form** (``layout: jsonl``), in either of two layouts. ALPRO's (``config_release/msrvtt_qa.json``:
``data/msrvtt_qa/txt/*.jsonl`` and ``data/msrvtt_qa/videos``, where its README unzips MSR-VTT's
``train_val_videos.zip`` and ``test_videos.zip`` together)::

    <root>/txt/train.jsonl  val.jsonl  test.jsonl  train_ans2label.json
    <root>/videos/video7010.mp4 ...

and ClipBERT's ``txt_db/msrvtt_qa`` (``src/configs/msrvtt_qa_base_resnet50.json``:
``/txt/msrvtt_qa/train.jsonl``, ``/txt/msrvtt_qa/train_ans2label.json``), the same files at the top
of the folder and no videos (ClipBERT reads its own frame database): ``video_dir`` names them::

    <root>/train.jsonl  val.jsonl  test.jsonl  train_ans2label.json

one ``{"question": str, "answer": str, "video_id": "video7010", "answer_type": "what",
"question_id": ...}`` per line; ``train_ans2label.json`` maps each answer of the vocabulary to its
label (1,500 answers). The clip of a record is ``<video_id>.mp4`` (ALPRO's ``video_fmt``).

``layout: auto`` (default) takes the JSONL form when ``<root>/txt/`` or ``<root>/train.jsonl``
exists, else the original. ``txt_dir`` (relative to ``root``) names the folder of the JSONL files
(default: ``txt`` if it exists, else ``root``); ``video_dir`` (relative to ``root`` or absolute; a
list of folders, or one per split) the video folder.

Vocabulary: the 1,500 most frequent training answers (``max_answers: 1500``, the size of
ClipBERT's and ALPRO's ``train_ans2label.json``; Xu et al. used 1,000). In the JSONL form the
release's ``train_ans2label.json`` is the vocabulary unless ``max_answers`` or ``answer_vocab``
is set. Families: the question's first word, what/who/how/where/when (as Xu et al. and ALPRO's
``evaluate_qa`` report them; the JSONL form's ``answer_type`` when present).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks._base import (
    DEFAULT,
    WH_FAMILIES,
    BenchmarkDataset,
    BenchmarkRecord,
    Fields,
    ReleaseLayoutError,
    VideoDirs,
    first_word_family,
    read_json,
    read_jsonl,
)
from vqa_components.registry import DATASETS

LAYOUTS = ("auto", "original", "jsonl")


class _OpenEndedQA(BenchmarkDataset):
    """Shared by MSRVTT-QA and MSVD-QA: the original ``{split}_qa.json`` files and the JSONL form."""

    family_names = (*WH_FAMILIES, "other")
    id_keys = ("id", "question_id", "video_id")
    #: video folder of each layout
    layout_video_dirs: ClassVar[dict[str, str]] = {}
    #: file extension of a clip in the JSONL form (ALPRO's ``video_fmt``)
    jsonl_video_ext = ".mp4"

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        layout: str = "auto",
        video_dir: VideoDirs | None = None,
        txt_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        self._video_dir_arg = video_dir
        self._txt_dir_arg = txt_dir
        self._max_answers_arg = kwargs.get("max_answers", DEFAULT)
        super().__init__(root, split, **kwargs)

    # --------------------------------------------------------------- layout
    def _resolve_layout(self) -> str:
        if self.layout != "auto":
            return self.layout
        jsonl = (
            self._txt_dir_arg is not None
            or (self.root / "txt").is_dir()
            or (self.root / "train.jsonl").is_file()
        )
        return "jsonl" if jsonl else "original"

    def txt_folder(self) -> Path:
        """The JSONL form's folder: ``txt_dir``, else ALPRO's ``txt/``, else ClipBERT's top level."""
        if self._txt_dir_arg is not None:
            return self.root / self._txt_dir_arg
        return self.root / "txt" if (self.root / "txt").is_dir() else self.root

    def annotation_path(self, split: str) -> Path:
        if self._resolve_layout() == "jsonl":
            return self.txt_folder() / f"{split}.jsonl"
        return self.root / f"{split}_qa.json"

    def _videos(self) -> tuple[Path, ...]:
        sub = self._video_dir_arg or self.layout_video_dirs[self._resolve_layout()]
        what = f"the {self.release} video folder"
        if (
            self._video_dir_arg is None
            and self.txt_folder() == self.root
            and self._resolve_layout() == "jsonl"
        ):
            what += " (ClipBERT's txt_db holds no videos: set video_dir to the folder(s) of the clips)"
        return self.video_folders(sub, what)

    def load_split(self, split: str) -> list[BenchmarkRecord]:
        path = self.annotation_path(split)
        if not path.is_file():
            other = (
                "txt/{split}.jsonl (ALPRO's JSONL form) or {split}.jsonl (ClipBERT's)"
                if self._resolve_layout() == "original"
                else ("{split}_qa.json (original release)")
            )
            raise ReleaseLayoutError(
                path,
                f"{self.name}: expected the {split} annotation file of the {self.release} release here "
                f"(layout {self._resolve_layout()!r}; the other layout has {other.format(split=split)})",
            )
        videos = self._videos()
        if self._resolve_layout() == "jsonl":
            return self.parse_records(path, read_jsonl(path), lambda f: self._parse_jsonl(f, videos))
        data = read_json(path)
        if not isinstance(data, list):
            raise AnnotationError(path, f"the top level must be a list of records, got {type(data).__name__}")
        return self.parse_records(path, ((None, r) for r in data), lambda f: self._parse_original(f, videos))

    # --------------------------------------------------------------- records
    def _original_video(self, f: Fields, videos: tuple[Path, ...]) -> tuple[str, Path]:
        raise NotImplementedError

    def _parse_original(self, f: Fields, videos: tuple[Path, ...]) -> BenchmarkRecord:
        question = f.text("question")
        video_id, path = self._original_video(f, videos)
        return BenchmarkRecord(
            video_id=video_id,
            video=path,
            question=question,
            answer=f.text("answer"),
            family=first_word_family(question),
            id=f.ident("id") if f.has("id") else None,
        )

    def _parse_jsonl(self, f: Fields, videos: tuple[Path, ...]) -> BenchmarkRecord:
        question = f.text("question")
        video_id = f.ident("video_id")
        family = f.text("answer_type").lower() if f.has("answer_type") else first_word_family(question)
        return BenchmarkRecord(
            video_id=video_id,
            video=self.clip_path(videos, f"{video_id}{self.jsonl_video_ext}"),
            question=question,
            answer=f.ident("answer"),
            family=family if family in self.family_names else "other",
            id=f.ident("question_id") if f.has("question_id") else None,
        )

    # ------------------------------------------------------------ vocabulary
    def build_vocab(self) -> tuple[list[str], str]:
        if self._resolve_layout() == "jsonl" and self._max_answers_arg == DEFAULT:
            path = self.require_file(
                self.txt_folder() / "train_ans2label.json", "the answer vocabulary train_ans2label.json"
            )
            data = read_json(path)
            if not isinstance(data, dict) or not data:
                raise AnnotationError(path, "must be a non-empty object mapping each answer to its label")
            for answer, label in data.items():
                if isinstance(label, bool) or not isinstance(label, int):
                    raise AnnotationError(
                        path, f"the label of {answer!r} must be an integer, got {label!r}", field=answer
                    )
            labels = sorted(data.values())
            if labels != list(range(len(labels))):
                raise AnnotationError(path, f"labels must be 0..{len(labels) - 1}, each once")
            self.max_answers = len(data)
            return sorted(data, key=data.get), f"the release's train_ans2label.json ({len(data)} answers)"
        return super().build_vocab()


@DATASETS.register("msrvtt_qa")
class MSRVTTQADataset(_OpenEndedQA):
    """MSRVTT-QA from its release folder (original train_qa.json..., or ALPRO's or ClipBERT's JSONL form)."""

    release = "MSRVTT-QA"
    default_max_answers = 1500
    vocab_source = "ClipBERT's and ALPRO's train_ans2label.json: the 1,500 most frequent training answers"
    layout_video_dirs: ClassVar[dict[str, str]] = {"original": "video", "jsonl": "videos"}

    def _original_video(self, f: Fields, videos: tuple[Path, ...]) -> tuple[str, Path]:
        number = f.integer("video_id", lo=0)
        return f"video{number}", self.clip_path(videos, f"video{number}.mp4")
