"""Annotation files: the MSRVTT-QA format, and errors that name the file, record and field."""

from __future__ import annotations

import json

import pytest

from vqa_components.data.annotations import (
    AnnotationError,
    QARecord,
    annotations_to_bytes,
    load_qa_annotations,
)

GOOD = {"video_id": "video7010", "question": "what is a man doing?", "answer": "cooking", "question_type": "what"}


def test_json_and_jsonl_roundtrip(tmp_path):
    recs = [QARecord(**GOOD), QARecord(**{**GOOD, "video_id": "v2"}, caption="a man cooks", id=3)]
    p = tmp_path / "a.json"
    p.write_bytes(annotations_to_bytes(recs))
    assert load_qa_annotations(p) == recs
    q = tmp_path / "a.jsonl"
    q.write_text("\n".join(json.dumps(r.to_dict()) for r in recs) + "\n\n")
    assert load_qa_annotations(q) == recs


@pytest.mark.parametrize(
    "records, expected",
    [
        ([GOOD, {k: v for k, v in GOOD.items() if k != "answer"}], ["record 1", "'answer'", "missing"]),
        ([GOOD, GOOD, {**GOOD, "question": 17, "id": 99}], ["record 2", "id=99", "'question'", "must be a string"]),
        ([{**GOOD, "video_id": ""}], ["record 0", "'video_id'", "non-empty"]),
        ([GOOD, ["not", "an", "object"]], ["record 1", "JSON object"]),
        ([{**GOOD, "options": ["a", "b"]}], ["record 0", "'answer'", "not one of the options"]),
    ],
)
def test_malformed_records_name_file_record_and_field(tmp_path, records, expected):
    p = tmp_path / "train.json"
    p.write_text(json.dumps(records))
    with pytest.raises(AnnotationError) as err:
        load_qa_annotations(p)
    msg = str(err.value)
    assert str(p) in msg
    for part in expected:
        assert part in msg, msg


def test_invalid_json_names_line(tmp_path):
    p = tmp_path / "val.jsonl"
    p.write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(AnnotationError, match=r"val.jsonl: line 2: invalid JSON at line 2"):
        load_qa_annotations(p)
    q = tmp_path / "val.json"
    q.write_text('{"not": "a list"}')
    with pytest.raises(AnnotationError, match="must be a list"):
        load_qa_annotations(q)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_qa_annotations(tmp_path / "nope.json")
