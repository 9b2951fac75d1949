"""What every benchmark adapter shares: the release's folder, strict parsing, vocabularies, samples.

An adapter (one file per benchmark in this folder) reads a release *as distributed*: the user
gives its root folder and a split; the adapter checks at start-up that the files it needs are
where the release puts them (:class:`ReleaseLayoutError`, naming the path it expected), parses
them strictly (:class:`~vqa_components.data.annotations.AnnotationError`, naming the file, the
line or record, and the field), and turns each question into a :class:`BenchmarkRecord`.
:class:`BenchmarkDataset` does the rest, identically for every benchmark:

- **Answer vocabulary** (open-ended benchmarks): ``answer_vocab`` if given, otherwise the
  training split's answers by decreasing frequency (ties alphabetical), the ``max_answers``
  most frequent (each adapter documents its default ``K`` and where it comes from).
- **Out-of-vocabulary answers**: questions of the split the vocabulary is built from whose
  answer is not in it are dropped (``drop_unknown_train_answers``); in every other split they
  are kept with ``answer_idx = -1``, which no prediction equals, so they count as wrong (the
  papers' convention: accuracy is over all questions of the split).
- **Samples**: those of :class:`~vqa_components.data.dataset.VideoQADataset` (``video``,
  ``question``, ``answer``, ``answer_idx``, ``family``, ``video_id``, ``caption``, ``index``,
  ``options`` for multiple choice, where ``answer_idx`` is then the correct option's position)
  plus each benchmark's own fields (:attr:`BenchmarkRecord.extra`).
- **protocol**: a dict saying how answers are scored (vocabulary size and source, what
  happened to out-of-vocabulary answers, the metric), which ``vqa test`` writes into
  ``test_metrics.json``.
- **breakdowns**: the groups of each of :attr:`BenchmarkDataset.breakdown_fields` (sample fields
  the accuracy is also broken down by, besides ``family``).
- **Strict mode** (``on_bad_video: raise``): every clip is looked at once at start-up and the
  first missing or empty one stops the run, named with the release's ids.

Decoding, frame options, bad-video policy and the feature cache are ``VideoQADataset``'s.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor
from torch.utils.data import Dataset

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.bad_input import (
    DEFAULT_MAX_MISSING_FRACTION,
    SkippedSample,
    check_fraction,
    file_problem,
)
from vqa_components.data.dataset import (
    NOT_IN_VOCAB,
    ExampleSpec,
    VideoDirs,
    VideoQADataset,
    find_clip,
    folders_for_split,
    load_answer_vocab,
)
from vqa_components.data.frame_folder import read_frame_folder
from vqa_components.data.video_io import VideoDecodeError, read_video_streams

log = logging.getLogger(__name__)

#: ``max_answers`` value meaning "the benchmark's documented default".
DEFAULT = "default"
#: Question families of MSRVTT-QA and MSVD-QA, named by the question's first word (Xu et al. 2017).
WH_FAMILIES: tuple[str, ...] = ("what", "who", "how", "where", "when")
BAD_RECORD_POLICIES = ("raise", "skip")
#: What each kind of benchmark is scored with (the ``metric`` of :attr:`BenchmarkDataset.protocol`).
KINDS = ("open_ended", "multiple_choice", "count", "captions")


class ReleaseLayoutError(AnnotationError, FileNotFoundError):
    """A file or folder of the release is not where the adapter expects it (message: the path)."""


class UnknownSplitError(AnnotationError):
    """A split the release does not have (a ``ValueError``; ``vqa`` prints it as one line)."""


def first_word_family(question: str, families: Sequence[str] = WH_FAMILIES, other: str = "other") -> str:
    """The question's first word if it is one of ``families`` (case-insensitive), else ``other``."""
    words = question.strip().lower().split()
    return words[0] if words and words[0] in families else other


def holdout(key: str, fraction: float) -> bool:
    """Whether ``key`` falls in a deterministic ``fraction`` of keys (sha1 of the key; the same on
    every machine and run), used to hold out validation videos from a training file."""
    digest = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")
    return digest % 1_000_000 < round(fraction * 1_000_000)


# --------------------------------------------------------------------- records


@dataclass(frozen=True, eq=False, slots=True)
class BenchmarkRecord:
    """One question (or caption) of a release, with everything needed to read its clip.

    Attributes:
        video_id: the release's id of the clip (reported with unreadable videos).
        video: the clip's file, or its frame folder.
        question: question text ("" for caption corpora and caption-only multiple choice).
        answer: ground-truth answer text (for multiple choice: the correct option).
        family: question family (per-family accuracy).
        id: the release's id of the question, if it has one.
        options: candidate answers (multiple choice).
        label: position of the correct option in ``options`` (multiple choice).
        caption: a sentence describing the clip (caption corpora).
        start, end: the clip is this time range of ``video``, in seconds.
        first_frame, last_frame: the clip is frames ``[first_frame, last_frame)`` of a frame folder.
        extra: the benchmark's own sample fields (``answers``, ``count``, ...).
    """

    video_id: str
    video: Path
    question: str
    answer: str
    family: str
    id: str | int | None = None
    options: tuple[str, ...] | None = None
    label: int | None = None
    caption: str | None = None
    start: float | None = None
    end: float | None = None
    first_frame: int | None = None
    last_frame: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def question_type(self) -> str:  # the name VideoQADataset reads
        return self.family


class Fields:
    """Typed access to the fields of one raw record; every problem is an ``AnnotationError`` that
    names the file, the record (and line) and the field."""

    def __init__(
        self,
        path: Path,
        index: int,
        raw: Any,
        line: int | None = None,
        keys: tuple[str, ...] = ("id", "video_id"),
    ) -> None:
        self.path, self.index, self.raw, self.line, self.keys = path, index, raw, line, keys
        if not isinstance(raw, dict):
            raise self.fail(f"each record must be an object, got {type(raw).__name__}")

    def fail(self, problem: str, name: str | None = None, cause: str = "malformed_record") -> AnnotationError:
        """The error naming the file, record, line and field; ``cause`` (one of
        :data:`~vqa_components.data.bad_input.RECORD_CAUSES`) is what ``on_bad_record: skip`` counts it as."""
        err = AnnotationError(
            self.path, problem, index=self.index, record=self.raw, field=name, line=self.line, keys=self.keys
        )
        err.cause = cause  # type: ignore[attr-defined]
        return err


    def has(self, name: str) -> bool:
        value = self.raw.get(name)
        return value is not None and not (isinstance(value, str) and not value.strip())

    def _get(self, name: str) -> Any:
        if name not in self.raw or self.raw[name] is None:
            raise self.fail("required field is missing", name, "missing_field")
        return self.raw[name]

    def text(self, name: str) -> str:
        """A non-empty string (numbers in CSV cells are text already; JSON numbers are refused)."""
        value = self._get(name)
        if not isinstance(value, str):
            raise self.fail(f"must be a string, got {type(value).__name__} {value!r}", name)
        if not value.strip():
            raise self.fail("must be a non-empty string", name, "empty_question" if name == "question" else "malformed_record")
        return value.strip()

    def ident(self, name: str) -> str:
        """An identifier: a non-empty string or an integer, returned as text."""
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.fail(f"must be a string or an integer, got {type(value).__name__} {value!r}", name)
        text = str(value).strip()
        if not text:
            raise self.fail("must not be empty", name)
        return text

    def integer(self, name: str, lo: int | None = None, hi: int | None = None) -> int:
        """An integer (a JSON integer or a CSV cell of digits) in ``[lo, hi]``."""
        value = self._get(name)
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise self.fail(f"must be an integer, got {self.raw[name]!r}", name) from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"must be an integer, got {type(value).__name__} {value!r}", name)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(f"must be in [{lo}, {hi}], got {value}", name)
        return value

    def number(self, name: str) -> float:
        """A number (JSON number or a CSV cell)."""
        value = self._get(name)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise self.fail(f"must be a number, got {value!r}", name) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"must be a number, got {type(value).__name__} {value!r}", name)
        return float(value)

    def text_list(self, name: str, length: int | None = None) -> list[str]:
        value = self._get(name)
        if not isinstance(value, list):
            raise self.fail(f"must be a list of strings, got {type(value).__name__}", name)
        if length is not None and len(value) != length:
            raise self.fail(f"must hold {length} strings, got {len(value)}", name)
        for j, v in enumerate(value):
            if not isinstance(v, str) or not v.strip():
                raise self.fail(f"entry {j} must be a non-empty string, got {v!r}", name)
        return [v.strip() for v in value]


def _record_id(raw: Any, keys: Sequence[str], index: int) -> str:
    """A record's identifying fields as the release writes them (``vid_id=ACTION9, gif_name=...``), or ``record N``."""
    raw = raw if isinstance(raw, dict) else {}
    found = [f"{k}={raw[k]}" for k in keys if isinstance(raw.get(k), (str, int)) and not isinstance(raw[k], bool)]
    return ", ".join(found) or f"record {index}"


# ----------------------------------------------------------------------- files


def require_dir(path: Path, dataset: str, what: str) -> Path:
    if not path.is_dir():
        raise ReleaseLayoutError(path, f"{dataset}: expected {what} (a folder) here; it does not exist")
    return path


def require_file(path: Path, dataset: str, what: str) -> Path:
    if not path.is_file():
        raise ReleaseLayoutError(path, f"{dataset}: expected {what} here; it does not exist")
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"not UTF-8 text ({exc})") from exc


def read_json(path: Path) -> Any:
    """The JSON value of ``path``; invalid JSON names the line and column."""
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line of a JSON Lines file."""
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise AnnotationError(
                path, f"invalid JSON at line {lineno}, column {exc.colno}: {exc.msg}", line=lineno
            ) from exc


def read_csv(
    path: Path, columns: Sequence[str], delimiter: str = ","
) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of every data row; the header must hold ``columns`` (others are ignored)."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise AnnotationError(
            path, f"empty file; expected a header with the columns {list(columns)}"
        ) from None
    header = [h.strip() for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
        sep = "tab" if delimiter == "\t" else repr(delimiter)
        raise AnnotationError(
            path, f"the header lacks the column(s) {missing} ({sep}-separated header found: {header})", line=1
        )
    for row in reader:
        lineno = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise AnnotationError(
                path, f"{len(row)} cells but the header has {len(header)} columns", line=lineno, field=None
            )
        yield lineno, dict(zip(header, row))


# ---------------------------------------------------------------------- dataset


class BenchmarkDataset(VideoQADataset):
    """Base of the benchmark adapters (see the module docstring); not registered itself.

    Args:
        root: the release's root folder (each adapter documents the layout it expects there).
        split: ``train``, ``val`` or ``test`` (each adapter says which exist).
        answer_vocab: the answer vocabulary (a list or a ``.json``/``.txt`` file) instead of the
            one built from the training split.
        max_answers: ``K``, the number of most frequent training answers kept; ``"default"``
            is the benchmark's documented default, ``None`` keeps every training answer.
        drop_unknown_train_answers: drop the questions of the vocabulary's own split (``train``)
            whose answer is not in the vocabulary (the papers do); other splits always keep them
            (``answer_idx = -1``, counted wrong).
        on_bad_record: ``"raise"`` stops at the first malformed record (naming the file, record and
            field); ``"skip"`` leaves it out, logs it, keeps it in :attr:`skipped_records` with its
            cause (``missing_field``, ``empty_question``, ``malformed_record``), which the model's
            end-of-epoch report lists, and counts it in :attr:`protocol`. Errors of the file itself
            (invalid JSON, a missing column) always stop.
        num_frames, frame_size, streams, resize_short, crop_size, frame_sampling, training,
        on_bad_video, feature_cache, feature_cache_fingerprint, max_missing_fraction: as in
            :class:`~vqa_components.data.dataset.VideoQADataset`.

    Every adapter's video folder argument (``video_dir``, EgoTaskQA's ``frames_dir``) is relative to
    ``root`` (or absolute) and may be a list of folders searched in order (MSR-VTT's train-val and
    test archives unpack to two) or a ``{split: folder or list}`` dict (:meth:`video_folders`).
    """

    #: Where to evaluate when the release has no ``test`` split (named in the unknown-split error).
    test_split_hint: ClassVar[str | None] = None

    #: The release's name in messages and docs (``"MSRVTT-QA"``).
    release: ClassVar[str] = ""
    #: One of :data:`KINDS`.
    kind: ClassVar[str] = "open_ended"
    #: The splits the release has.
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: The split the answer vocabulary is built from.
    vocab_split: ClassVar[str] = "train"
    default_max_answers: ClassVar[int | None] = None
    #: Where ``default_max_answers`` comes from, for the protocol and the docs.
    vocab_source: ClassVar[str] = "every training answer"
    #: Fixed question families (``None``: those found in the training records).
    family_names: ClassVar[tuple[str, ...] | None] = None
    #: The release's fields that identify a record, shown in error messages.
    id_keys: ClassVar[tuple[str, ...]] = ("id", "video_id")
    #: Sample fields (of :attr:`BenchmarkRecord.extra`) by which accuracy is also reported, besides
    #: ``family``; a field whose value is a list puts the question in each of its groups.
    breakdown_fields: ClassVar[tuple[str, ...]] = ()

    answer_vocab: list[str]
    families: list[str]
    #: ``{field: [group, ...]}`` for each of :attr:`breakdown_fields` (the groups found in the
    #: training and this split's records), read by the model's accuracy metric.
    breakdowns: dict[str, list[str]]

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        answer_vocab: list[str] | str | None = None,
        max_answers: int | str | None = DEFAULT,
        drop_unknown_train_answers: bool = True,
        on_bad_record: str = "raise",
        num_frames: int = 16,
        frame_size: int | None = None,
        streams: list[dict[str, int]] | None = None,
        resize_short: int | None = None,
        crop_size: int | None = None,
        frame_sampling: str = "uniform",
        training: bool | None = None,
        on_bad_video: str = "skip",
        feature_cache: str | None = None,
        feature_cache_fingerprint: str | None = None,
        max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
    ) -> None:
        Dataset.__init__(self)
        self._init_decoding(
            split,
            training,
            num_frames,
            frame_size,
            streams,
            resize_short,
            crop_size,
            frame_sampling,
            on_bad_video,
        )
        if split not in self.splits:
            hint = ""
            if split == "test" and self.test_split_hint:
                hint = f": to evaluate, run `vqa test` with --data.test_split {self.test_split_hint}"
            has = ", ".join(self.splits)
            raise UnknownSplitError(
                Path(root), f"{self.name}: {self.release} has no {split} split (it has {has}){hint}"
            )
        self.max_missing_fraction = check_fraction(max_missing_fraction, "max_missing_fraction")
        if on_bad_record not in BAD_RECORD_POLICIES:
            raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {on_bad_record!r}")
        if (
            max_answers is not None
            and max_answers != DEFAULT
            and (isinstance(max_answers, bool) or not isinstance(max_answers, int) or max_answers <= 0)
        ):
            raise ValueError(f"max_answers must be a positive int, null or 'default', got {max_answers!r}")
        self.on_bad_record = on_bad_record
        #: the records of this split left out at start-up (``on_bad_record: skip``), with their causes
        self.skipped_records: list[SkippedSample] = []
        self._skipped_by_split: dict[str, list[SkippedSample]] = {}
        self._parsing = split
        self.root = require_dir(
            Path(root).expanduser(), self.name, f"the {self.release} release's root folder"
        )
        self.video_dir = self.root
        self.video_ext = ""
        self._records_cache: dict[str, list[BenchmarkRecord]] = {}
        self._clip_paths: dict[tuple[Path, ...], dict[str, Path]] = {}
        self._folders_by_split: dict[str, tuple[Path, ...]] = {}
        records = self.split_records(split)
        self.annotation_file = self.annotation_path(split)

        self.max_answers = self.default_max_answers if max_answers == DEFAULT else max_answers
        if self.kind in ("open_ended", "count"):
            if answer_vocab is not None:
                self.answer_vocab = load_answer_vocab(answer_vocab)
                self.vocab_origin = "given (answer_vocab)"
            else:
                self.answer_vocab, self.vocab_origin = self.build_vocab()
        else:
            self.answer_vocab, self.vocab_origin = [], "none (answers are options)"
        self._answer_to_idx = {a: i for i, a in enumerate(self.answer_vocab)}

        self.num_dropped_unknown = 0
        if self.kind in ("open_ended", "count") and split == self.vocab_split and drop_unknown_train_answers:
            kept = [r for r in records if self.in_vocab(r)]
            self.num_dropped_unknown = len(records) - len(kept)
            records = kept
        self.records = records  # type: ignore[assignment]
        self.num_unknown_answers = sum(not self.in_vocab(r) for r in records) if self.answer_vocab else 0
        if not self.records:
            log.warning("%s: no records for split %r", self.name, split)
        if self.family_names is not None:
            self.families = list(self.family_names)
        else:
            found = {
                r.family
                for r in self.split_records(self.vocab_split if self.vocab_split in self.splits else split)
            }
            self.families = sorted(found | {r.family for r in records})
        self.breakdowns = self.find_breakdowns(records)
        self.skipped_records = self._skipped_by_split.get(split, [])
        #: the folders this split's clips were looked for in (:meth:`video_folders`), in order
        self.video_dirs = self._folders_by_split.get(split, ())
        if self.video_dirs:
            self.video_dir = self.video_dirs[0]
        self._records_cache, self._clip_paths = {}, {}  # parsed once; only self.records is kept
        self._finish_init(feature_cache, feature_cache_fingerprint)

    # ------------------------------------------------------------ subclass API
    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", type(self).__name__)

    def load_split(self, split: str) -> list[BenchmarkRecord]:
        """Parse the release's files of ``split`` (subclasses)."""
        raise NotImplementedError

    def annotation_path(self, split: str) -> Path:
        """The annotation file of ``split`` (named in messages)."""
        raise NotImplementedError

    def vocab_answers(self, record: BenchmarkRecord) -> list[str]:
        """The answers a training record contributes to the vocabulary counts."""
        return [record.answer]

    def in_vocab(self, record: BenchmarkRecord) -> bool:
        return record.answer in self._answer_to_idx

    def build_vocab(self) -> tuple[list[str], str]:
        """``(vocabulary, how it was made)`` from the training split's answers."""
        counts = Counter(a for r in self.split_records(self.vocab_split) for a in self.vocab_answers(r))
        ranked = sorted(counts, key=lambda a: (-counts[a], a))
        if self.max_answers is not None:
            ranked = ranked[: self.max_answers]
        k = "every" if self.max_answers is None else f"the {self.max_answers} most frequent"
        return ranked, f"{k} {self.vocab_split} answers ({len(ranked)} of {len(counts)})"

    def find_breakdowns(self, records: Sequence[BenchmarkRecord]) -> dict[str, list[str]]:
        """The groups of each of :attr:`breakdown_fields` found in the vocabulary split's and ``records``."""
        if not self.breakdown_fields:
            return {}
        pool = list(records)
        if self.vocab_split in self.splits and self.vocab_split != self.split:
            pool += self.split_records(self.vocab_split)
        out: dict[str, list[str]] = {}
        for name in self.breakdown_fields:
            found: set[str] = set()
            for r in pool:
                value = r.extra.get(name)
                found.update(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v not in (None, ""))
            out[name] = sorted(found)
        return out

    def sample_fields(self, record: BenchmarkRecord) -> dict[str, Any]:
        """Fields added to (or replacing) the sample's; default: ``record.extra``."""
        return dict(record.extra)

    # -------------------------------------------------------------- helpers
    def split_records(self, split: str) -> list[BenchmarkRecord]:
        """The parsed records of ``split`` (parsed once)."""
        if split not in self._records_cache:
            self._parsing = split
            self._records_cache[split] = self.load_split(split)
        return self._records_cache[split]

    def parse_records(
        self,
        path: Path,
        raws: Iterator[tuple[int | None, Any]],
        parse: Callable[[Fields], BenchmarkRecord | list[BenchmarkRecord] | None],
    ) -> list[BenchmarkRecord]:
        """Apply ``parse`` to every raw record (``(line or None, value)``), with the bad-record policy;
        ``parse`` returns a record, several (one raw record giving several samples) or ``None``."""
        out: list[BenchmarkRecord] = []
        for index, (line, raw) in enumerate(raws):
            try:
                rec = parse(Fields(path, index, raw, line, self.id_keys))
            except AnnotationError as exc:
                if self.on_bad_record == "raise" or exc.index is None:
                    raise
                self._skipped_by_split.setdefault(self._parsing, []).append(
                    SkippedSample(
                        index=index,
                        video_id=str(raw.get("video_id", "")) if isinstance(raw, dict) else "",
                        path=str(path),
                        reason=str(exc),
                        cause=getattr(exc, "cause", "malformed_record"),
                        record_id=_record_id(raw, self.id_keys, index),
                    )
                )
                log.warning("%s: skipping a malformed record: %s", self.name, exc)
                continue
            if isinstance(rec, list):
                out.extend(rec)
            elif rec is not None:
                out.append(rec)
        return out

    def video_folders(self, value: VideoDirs, what: str) -> tuple[Path, ...]:
        """The video folders of the split being parsed, each checked to exist: ``value`` is the
        adapter's folder argument, one folder, a list searched in order, or a ``{split: ...}`` dict;
        relative to :attr:`root` (:func:`~vqa_components.data.dataset.folders_for_split`)."""
        try:
            folders = folders_for_split(value, self._parsing, base=self.root)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None
        for folder in folders:
            self.require_dir(folder, what)
        self._folders_by_split[self._parsing] = folders
        return folders

    def clip_path(self, folder: Path | Sequence[Path], name: str) -> Path:
        """``folder / name`` (with several folders: in the first that holds it), one shared ``Path``
        per clip (many questions share a clip)."""
        folders = (folder,) if isinstance(folder, Path) else tuple(folder)
        paths = self._clip_paths.setdefault(folders, {})
        path = paths.get(name)
        if path is None:
            path = paths[name] = find_clip(folders, name)
        return path

    def video_folders_searched(self) -> tuple[Path, ...]:
        return self.video_dirs or (self.root,)

    def require_file(self, path: Path, what: str) -> Path:
        return require_file(path, self.name, what)

    def require_dir(self, path: Path, what: str) -> Path:
        return require_dir(path, self.name, what)

    # ---------------------------------------------------------------- access
    def video_path(self, index: int) -> Path:
        return self.records[index].video  # type: ignore[attr-defined]

    def check_video_files(self) -> None:
        """Strict mode: the first record (in file order) whose clip or frame folder is missing or
        empty stops the run at start-up, named with the release's ids."""
        seen: set[Path] = set()
        for index, rec in enumerate(self.records):
            if rec.video in seen:  # type: ignore[attr-defined]
                continue
            seen.add(rec.video)  # type: ignore[attr-defined]
            found = file_problem(rec.video)  # type: ignore[attr-defined]
            if found is not None:
                ident = f"video_id={rec.video_id!r}" + (f", id={rec.id!r}" if rec.id is not None else "")  # type: ignore[attr-defined]
                raise VideoDecodeError(
                    rec.video,  # type: ignore[attr-defined]
                    f"{found[1]} (record {index} of {self.annotation_file}, {ident}; on_bad_video: skip leaves "
                    f"such records out and reports them)",
                )

    def answer_index(self, answer: str) -> int:
        return self._answer_to_idx.get(answer, NOT_IN_VOCAB)

    def _decode(self, index: int, positions: Callable[[int, int], list[int]]) -> tuple[Tensor, ...]:
        import torch

        rec: BenchmarkRecord = self.records[index]  # type: ignore[assignment]
        if rec.first_frame is not None or rec.last_frame is not None or rec.video.is_dir():
            return read_frame_folder(
                rec.video, self.streams, rec.first_frame, rec.last_frame, dtype=torch.uint8, indices=positions
            )
        return read_video_streams(
            rec.video, self.streams, start=rec.start, end=rec.end, dtype=torch.uint8, indices=positions
        )

    def video_key(self, index: int) -> str:
        from vqa_components.data.feature_cache import video_content_key

        rec: BenchmarkRecord = self.records[index]  # type: ignore[assignment]
        args = self.decode_args()
        if rec.start is not None or rec.end is not None:  # part of a file: the range is part of the key
            args["range"] = [rec.start, rec.end]
        return video_content_key(rec.video, **args)

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        if index < 0:
            index += len(self.records)
        sample = super().__getitem__(index)
        if isinstance(sample, SkippedSample):
            return sample
        rec: BenchmarkRecord = self.records[index]  # type: ignore[assignment]
        if self.kind == "multiple_choice":
            sample["answer_idx"] = rec.label
        elif self.kind == "captions":
            sample.pop("answer_idx", None)
            sample.pop("answer", None)
        sample.update(self.sample_fields(rec))
        return sample

    @property
    def protocol(self) -> dict[str, Any]:
        """How this split is scored (for ``test_metrics.json``): vocabulary, unknown answers, metric."""
        out: dict[str, Any] = {
            "dataset": self.name,
            "release": self.release,
            "split": self.split,
            "kind": self.kind,
            "metric": self.metric,
            "num_questions": len(self.records),
            "skipped_malformed_records": len(self.skipped_records),
        }
        if self.kind in ("open_ended", "count"):
            out.update(
                answer_vocab_size=len(self.answer_vocab),
                answer_vocab=self.vocab_origin,
                max_answers=self.max_answers,
                max_answers_default=f"{self.default_max_answers} ({self.vocab_source})",
                dropped_unknown_answer_questions=self.num_dropped_unknown,
                unknown_answer_questions=self.num_unknown_answers,
                unknown_answers=(
                    f"dropped from {self.vocab_split}"
                    if self.split == self.vocab_split
                    else "kept, answer_idx -1, counted wrong"
                ),
            )
        return out

    @property
    def metric(self) -> str:
        return {
            "open_ended": "accuracy over all questions of the split",
            "multiple_choice": "multiple-choice accuracy",
            "count": "mean squared error of the count (count_mse), and accuracy",
            "captions": "none (caption pretraining)",
        }[self.kind]

    # ------------------------------------------------------- shapes, no disk
    @classmethod
    def example_spec(cls, **kwargs: Any) -> ExampleSpec:
        spec = super().example_spec(**{k: v for k, v in kwargs.items() if k != "answer_vocab"})
        spec.families = list(cls.family_names or ())
        vocab = kwargs.get("answer_vocab")
        spec.answers = list(vocab) if isinstance(vocab, (list, tuple)) else []
        spec.has_answers = cls.kind != "captions"
        return spec

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, records={len(self)}, "
            f"answers={len(self.answer_vocab)}, streams={self.streams}, training={self.training})"
        )
