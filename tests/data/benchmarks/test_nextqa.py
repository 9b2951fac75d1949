"""nextqa: nextqa/{train,val,test}.csv with a0..a4, map_vid_vidorID.json, NExTVideo/<dir>/<id>.mp4;
options, families from the type codes, errors, a fit through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks import NExTQADataset, ReleaseLayoutError

HEADER = [
    "video",
    "frame_count",
    "width",
    "height",
    "question",
    "answer",
    "qid",
    "type",
    "a0",
    "a1",
    "a2",
    "a3",
    "a4",
]
VIDEOS = {"4010069381": "0004/4010069381", "4882821564": "1025/4882821564", "2435100235": "1008/2435100235"}
OPTS = ["roll the handle", "tap their feet", "strum the string", "hit with sticks", "pat with hand"]


def row(video, question, answer, qid, code):
    return [video, 369, 640, 480, question, answer, qid, code, *OPTS]


@pytest.fixture
def release(tmp_path, mini):
    root = tmp_path / "NExT-QA"
    mini.write_csv(
        root / "nextqa" / "train.csv",
        HEADER,
        [
            row("4010069381", "how do the two man play the instrument", 2, 6, "CH"),
            row("4882821564", "what does the boy do after picking up the present", 1, 1, "TN"),
            row("4882821564", "what did the boy do before sitting down", 3, 2, "TP"),
            row("2435100235", "how many people are in the video", 4, 7, "DC"),
        ],
    )
    mini.write_csv(
        root / "nextqa" / "val.csv", HEADER, [row("2435100235", "where is this video taken", 0, 4, "DL")]
    )
    mini.write_csv(
        root / "nextqa" / "test.csv", HEADER, [row("4010069381", "why is the man smiling", 3, 9, "CW")]
    )
    mini.write_json(root / "nextqa" / "map_vid_vidorID.json", VIDEOS)
    for i, rel in enumerate(VIDEOS.values()):
        mini.mp4(root / "NExTVideo" / f"{rel}.mp4", level=50 * i)
    return root


def test_records_options_and_families(release):
    ds = NExTQADataset(str(release), "train", num_frames=2)
    assert ds.answer_vocab == [] and ds.families == ["causal", "temporal", "descriptive"]
    assert ds.video_path(1) == release / "NExTVideo" / "1025" / "4882821564.mp4"
    sample = ds[0]
    assert sample["options"] == OPTS and sample["answer_idx"] == 2 and sample["answer"] == "strum the string"
    assert (
        sample["family"] == "causal"
        and sample["question_type"] == "CH"
        and sample["video_id"] == "4010069381"
    )
    assert sample["video"].shape == (2, 3, 32, 32) and sample["video"].dtype == torch.uint8
    assert [ds[i]["family"] for i in range(4)] == ["causal", "temporal", "temporal", "descriptive"]
    assert ds[2]["question_type"] == "TN"  # TP counted as TN, as eval_mc.py does
    assert [r.id for r in ds.records] == ["4010069381_6", "4882821564_1", "4882821564_2", "2435100235_7"]
    assert NExTQADataset(str(release), "test")[0]["answer_idx"] == 3


def test_errors(release, mini):
    mini.write_csv(release / "nextqa" / "val.csv", HEADER, [row("999", "where is it", 0, 4, "DL")])
    with pytest.raises(
        AnnotationError,
        match=r"val.csv: record 0 \(line 2\) \[video='999', qid='4'\]: field 'video': video 999 is not in map",
    ):
        NExTQADataset(str(release), "val")
    mini.write_csv(release / "nextqa" / "val.csv", HEADER, [row("2435100235", "where is it", 0, 4, "XX")])
    with pytest.raises(AnnotationError, match=r"field 'type': must be one of CW, CH, TN"):
        NExTQADataset(str(release), "val")
    (release / "nextqa" / "map_vid_vidorID.json").unlink()
    with pytest.raises(ReleaseLayoutError, match=r"map_vid_vidorID.json: nextqa: expected the video map"):
        NExTQADataset(str(release), "train")


def test_fit_through_the_cli(release, tmp_path, mini):
    cfg = mini.recipe("nextqa", {"root": str(release)}, "multiple_choice", tmp_path / "run")
    assert mini.run_cli("fit", cfg, tmp_path)[0] == 0


def test_accuracy_per_family_and_question_type_through_the_cli(release, tmp_path, mini, monkeypatch):
    """Five test questions, answered [3, 0, 1, 0, 0] by the vtm_choice head (right: CW, TN, TP):
    causal 1/2, temporal 2/2 (TP counts as TN), descriptive 0/1; per type CW 1, CH 0, TN 1, DC 0."""
    from vqa_components.heads.vtm_choice import VTMHead

    mini.write_csv(release / "nextqa" / "test.csv", HEADER, [
        row("4010069381", "why is the man smiling", 3, 9, "CW"),
        row("4010069381", "how does the man hold the guitar", 2, 10, "CH"),
        row("4882821564", "what does the boy do next", 1, 3, "TN"),
        row("4882821564", "what did the boy do before", 0, 4, "TP"),
        row("2435100235", "how many people are there", 4, 8, "DC"),
    ])  # fmt: skip
    ds = NExTQADataset(str(release), "test")
    assert ds.breakdowns == {"question_type": ["CH", "CW", "DC", "TN"]}
    monkeypatch.setattr(VTMHead, "answers", lambda self, out: torch.tensor([3, 0, 1, 0, 0][: len(out.logits)]))
    cfg = mini.recipe("nextqa", {"root": str(release)}, "multiple_choice", tmp_path / "run",
                      train_split=None, val_split=None, eval_batch_size=5)  # fmt: skip
    assert mini.run_cli("test", cfg, tmp_path)[0] == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    acc = {k[len("test/") :]: v for k, v in metrics.items() if k.startswith("test/acc")}
    assert acc == pytest.approx({
        "acc": 3 / 5, "acc_causal": 1 / 2, "acc_temporal": 1.0, "acc_descriptive": 0.0,
        "acc_question_type_cw": 1.0, "acc_question_type_ch": 0.0, "acc_question_type_tn": 1.0,
        "acc_question_type_dc": 0.0,
    })  # fmt: skip
    assert metrics["test/num_samples"] == 5 and metrics["protocol"]["kind"] == "multiple_choice"
