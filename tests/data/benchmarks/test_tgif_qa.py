"""tgif_qa: the four tasks' tab-separated {Train,Test}_*_question.csv files and GIFs; FrameQA types,
5-way multiple choice, counts, the held-out validation option, errors, fits through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks import ReleaseLayoutError, TGIFQADataset

GIFS = [f"tumblr_n{i}k172bbdPI1u1lr18o1_250" for i in range(6)]
FRAMEQA = ["gif_name", "question", "answer", "type", "vid_id", "key", "description"]
MC = ["gif_name", "question", "a1", "a2", "a3", "a4", "a5", "answer", "vid_id", "key"]
COUNT = ["gif_name", "question", "answer", "vid_id", "key"]


@pytest.fixture
def release(tmp_path, mini):
    root = tmp_path / "TGIF-QA"
    d = root / "dataset"
    mini.write_csv(
        d / "Train_frameqa_question.csv",
        FRAMEQA,
        [
            [
                GIFS[0],
                "what is the color of the shirt ?",
                "black",
                2,
                "FRAMEQA1",
                10,
                "a man in a black shirt .",
            ],
            [GIFS[1], "how many dogs are playing ?", "two", 1, "FRAMEQA2", 11, "two dogs are playing ."],
            [GIFS[2], "what is the man playing ?", "guitar", 0, "FRAMEQA3", 12, "a man is playing guitar ."],
            [
                GIFS[3],
                "where is the woman dancing . ?",
                "room",
                3,
                "FRAMEQA4",
                13,
                "a woman dances in a room .",
            ],
            [GIFS[0], "what is the color of the hat ?", "black", 2, "FRAMEQA5", 10, "a black hat ."],
        ],
        delimiter="\t",
    )
    mini.write_csv(
        d / "Test_frameqa_question.csv",
        FRAMEQA,
        [
            [GIFS[4], "what is the color of the car ?", "white", 2, "FRAMEQA6", 14, "a white car ."],
            [GIFS[5], "what is the cat eating ?", "guitar", 0, "FRAMEQA7", 15, "a cat eats a guitar ."],
        ],
        delimiter="\t",
    )
    for task, prefix in (("action", "ACTION"), ("transition", "TRANS")):
        rows = [
            [
                GIFS[i],
                f"What does the man do {i + 2} times ?",
                "nod",
                "wave hand",
                "jump",
                "sway",
                "clap",
                i % 5,
                f"{prefix}{i}",
                i,
            ]
            for i in range(4)
        ]
        mini.write_csv(d / f"Train_{task}_question.csv", MC, rows, delimiter="\t")
        mini.write_csv(d / f"Test_{task}_question.csv", MC, rows[:2], delimiter="\t")
    mini.write_csv(
        d / "Train_count_question.csv",
        COUNT,
        [
            [GIFS[0], "How many times does the man nod ?", 3, "COUNT1", 10],
            [GIFS[1], "How many times does the dog jump ?", 10, "COUNT2", 11],
            [GIFS[2], "How many times does the cat blink ?", 2, "COUNT3", 12],
        ],
        delimiter="\t",
    )
    mini.write_csv(
        d / "Test_count_question.csv",
        COUNT,
        [
            [GIFS[3], "How many times does the woman clap ?", 4, "COUNT4", 13],
            [GIFS[4], "How many times does the man jump ?", 2, "COUNT5", 14],
        ],
        delimiter="\t",
    )
    for i, name in enumerate(GIFS):
        mini.gif(root / "gifs" / f"{name}.gif", level=30 * i)
    return root


def test_frameqa_types_vocab_and_gifs(release):
    train = TGIFQADataset(str(release), "train", task="frameqa", num_frames=4)
    assert train.answer_vocab == ["black", "guitar", "room", "two"] and train.max_answers == 1000
    assert train.families == ["object", "number", "color", "location"]
    assert [r.family for r in train.records] == ["color", "number", "object", "location", "color"]
    sample = train[2]
    assert sample["answer"] == "guitar" and sample["answer_idx"] == 1 and sample["video_id"] == GIFS[2]
    assert sample["video"].shape == (4, 3, 32, 32) and sample["video"].dtype == torch.uint8
    # GIF frame i has grey level 60 + 4 i (palette-quantised): frames come in order, from this GIF
    levels = sample["video"].float().mean(dim=(1, 2, 3))
    assert torch.all(levels[1:] > levels[:-1]) and 56 < float(levels[0]) < 70
    test = TGIFQADataset(str(release), "test", task="frameqa", max_answers=2)
    assert test.answer_vocab == ["black", "guitar"]
    assert [test[i]["answer_idx"] for i in range(2)] == [-1, 1]


def test_action_and_transition_are_five_way_multiple_choice(release):
    for task in ("action", "transition"):
        ds = TGIFQADataset(str(release), "train", task=task, num_frames=2)
        assert ds.answer_vocab == [] and ds.families == [task] and len(ds) == 4
        sample = ds[3]
        assert sample["options"] == ["nod", "wave hand", "jump", "sway", "clap"]
        assert sample["answer_idx"] == 3 and sample["answer"] == "sway" and sample["family"] == task
        assert ds.protocol["metric"] == "multiple-choice accuracy"


def test_count_emits_the_number(release):
    train = TGIFQADataset(str(release), "train", task="count", num_frames=2)
    assert train.answer_vocab == [str(c) for c in range(1, 11)]  # 1-10, numeric order
    assert [train[i]["count"] for i in range(3)] == [3, 10, 2]
    assert train[1]["answer_idx"] == 9 and train.families == ["count"]
    test = TGIFQADataset(str(release), "test", task="count", num_frames=2)
    assert [test[i]["count"] for i in range(2)] == [4, 2]
    assert [test[i]["answer_idx"] for i in range(2)] == [3, 1]
    assert test.protocol["metric"] == "mean squared error of the count (count_mse), and accuracy"


def test_validation_split(release):
    val = TGIFQADataset(str(release), "val", task="frameqa")
    assert val.annotation_file.name == "Test_frameqa_question.csv" and len(val) == 2
    train = TGIFQADataset(str(release), "train", task="frameqa", val_fraction=0.3)
    held = TGIFQADataset(str(release), "val", task="frameqa", val_fraction=0.3)
    assert held.annotation_file.name == "Train_frameqa_question.csv"
    train_gifs = {r.video_id for r in train.records}
    held_gifs = {r.video_id for r in held.records}
    assert held_gifs == {GIFS[0], GIFS[2]} and train_gifs == {
        GIFS[1],
        GIFS[3],
    }  # sha1 of the name; a GIF on one side
    assert (
        len(held) == 3 and len(train) == 2 and train.answer_vocab == ["room", "two"]
    )  # vocabulary: train only


def test_errors_name_the_file_line_and_field(release, mini):
    with pytest.raises(ValueError, match="task must be one of"):
        TGIFQADataset(str(release), "train", task="actions")
    (release / "dataset" / "Test_count_question.csv").unlink()
    with pytest.raises(
        ReleaseLayoutError, match=r"Test_count_question.csv: tgif_qa: expected the TGIF-QA count test"
    ):
        TGIFQADataset(str(release), "test", task="count")
    path = release / "dataset" / "Train_action_question.csv"
    mini.write_csv(path, MC, [[GIFS[0], "What ?", "a", "b", "c", "d", "e", 7, "ACTION9", 1]], delimiter="\t")
    with pytest.raises(AnnotationError) as err:
        TGIFQADataset(str(release), "train", task="action")
    assert (
        f"Train_action_question.csv: record 0 (line 2) [vid_id='ACTION9', gif_name='{GIFS[0]}']: "
        "field 'answer': must be in [0, 4], got 7"
    ) in str(err.value)
    mini.write_csv(path, MC, [[GIFS[0], "What ?", "a", "b", "c", "d", "e", 1, "A", 1]], delimiter=",")
    with pytest.raises(AnnotationError, match=r"line 1: the header lacks the column\(s\) \['gif_name'"):
        TGIFQADataset(str(release), "train", task="action")


@pytest.mark.parametrize(
    ("task", "kind", "answers"), [("frameqa", "open_ended", 4), ("action", "multiple_choice", 0)]
)
def test_fit_through_the_cli(release, tmp_path, mini, task, kind, answers):
    cfg = mini.recipe(
        "tgif_qa", {"root": str(release), "task": task}, kind, tmp_path / "run", num_answers=answers
    )
    assert mini.run_cli("fit", cfg, tmp_path)[0] == 0


def _answer(monkeypatch, head_cls, indices):
    """Make every head of ``head_cls`` answer ``indices`` (in loader order): known answers, hand-checked metrics."""
    monkeypatch.setattr(head_cls, "answers", lambda self, out: torch.tensor(indices[: len(out.logits)]))


def test_count_mean_squared_error_through_the_cli(release, tmp_path, mini, monkeypatch):
    """Test counts 4 and 2; the classifier answers vocabulary entries 9 ("10") and 1 ("2"):
    squared errors (10 - 4)^2 = 36 and 0 -> count_mse 18; accuracy 1/2."""
    from vqa_components.heads.answer_classifier import AnswerClassifier

    _answer(monkeypatch, AnswerClassifier, [9, 1])
    cfg = mini.recipe("tgif_qa", {"root": str(release), "task": "count"}, "open_ended", tmp_path / "run",
                      num_answers=10, train_split=None, val_split=None)  # fmt: skip
    code, out = mini.run_cli("test", cfg, tmp_path)
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["test/count_mse"] == pytest.approx(18.0) and metrics["test/num_samples"] == 2
    assert metrics["test/acc"] == pytest.approx(0.5) and metrics["test/acc_count"] == pytest.approx(0.5)
    assert metrics["protocol"]["answer_vocab_size"] == 10 and "count_mse" in out
    assert metrics["test/loss"] > 0


def test_multiple_choice_accuracy_through_the_cli(release, tmp_path, mini, monkeypatch):
    """Action test questions' right options are 0 and 1; the vtm_choice head picks 0 for both: 1/2."""
    from vqa_components.heads.vtm_choice import VTMHead

    _answer(monkeypatch, VTMHead, [0, 0])
    cfg = mini.recipe("tgif_qa", {"root": str(release), "task": "action"}, "multiple_choice", tmp_path / "run",
                      train_split=None, val_split=None)  # fmt: skip
    assert mini.run_cli("test", cfg, tmp_path)[0] == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(0.5) and metrics["test/acc_action"] == pytest.approx(0.5)
    assert metrics["protocol"]["metric"] == "multiple-choice accuracy"


@pytest.mark.parametrize("task", ["frameqa", "action", "transition"])
def test_the_evilm_recipes_read_the_miniature_release_like_their_example_batch(release, mini, task):
    mini.check_recipe_batch(f"recipes/evilm/finetune_tgif_{task}.yaml", {"root": str(release), "task": task})


def test_count_test_counts_outside_the_training_counts_still_have_a_class_and_a_loss(release, mini):
    """Every test count (4 and 7) is a count no training question has: with a vocabulary of the training
    counts alone every answer_idx was -1, which the cross-entropy ignores, and test/loss read 0.0."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader

    from vqa_components.data.datamodule import collate_videoqa
    from vqa_components.objectives.answer_cross_entropy import AnswerCrossEntropy

    mini.write_csv(release / "dataset" / "Test_count_question.csv", COUNT, [
        [GIFS[3], "How many times does the woman clap ?", 4, "COUNT4", 13],
        [GIFS[4], "How many times does the man jump ?", 7, "COUNT5", 14],
    ], delimiter="\t")  # fmt: skip
    test = TGIFQADataset(str(release), "test", task="count", num_frames=2)
    batch = next(iter(DataLoader(test, batch_size=2, collate_fn=collate_videoqa)))
    assert batch["answer_idx"].tolist() == [3, 6]  # "4", "7" in 1..10
    logits = torch.zeros(2, len(test.answer_vocab))
    out = SimpleNamespace(head=SimpleNamespace(target_ids=None), logits=logits)
    loss = AnswerCrossEntropy().forward(None, batch, out)["loss"]
    assert loss.item() == pytest.approx(float(torch.log(torch.tensor(10.0))))  # uniform logits over 10 counts
    protocol = test.protocol
    assert protocol["max_answers_default"].startswith("None (every count from 1 to 10")
    assert "FrameQA" not in protocol["max_answers_default"] and protocol["answer_vocab_size"] == 10
    frameqa = TGIFQADataset(str(release), "test", task="frameqa")
    assert frameqa.protocol["max_answers_default"].startswith("1000 (")
