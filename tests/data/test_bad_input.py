"""Bad input, nothing lost: causes of left-out samples, the per-epoch report (counts per cause, first
ids, records counted once, start-up skips, the merge of 2 real gloo processes), long questions."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import gloo_ranks

from vqa_components import create
from vqa_components.data.bad_input import (
    FIRST_IDS,
    QuestionTooLongError,
    SkippedSample,
    SkipReport,
    file_problem,
    question_token_counter,
    screen_long_questions,
    select_rows,
    video_cause,
)


def bad_video(index, cause="undecodable_video"):
    return SkippedSample(index=index, video_id=f"video{index}", path=f"/d/video{index}.mp4", reason="corrupt", cause=cause)


def test_video_causes_from_the_file_system(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    (tmp_path / "frames").mkdir()
    assert video_cause(tmp_path / "gone.mp4") == "missing_video"
    assert video_cause(tmp_path / "empty.mp4") == "empty_video"
    assert video_cause(tmp_path / "junk.mp4") == "undecodable_video"
    assert file_problem(tmp_path / "frames") == ("empty_video", "the frame folder is empty")
    assert file_problem(tmp_path / "junk.mp4") is None


def test_counts_per_cause_first_ids_by_record_index_and_each_record_once():
    report = SkipReport()
    report.add([bad_video(i) for i in (40, 3, 17)])
    report.add([bad_video(3), bad_video(9, "missing_video")])  # record 3 again (DDP's sampler repeats samples)
    report.add([None, "an old dataset's message"])
    startup = [SkippedSample(2, "", "/d/train.json", "…: field 'question': must be a non-empty string",
                             cause="empty_question", record_id="id=12, video_id=7")]  # fmt: skip
    summary = report.reduce(startup)
    assert summary.counts == {"missing_video": 1, "undecodable_video": 3, "empty_question": 1, "unreadable_sample": 2}
    assert list(summary.counts) == ["missing_video", "undecodable_video", "empty_question", "unreadable_sample"]
    assert [s.ident for s in summary.first["undecodable_video"]] == ["video3", "video17", "video40"]
    assert summary.first["empty_question"][0].ident == "id=12, video_id=7"
    assert summary.total == 7 and summary.videos == 4
    text = summary.format("train")
    assert text.splitlines()[0] == (
        "train epoch: left out 7 sample(s): missing_video 1, undecodable_video 3, empty_question 1, unreadable_sample 2"
    )
    assert "  undecodable_video: video3, video17, video40; e.g. /d/video3.mp4 (record 3, video_id='video3'): corrupt" in text
    as_dict = summary.as_dict()
    assert as_dict["missing_video"] == {"count": 1, "first_ids": ["video9"], "first": str(bad_video(9, "missing_video"))}
    json.dumps(as_dict)  # plain values


def test_only_the_first_ids_are_listed():
    report = SkipReport()
    report.add([bad_video(i) for i in range(FIRST_IDS + 5, 0, -1)])
    summary = report.reduce()
    assert summary.counts["undecodable_video"] == FIRST_IDS + 5
    assert [s.index for s in summary.first["undecodable_video"]] == list(range(1, FIRST_IDS + 1))
    assert f"(first {FIRST_IDS} of {FIRST_IDS + 5})" in summary.format("val")


WORKER = """
    from vqa_components.data.bad_input import SkippedSample, SkipReport
    def bad(i, cause):
        return SkippedSample(i, f"video{i}", f"/d/video{i}.mp4", "x", cause)
    report = SkipReport()
    if rank == 0:
        report.add([bad(5, "missing_video"), bad(30, "undecodable_video"), bad(8, "undecodable_video")])
    else:   # record 8 again (padding of the distributed sampler), and one of its own
        report.add([bad(8, "undecodable_video"), bad(2, "empty_video")])
    startup = [SkippedSample(0, "", "/d/train.json", "bad", cause="missing_field", record_id="id=0")]
    s = report.reduce(startup)
    print(json.dumps({"counts": s.counts, "first": {c: [x.ident for x in v] for c, v in s.first.items()}}))
"""


@pytest.mark.slow  # several real processes
def test_two_processes_merge_their_reports():
    results = gloo_ranks(WORKER)
    assert results[0] == results[1]
    assert results[0]["counts"] == {"missing_video": 1, "empty_video": 1, "undecodable_video": 2, "missing_field": 1}
    assert results[0]["first"]["undecodable_video"] == ["video8", "video30"]


def test_select_rows_keeps_per_row_values_in_step():
    batch = {
        "video": torch.arange(3)[:, None].expand(3, 4).float(), "question": ["a", "b", "c"],
        "answer_idx": torch.tensor([5, 6, 7]), "options": [["x"], ["y"], ["z"]], "streams": (torch.zeros(3, 2), torch.ones(3)),
        "batch_size": 3, "num_skipped": 3, "skipped": ["s1", "s2", "s3"],
    }  # fmt: skip
    out = select_rows(batch, [0, 2])
    assert out["video"][:, 0].tolist() == [0.0, 2.0] and out["question"] == ["a", "c"]
    assert out["answer_idx"].tolist() == [5, 7] and out["options"] == [["x"], ["z"]]
    assert out["streams"][0].shape == (2, 2) and out["batch_size"] == 2
    assert out["skipped"] == ["s1", "s2", "s3"] and out["num_skipped"] == 3  # about the batch, not its rows


def test_long_questions_are_counted_with_the_encoder_s_own_tokenizer():
    encoder = create("text_encoder", "small_transformer", dim=16, num_layers=1, num_heads=2, max_length=8)
    limit, count = question_token_counter(encoder)
    # CLIP BPE: <start> + one token per common word + <end>; the encoder would truncate past 8
    assert limit == 8 and count(["what is it", "one two three four five six seven"]) == [5, 9]
    batch = {"question": ["what is it", "one two three four five six seven", "why"],
             "video_id": ["v0", "v1", "v2"], "index": torch.tensor([10, 11, 12]), "video": torch.zeros(3, 2)}  # fmt: skip
    texts = [[q] for q in batch["question"]]
    kept, skipped = screen_long_questions(batch, (limit, count), texts, "skip", "train")
    assert kept["question"] == ["what is it", "why"] and kept["video"].shape == (2, 2)
    assert [(s.index, s.video_id, s.cause, s.ident) for s in skipped] == [(11, "v1", "question_too_long", "record 11")]
    assert "9 tokens, more than the text encoder's limit of 8" in skipped[0].reason
    with pytest.raises(
        QuestionTooLongError,
        match=r"^/d/train.json: record 11 \[video_id='v1'\]: field 'question': the question has 9 tokens, more than "
        r"the text encoder's limit of 8: 'one two three four five six seven'\. Shorten it",
    ):
        screen_long_questions(batch, (limit, count), texts, "raise", "train", "/d/train.json")
    # multiple choice: a question is too long if one of its question+option pairs is
    pairs = [["what is it red", "what is it a very long option of words"], ["why a", "why b"], ["x y", "x z"]]
    kept, skipped = screen_long_questions(batch, (limit, count), pairs, "skip", "val")
    assert [s.index for s in skipped] == [10] and kept["question"] == batch["question"][1:]
