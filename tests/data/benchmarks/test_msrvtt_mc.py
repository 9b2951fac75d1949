"""msrvtt_mc: msrvtt_mc_test.jsonl (five captions, the right one's position) and videos/all/*.mp4;
test split only; evaluated through the CLI with a multiple-choice head."""

from __future__ import annotations

import json

import pytest

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks import MSRVTTMCDataset

CAPTIONS = [
    "a man is cooking",
    "a dog runs on grass",
    "people dance on a stage",
    "a car drives",
    "a cat sleeps",
]


@pytest.fixture
def release(tmp_path, mini):
    root = tmp_path / "msrvtt"
    mini.write_jsonl(root / "msrvtt_mc_test.jsonl", [
        {"qid": 0, "clip_name": "video7010", "answer": 1, "options": CAPTIONS},
        {"qid": 1, "clip_name": "video7020", "answer": 4, "options": CAPTIONS[::-1]},
        {"qid": 2, "video_id": "video7010", "answer": 0, "options": CAPTIONS},
    ])  # fmt: skip
    mini.mp4(root / "videos" / "all" / "video7010.mp4", level=10)
    mini.mp4(root / "videos" / "all" / "video7020.mp4", level=90)
    return root


def test_records(release):
    ds = MSRVTTMCDataset(str(release), num_frames=2)
    assert ds.split == "test" and len(ds) == 3 and ds.answer_vocab == [] and ds.families == []
    sample = ds[1]
    assert (
        sample["options"] == CAPTIONS[::-1]
        and sample["answer_idx"] == 4
        and sample["answer"] == "a man is cooking"
    )
    assert (
        sample["question"] == ""
        and sample["caption"] == "a man is cooking"
        and sample["video_id"] == "video7020"
    )
    assert ds.video_path(2) == release / "videos" / "all" / "video7010.mp4" and ds.records[2].id == "2"


def test_only_a_test_split_and_errors(release):
    with pytest.raises(ValueError, match="MSRVTT-MC has only a test split"):
        MSRVTTMCDataset(str(release), "train")
    (release / "msrvtt_mc_test.jsonl").write_text(json.dumps({"qid": 3, "clip_name": "v", "answer": 0,
                                                              "options": CAPTIONS[:4]}) + "\n")  # fmt: skip
    with pytest.raises(
        AnnotationError,
        match=r"record 0 \(line 1\) \[qid=3, clip_name='v'\]: field 'options': must hold 5 strings",
    ):
        MSRVTTMCDataset(str(release))


def test_evaluation_through_the_cli(release, tmp_path, mini):
    cfg = mini.recipe("msrvtt_mc", {"root": str(release)}, "multiple_choice", tmp_path / "run",
                      train_split=None, val_split=None)  # fmt: skip
    code, _ = mini.run_cli("test", cfg, tmp_path)
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["test/num_samples"] == 2


def test_the_evilm_recipe_reads_the_miniature_release_like_its_example_batch(release, mini):
    """An evaluation-only recipe (no training split): its test batches."""
    batch = mini.check_recipe_batch("recipes/evilm/msrvtt_mc.yaml", {"root": str(release)}, split="test")
    assert batch["batch_size"] == 2 and [len(o) for o in batch["options"]] == [5, 5]
