"""msrvtt_qa: the original release (train_qa.json..., video/videoN.mp4) and the ClipBERT/ALPRO JSONL
form (txt/{split}.jsonl, txt/train_ans2label.json, videos/), vocabularies, families, errors, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks import MSRVTTQADataset, ReleaseLayoutError

TRAIN = [  # answer counts: man 3, dog 2, cooking 1, kitchen 1
    {"answer": "man", "category_id": 3, "id": 0, "question": "who is cooking?", "video_id": 0},
    {"answer": "man", "category_id": 3, "id": 1, "question": "who is singing?", "video_id": 1},
    {"answer": "man", "category_id": 3, "id": 2, "question": "who talks?", "video_id": 2},
    {"answer": "dog", "category_id": 5, "id": 3, "question": "what runs?", "video_id": 0},
    {"answer": "dog", "category_id": 5, "id": 4, "question": "what barks?", "video_id": 1},
    {"answer": "cooking", "category_id": 5, "id": 5, "question": "what is a man doing?", "video_id": 2},
    {"answer": "kitchen", "category_id": 9, "id": 6, "question": "where is the man?", "video_id": 0},
]
VAL = [
    {"answer": "dog", "category_id": 5, "id": 7, "question": "what sits?", "video_id": 3},
    {"answer": "piano", "category_id": 5, "id": 8, "question": "how does he play?", "video_id": 3},
]
TEST = [
    {"answer": "man", "category_id": 3, "id": 9, "question": "who is there?", "video_id": 4},
    {"answer": "night", "category_id": 1, "id": 10, "question": "when does it happen?", "video_id": 4},
    {"answer": "dog", "category_id": 5, "id": 11, "question": "What is seen?", "video_id": 5},
]


@pytest.fixture
def original(tmp_path, mini):
    root = tmp_path / "msrvtt_qa"
    for name, recs in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        mini.write_json(root / f"{name}_qa.json", recs)
    for n in range(6):
        mini.mp4(root / "video" / f"video{n}.mp4", level=30 * n)
    return root


@pytest.fixture
def jsonl(tmp_path, mini):
    root = tmp_path / "alpro_msrvtt_qa"

    def rows(recs):
        return [
            {
                "answer": r["answer"],
                "question": r["question"],
                "video_id": f"video{r['video_id']}",
                "answer_type": r["question"].split()[0].lower(),
            }
            for r in recs
        ]

    mini.write_jsonl(root / "txt" / "train.jsonl", rows(TRAIN))
    mini.write_jsonl(root / "txt" / "val.jsonl", rows(VAL))
    mini.write_jsonl(root / "txt" / "test.jsonl", rows(TEST))
    mini.write_json(root / "txt" / "train_ans2label.json", {"man": 0, "dog": 1, "kitchen": 2})
    for n in range(6):
        mini.mp4(root / "videos" / f"video{n}.mp4", level=30 * n)
    return root


def test_original_release_records_vocab_and_families(original):
    train = MSRVTTQADataset(str(original), "train", max_answers=2, num_frames=2)
    assert train.answer_vocab == ["man", "dog"]  # by frequency, K=2
    assert len(train) == 5 and train.num_dropped_unknown == 2  # cooking, kitchen dropped in training
    assert [r.id for r in train.records] == ["0", "1", "2", "3", "4"]
    assert train.families == ["what", "who", "how", "where", "when", "other"]
    sample = train[0]
    assert sample["question"] == "who is cooking?" and sample["answer"] == "man" and sample["answer_idx"] == 0
    assert sample["family"] == "who" and sample["video_id"] == "video0"
    assert sample["video"].shape == (2, 3, 32, 32) and sample["video"].dtype == torch.uint8
    assert train.video_path(0) == original / "video" / "video0.mp4"

    test = MSRVTTQADataset(str(original), "test", max_answers=2, num_frames=2)
    assert test.answer_vocab == ["man", "dog"] and len(test) == 3  # unknown answers kept in evaluation
    assert [test[i]["answer_idx"] for i in range(3)] == [0, -1, 1]
    assert [test[i]["family"] for i in range(3)] == ["who", "when", "what"]  # first word, any case
    assert test.protocol["unknown_answer_questions"] == 1
    assert test.protocol["unknown_answers"] == "kept, answer_idx -1, counted wrong"
    assert train.protocol["dropped_unknown_answer_questions"] == 2


def test_default_vocabulary_is_the_1500_most_frequent(original):
    ds = MSRVTTQADataset(str(original), "val")
    assert ds.max_answers == 1500 and ds.answer_vocab == ["man", "dog", "cooking", "kitchen"]
    assert "1500" in ds.protocol["max_answers_default"]
    every = MSRVTTQADataset(str(original), "val", max_answers=None)
    assert every.answer_vocab == ds.answer_vocab


def test_jsonl_form_uses_the_release_vocabulary_and_answer_type(jsonl):
    train = MSRVTTQADataset(str(jsonl), "train", num_frames=2)
    assert train.layout == "auto" and train.annotation_file == jsonl / "txt" / "train.jsonl"
    assert train.answer_vocab == ["man", "dog", "kitchen"]  # train_ans2label.json, label order
    assert len(train) == 6  # 'cooking' is not in train_ans2label.json
    assert train.video_path(0) == jsonl / "videos" / "video0.mp4"
    val = MSRVTTQADataset(str(jsonl), "val", num_frames=2)
    assert [val[i]["answer_idx"] for i in range(2)] == [1, -1]
    assert [val[i]["family"] for i in range(2)] == ["what", "how"]
    rebuilt = MSRVTTQADataset(str(jsonl), "val", max_answers=1, num_frames=2)
    assert rebuilt.answer_vocab == ["man"]  # max_answers set: built from the training answers


def test_missing_files_name_the_expected_path(original, tmp_path):
    with pytest.raises(
        ReleaseLayoutError, match=r"nowhere: msrvtt_qa: expected the MSRVTT-QA release's root"
    ):
        MSRVTTQADataset(str(tmp_path / "nowhere"), "train")
    (original / "test_qa.json").unlink()
    with pytest.raises(ReleaseLayoutError) as err:
        MSRVTTQADataset(str(original), "test")
    assert str(original / "test_qa.json") in str(err.value) and "txt/test.jsonl" in str(err.value)
    (original / "video").rename(original / "clips")
    with pytest.raises(ReleaseLayoutError, match=r"video: msrvtt_qa: expected the MSRVTT-QA video folder"):
        MSRVTTQADataset(str(original), "train")
    assert len(MSRVTTQADataset(str(original), "train", video_dir="clips")) == 7


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"answer": "man", "id": 40, "question": "who?"}, ["record 1", "id=40", "'video_id'", "missing"]),
        ({"answer": "man", "id": 41, "question": "who?", "video_id": "seven"}, ["'video_id'", "integer"]),
        ({"answer": 3, "id": 42, "question": "who?", "video_id": 1}, ["'answer'", "must be a string"]),
        ({"answer": "man", "id": 43, "question": "", "video_id": 1}, ["'question'", "non-empty"]),
    ],
)
def test_malformed_record_names_file_record_and_field(original, record, expected):
    (original / "train_qa.json").write_text(json.dumps([TRAIN[0], record]))
    with pytest.raises(AnnotationError) as err:
        MSRVTTQADataset(str(original), "train")
    msg = str(err.value)
    assert msg.startswith(str(original / "train_qa.json")) and len(msg.splitlines()) == 1
    for part in expected:
        assert part in msg, msg


def test_bad_records_can_be_skipped_and_counted(original):
    (original / "val_qa.json").write_text(json.dumps([VAL[0], {"answer": "x", "question": "who?"}]))
    ds = MSRVTTQADataset(str(original), "val", on_bad_record="skip")
    assert len(ds) == 1 and ds.protocol["skipped_malformed_records"] == 1


def test_invalid_json_names_the_line(jsonl):
    (jsonl / "txt" / "val.jsonl").write_text(
        '{"question": "who?", "answer": "man", "video_id": "video1"}\n{oops\n'
    )
    with pytest.raises(AnnotationError, match=r"val.jsonl: line 2: invalid JSON at line 2"):
        MSRVTTQADataset(str(jsonl), "val")


def test_fit_and_test_through_the_cli(original, tmp_path, mini):
    cfg = mini.recipe(
        "msrvtt_qa", {"root": str(original), "max_answers": 4}, "open_ended", tmp_path / "run", num_answers=4
    )
    code, _ = mini.run_cli("fit", cfg, tmp_path)
    assert code == 0
    code, _ = mini.run_cli("test", cfg, tmp_path)
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["test/num_samples"] == 2  # fast_dev_run: one batch of 2


def test_the_videodistill_recipe_reads_the_miniature_release_like_its_example_batch(original, mini):
    mini.check_recipe_batch("recipes/videodistill/finetune_msrvtt_qa.yaml", {"root": str(original)})


def test_a_missing_release_is_one_line_from_the_cli(tmp_path, mini, capsys):
    cfg = mini.recipe(
        "msrvtt_qa", {"root": str(tmp_path / "absent")}, "open_ended", tmp_path / "run", num_answers=4
    )
    assert mini.run_cli("fit", cfg, tmp_path)[0] == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"vqa: error: {tmp_path / 'absent'}: msrvtt_qa: expected the MSRVTT-QA release's root folder (a folder) here; "
        "it does not exist"
    )


def test_example_batch_needs_no_files(tmp_path):
    from vqa_components.data.datamodule import VideoQADataModule

    dm = VideoQADataModule("msrvtt_qa", {"root": str(tmp_path / "absent"), "num_frames": 3, "frame_size": 32})
    batch = dm.example_batch(2)
    assert batch["video"].shape == (2, 3, 3, 32, 32) and batch["family"] == ["what", "what"]


def test_the_co_tokenization_recipe_reads_the_miniature_release_like_its_example_batch(original, mini):
    mini.check_recipe_batch("recipes/cotok/finetune_msrvtt_qa.yaml", {"root": str(original)})


@pytest.mark.parametrize("recipe", ["recipes/evilm/finetune_msrvtt_qa.yaml", "recipes/evilm/ablations/no_pretraining.yaml"])
def test_the_evilm_recipes_read_the_miniature_release_like_their_example_batch(original, mini, recipe):
    mini.check_recipe_batch(recipe, {"root": str(original)})


def test_clipbert_txt_db_form_is_read_with_the_videos_elsewhere(jsonl, tmp_path):
    """ClipBERT's txt_db/msrvtt_qa: the JSONL files and train_ans2label.json at the top of the folder,
    no videos (video_dir names MSR-VTT's folders, here the ALPRO miniature's)."""
    txt_db = tmp_path / "txt_db" / "msrvtt_qa"
    txt_db.parent.mkdir()
    (jsonl / "txt").rename(txt_db)
    videos = str(jsonl / "videos")
    test = MSRVTTQADataset(str(txt_db), "test", video_dir=videos, num_frames=2)
    assert test.annotation_file == txt_db / "test.jsonl" and test.answer_vocab == ["man", "dog", "kitchen"]
    assert test.video_path(0) == jsonl / "videos" / "video4.mp4" and isinstance(test[0], dict)
    with pytest.raises(ReleaseLayoutError, match=r"ClipBERT's txt_db holds no videos: set video_dir"):
        MSRVTTQADataset(str(txt_db), "test")
    # path overrides: another name for the JSONL folder
    (txt_db).rename(jsonl / "annotations")
    moved = MSRVTTQADataset(str(jsonl), "val", txt_dir="annotations", num_frames=2)
    assert moved.annotation_file == jsonl / "annotations" / "val.jsonl" and len(moved) == 2
