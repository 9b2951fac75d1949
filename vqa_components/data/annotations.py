"""Question-answer annotations in the MSRVTT-QA style.

A file is either JSON holding a list of records, or JSON Lines (``.jsonl``,
one record per line; blank lines are ignored). Each record is an object::

    {"video_id": "video7010", "question": "what is a man doing?", "answer": "cooking",
     "question_type": "what", "caption": "a man cooks pasta",      # optional
     "options": ["cooking", "dancing", ...], "id": 17}              # optional

Every problem raises :class:`AnnotationError`, whose message names the file,
the record (index, and its ``id``/``video_id`` when readable) and the field.
Unknown extra fields are ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED_FIELDS: tuple[str, ...] = ("video_id", "question", "answer", "question_type")


class AnnotationError(ValueError):
    """Malformed annotation file. ``path``, ``index`` and ``field`` say where; the message shows the
    record's ``keys`` fields (default ``id`` and ``video_id``) when they are readable."""

    def __init__(
        self,
        path: str | os.PathLike,
        problem: str,
        index: int | None = None,
        record: Any = None,
        field: str | None = None,
        line: int | None = None,
        keys: tuple[str, ...] = ("id", "video_id"),
    ) -> None:
        self.path = str(path)
        self.index = index
        self.field = field
        self.line = line
        where = [self.path]
        if index is not None:
            rec = f"record {index}"
            if line is not None:
                rec += f" (line {line})"
            ident = []
            if isinstance(record, dict):
                for key in keys:  # the fields that identify a record, shown when readable
                    if key in record and isinstance(record[key], (str, int)) and not isinstance(record[key], bool):
                        ident.append(f"{key}={record[key]!r}")
            if ident:
                rec += f" [{', '.join(ident)}]"
            where.append(rec)
        elif line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join(where)}: {problem}")


@dataclass(frozen=True)
class QARecord:
    """One question about one video.

    Attributes:
        video_id: file stem of the video (``<video_dir>/<video_id><ext>``).
        question: the question text.
        answer: the ground-truth answer (for multiple choice: one of ``options``).
        question_type: the question family (``what``/``who``/... or synthetic families).
        caption: a sentence describing the video, if any.
        options: candidate answers for multiple-choice questions, if any.
        id: the record's own identifier, if any.
    """

    video_id: str
    question: str
    answer: str
    question_type: str
    caption: str | None = None
    options: tuple[str, ...] | None = None
    id: str | int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object this record is written as (optional fields only when set)."""
        out: dict[str, Any] = {
            "video_id": self.video_id,
            "question": self.question,
            "answer": self.answer,
            "question_type": self.question_type,
        }
        if self.caption is not None:
            out["caption"] = self.caption
        if self.options is not None:
            out["options"] = list(self.options)
        if self.id is not None:
            out["id"] = self.id
        return out


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _parse_record(path: Path, index: int, raw: Any, line: int | None) -> QARecord:
    def fail(problem: str, field: str | None = None) -> AnnotationError:
        return AnnotationError(path, problem, index=index, record=raw, field=field, line=line)

    if not isinstance(raw, dict):
        raise fail(f"each record must be a JSON object, got {_type_name(raw)}")

    def text(field: str, required: bool) -> str | None:
        if field not in raw or (not required and raw[field] is None):
            if required:
                raise fail("required field is missing", field)
            return None
        value = raw[field]
        if not isinstance(value, str):
            raise fail(f"must be a string, got {_type_name(value)} {value!r}", field)
        if not value.strip():
            raise fail("must be a non-empty string", field)
        return value

    values = {f: text(f, required=True) for f in REQUIRED_FIELDS}
    caption = text("caption", required=False)

    options: tuple[str, ...] | None = None
    if raw.get("options") is not None:
        opts = raw["options"]
        if not isinstance(opts, list):
            raise fail(f"must be a list of strings, got {_type_name(opts)}", "options")
        if not opts:
            raise fail("must not be an empty list", "options")
        for j, opt in enumerate(opts):
            if not isinstance(opt, str):
                raise fail(f"option {j} must be a string, got {_type_name(opt)} {opt!r}", "options")
            if not opt.strip():
                raise fail(f"option {j} must be a non-empty string", "options")
        if values["answer"] not in opts:
            raise fail(f"answer {values['answer']!r} is not one of the options {opts!r}", "answer")
        options = tuple(opts)

    rid = raw.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise fail(f"must be a string or an integer, got {_type_name(rid)} {rid!r}", "id")

    return QARecord(
        video_id=values["video_id"],  # type: ignore[arg-type]
        question=values["question"],  # type: ignore[arg-type]
        answer=values["answer"],  # type: ignore[arg-type]
        question_type=values["question_type"],  # type: ignore[arg-type]
        caption=caption,
        options=options,
        id=rid,
    )


def load_qa_annotations(path: str | os.PathLike) -> list[QARecord]:
    """Read a ``.json`` (list of records) or ``.jsonl`` (one record per line) file.

    Raises:
        FileNotFoundError: the file does not exist.
        AnnotationError: invalid JSON (with line and column), top level not a
            list, a record that is not an object, a missing required field, a
            field of the wrong type, or an empty string.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"not UTF-8 text ({exc})") from exc

    records: list[QARecord] = []
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        index = 0
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AnnotationError(
                    path, f"invalid JSON at line {lineno}, column {exc.colno}: {exc.msg}", line=lineno
                ) from exc
            records.append(_parse_record(path, index, raw, lineno))
            index += 1
        return records

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, list):
        raise AnnotationError(path, f"the top level must be a list of records, got {_type_name(data)}")
    return [_parse_record(path, i, raw, None) for i, raw in enumerate(data)]


def annotations_to_bytes(records: list[QARecord]) -> bytes:
    """Serialise ``records`` in the JSON list format (UTF-8, stable key order, newline-terminated)."""
    return (json.dumps([r.to_dict() for r in records], indent=1, ensure_ascii=False) + "\n").encode("utf-8")
