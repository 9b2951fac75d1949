"""ivqa: {train,val,test}.csv with five annotator answers, clips named <video_id>_<start>_<end>.mp4 (or
whole videos read from start to end), the min-count vocabulary, all five answers kept, a CLI fit."""

from __future__ import annotations

import json

import pytest
import torch

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks import IVQADataset

HEADER = ["video_id", "start", "end", "question", "answer1", "answer2", "answer3", "answer4", "answer5"]


@pytest.fixture
def release(tmp_path, mini):
    root = tmp_path / "iVQA"
    mini.write_csv(
        root / "train.csv",
        HEADER,
        [
            [
                "Bj2aQ4z1QvE",
                12,
                20,
                "what is the woman cutting?",
                "onion",
                "onion",
                "onions",
                "onion",
                "shallot",
            ],
            ["Bj2aQ4z1QvE", 12, 20, "what is used to stir?", "spoon", "spatula", "spoon", "spoon", "ladle"],
            ["zzLmK0rTn3c", 3, 9, "what is in the bowl?", "soup", "onions", "spatula", "soup", "water"],
        ],
    )
    mini.write_csv(
        root / "val.csv", HEADER, [["zzLmK0rTn3c", 3, 9, "what color?", "red", "red", "pink", "red", "red"]]
    )
    mini.write_csv(
        root / "test.csv",
        HEADER,
        [
            ["zzLmK0rTn3c", 3, 9, "what is poured?", "water", "soup", "soup", "oil", "soup"],
            ["Bj2aQ4z1QvE", 12, 20, "what is chopped?", "onion", "onion", "onion", "leek", "garlic"],
            ["Bj2aQ4z1QvE", 12, 20, "what is held?", "onion", "spoon", "spoon", "spoon", "knife"],
            ["zzLmK0rTn3c", 3, 9, "what is cooked?", "rice", "rice", "rice", "rice", "rice"],
        ],
    )
    mini.mp4(root / "video" / "Bj2aQ4z1QvE_12_20.mp4", level=20)
    mini.mp4(root / "video" / "zzLmK0rTn3c_3_9.mp4", level=120)
    return root


def test_vocabulary_answers_and_targets(release):
    ds = IVQADataset(str(release), "train", num_frames=2)
    # answers given at least twice among the 15 training answers, by frequency (ties alphabetical)
    assert ds.answer_vocab == ["onion", "spoon", "onions", "soup", "spatula"]
    assert ds.families == [] and len(ds) == 3
    sample = ds[0]
    assert sample["answers"] == ["onion", "onion", "onions", "onion", "shallot"]
    assert sample["answer"] == "onion" and sample["answer_idx"] == 0 and sample["family"] == "all"
    assert sample["video_id"] == "Bj2aQ4z1QvE_12_20" and sample["video"].shape == (2, 3, 32, 32)
    test = IVQADataset(str(release), "test")
    assert test[0]["answers"] == ["water", "soup", "soup", "oil", "soup"] and test[0]["answer"] == "soup"
    val = IVQADataset(str(release), "val")
    assert (
        val[0]["answer"] == "red"
        and val[0]["answer_idx"] == -1
        and val.protocol["unknown_answer_questions"] == 1
    )


def test_answer_is_the_most_frequent_known_one(release, mini):
    mini.write_csv(
        release / "val.csv", HEADER, [["zzLmK0rTn3c", 3, 9, "what?", "rice", "rice", "rice", "spoon", "x"]]
    )
    sample = IVQADataset(str(release), "val")[0]
    assert sample["answer"] == "spoon" and sample["answer_idx"] == 1  # 'rice' is not in the vocabulary


def test_whole_videos_are_read_from_start_to_end(release, mini):
    # a 4 s whole video at 8 fps whose frame i has level 4 i: [3, 9) is cut to [3, 4), frames 24..31
    mini.mp4(release / "full" / "zzLmK0rTn3c.mp4", level=0, frames=32)
    mini.mp4(release / "full" / "Bj2aQ4z1QvE.mp4", level=0, frames=8)
    ds = IVQADataset(str(release), "test", video_dir="full", video_name="{video_id}.mp4", num_frames=2)
    rec = ds.records[0]
    assert (rec.start, rec.end) == (3.0, 9.0) and ds.video_path(0).name == "zzLmK0rTn3c.mp4"
    levels = ds[0]["video"].float().mean(dim=(1, 2, 3)) / 4
    assert torch.all(levels >= 23.5)


def test_malformed_rows(release, mini):
    mini.write_csv(release / "val.csv", HEADER[:-1], [["zzLmK0rTn3c", 3, 9, "what?", "a", "b", "c", "d"]])
    with pytest.raises(
        AnnotationError, match=r"val.csv: line 1: the header lacks the column\(s\) \['answer5'\]"
    ):
        IVQADataset(str(release), "val")
    mini.write_csv(release / "val.csv", HEADER, [["zzLmK0rTn3c", 9, 3, "what?", "a", "b", "c", "d", "e"]])
    with pytest.raises(AnnotationError, match=r"record 0 \(line 2\) \[video_id='zzLmK0rTn3c'\]: field 'end'"):
        IVQADataset(str(release), "val")


def test_fit_through_the_cli(release, tmp_path, mini):
    cfg = mini.recipe("ivqa", {"root": str(release)}, "open_ended", tmp_path / "run", num_answers=5)
    assert mini.run_cli("fit", cfg, tmp_path)[0] == 0


def test_soft_accuracy_through_the_cli(release, tmp_path, mini, monkeypatch):
    """test_metrics.json holds iVQA's soft accuracy: a model that always answers "onion" scores
    min(#annotators who said onion / 2, 1) per question: 0 (soup x3), 1 (onion x3), 1/2 (onion x1),
    0 (rice, not in the vocabulary) -> 0.375 (exact match of the most frequent answer would be 0.25)."""
    from vqa_components.heads.answer_classifier import AnswerClassifier

    test = IVQADataset(str(release), "test")
    assert test.answer_vocab[0] == "onion" and [test[i]["answers_idx"] for i in range(4)] == [
        [-1, 3, 3, -1, 3], [0, 0, 0, -1, -1], [0, 1, 1, 1, -1], [-1] * 5]  # fmt: skip
    monkeypatch.setattr(AnswerClassifier, "answers", lambda self, out: out.logits.new_zeros(len(out.logits), dtype=torch.long))
    cfg = mini.recipe("ivqa", {"root": str(release)}, "open_ended", tmp_path / "run", num_answers=5,
                      train_split=None, val_split=None, eval_batch_size=4)  # fmt: skip
    code, out = mini.run_cli("test", cfg, tmp_path)
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(0.375) and metrics["test/num_samples"] == 4
    assert metrics["protocol"]["metric"].startswith("soft accuracy min(#annotators who gave the answer / 2, 1)")
    assert metrics["protocol"]["unknown_answer_questions"] == 1 and "37.50 %" in out


def test_the_co_tokenization_recipe_reads_the_miniature_release_like_its_example_batch(release, mini):
    mini.check_recipe_batch("recipes/cotok/finetune_ivqa.yaml", {"root": str(release)})


def test_the_release_without_time_columns_loads(tmp_path, mini):
    """just-ask's and FrozenBiLM's loaders read only video_id, question, answer1..5: no start/end.
    A clip is <video_id>.mp4, or else the file whose name begins with the video_id (merge_features.py)."""
    root = tmp_path / "iVQA"
    header = ["video_id", "question", *HEADER[4:]]
    row = ["Bj2aQ4z1QvE", "what is cut?", "onion", "onion", "leek", "x", "y"]
    mini.write_csv(root / "train.csv", header, [row])
    mini.write_csv(root / "test.csv", header, [
        ["Bj2aQ4z1QvE", "what is cut?", "onion", "onion", "leek", "x", "y"],
        ["zzLmK0rTn3c", "what is poured?", "soup", "soup", "soup", "oil", "water"],
    ])  # fmt: skip
    mini.mp4(root / "video" / "Bj2aQ4z1QvE.mp4", level=20, frames=2)
    mini.mp4(root / "video" / "zzLmK0rTn3c_3_9.mp4", level=120, frames=2)
    ds = IVQADataset(str(root), "test", num_frames=2)
    assert [ds.video_path(i).name for i in range(2)] == ["Bj2aQ4z1QvE.mp4", "zzLmK0rTn3c_3_9.mp4"]
    assert (ds.records[0].start, ds.records[0].end) == (None, None) and ds.answer_vocab == ["onion"]
    assert ds[1]["video"].shape == (2, 3, 32, 32) and ds[1]["answers"][0] == "soup"
    with pytest.raises(AnnotationError, match=r"test.csv: record 0 .*field 'start': needed by video_name"):
        IVQADataset(str(root), "test", video_name="{video_id}_{start}_{end}.mp4")
