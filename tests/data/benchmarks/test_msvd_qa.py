"""msvd_qa: train_qa.json... + youtube_mapping.txt + YouTubeClips/*.avi (MPEG-4 in AVI), vocabulary,
families, the mapping's errors, and a fit through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks import MSVDQADataset, ReleaseLayoutError

CLIPS = ["-4wsuPCjDBc_5_15", "-7KMZQEsJW4_205_208", "-8y1Q0rA3n8_108_114", "00jrXRMlZOY_0_10"]
MAPPING = "".join(f"{clip} vid{n}\n" for n, clip in enumerate(CLIPS, start=1))
TRAIN = [
    {"answer": "man", "id": 0, "question": "who is slicing a potato?", "video_id": 1},
    {"answer": "man", "id": 1, "question": "who plays a guitar?", "video_id": 2},
    {"answer": "potato", "id": 2, "question": "what is being sliced?", "video_id": 1},
    {"answer": "guitar", "id": 3, "question": "what is the man playing?", "video_id": 2},
    {"answer": "potato", "id": 4, "question": "what does the woman peel?", "video_id": 3},
]
VAL = [{"answer": "onion", "id": 5, "question": "what is chopped?", "video_id": 3}]
TEST = [
    {"answer": "man", "id": 6, "question": "who is dancing?", "video_id": 4},
    {"answer": "guitar", "id": 7, "question": "how many guitars?", "video_id": 4},
]


@pytest.fixture
def release(tmp_path, mini):
    root = tmp_path / "MSVD-QA"
    for name, recs in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        mini.write_json(root / f"{name}_qa.json", recs)
    (root / "youtube_mapping.txt").write_text(MAPPING)
    for n, name in enumerate(CLIPS):
        mini.avi(root / "YouTubeClips" / f"{name}.avi", level=40 * n)
    return root


def test_records_follow_the_mapping_to_the_avi_clips(release):
    ds = MSVDQADataset(str(release), "train", num_frames=3)
    assert ds.answer_vocab == ["man", "potato", "guitar"] and ds.max_answers == 1000
    assert ds.video_path(0) == release / "YouTubeClips" / "-4wsuPCjDBc_5_15.avi"
    sample = ds[3]
    assert (
        sample["video_id"] == "-7KMZQEsJW4_205_208"
        and sample["answer_idx"] == 2
        and sample["family"] == "what"
    )
    assert sample["video"].shape == (3, 3, 32, 32) and sample["video"].dtype == torch.uint8
    # the clip of vid2 was written with grey level 40 + 4 i: the decoded frames are its frames
    assert 36 < float(sample["video"][0].float().mean()) < 60
    test = MSVDQADataset(str(release), "test", max_answers=2)
    assert test.answer_vocab == ["man", "potato"]
    assert [test[i]["answer_idx"] for i in range(2)] == [0, -1] and [r.family for r in test.records] == [
        "who",
        "how",
    ]
    assert test.protocol["max_answers"] == 2 and test.protocol["unknown_answer_questions"] == 1


def test_renamed_clips(release):
    for n, name in enumerate(CLIPS, start=1):
        (release / "YouTubeClips" / f"{name}.avi").rename(release / "YouTubeClips" / f"vid{n}.avi")
    ds = MSVDQADataset(str(release), "val", renamed_videos=True, num_frames=2)
    assert ds.video_path(0).name == "vid3.avi" and ds[0]["video"].shape == (2, 3, 32, 32)


def test_mapping_problems(release):
    (release / "youtube_mapping.txt").unlink()
    with pytest.raises(
        ReleaseLayoutError, match=r"youtube_mapping.txt: msvd_qa: expected the clip-name mapping"
    ):
        MSVDQADataset(str(release), "train")
    (release / "youtube_mapping.txt").write_text(MAPPING + "broken-line-without-id\n")
    with pytest.raises(AnnotationError, match=r"youtube_mapping.txt: line 5: expected '<clip name> vid<N>'"):
        MSVDQADataset(str(release), "train")
    (release / "youtube_mapping.txt").write_text(MAPPING)
    (release / "val_qa.json").write_text(
        json.dumps([{"answer": "x", "id": 9, "question": "what?", "video_id": 77}])
    )
    with pytest.raises(AnnotationError) as err:
        MSVDQADataset(str(release), "val")
    assert (
        "val_qa.json: record 0 [id=9, video_id=77]: field 'video_id': vid77 is not in youtube_mapping.txt"
        in str(err.value)
    )


def test_missing_clip_folder(release):
    (release / "YouTubeClips").rename(release / "clips")
    with pytest.raises(ReleaseLayoutError, match=r"YouTubeClips: msvd_qa: expected the MSVD-QA video folder"):
        MSVDQADataset(str(release), "train")


def test_fit_through_the_cli(release, tmp_path, mini):
    cfg = mini.recipe("msvd_qa", {"root": str(release)}, "open_ended", tmp_path / "run", num_answers=3)
    assert mini.run_cli("fit", cfg, tmp_path)[0] == 0


@pytest.mark.parametrize("recipe", ["recipes/videodistill/finetune_msvd_qa.yaml", "recipes/cotok/finetune_msvd_qa.yaml",
                                    "recipes/evilm/finetune_msvd_qa.yaml"])
def test_the_paper_recipes_read_the_miniature_release_like_their_example_batch(release, mini, recipe):
    mini.check_recipe_batch(recipe, {"root": str(release)})


@pytest.fixture
def alpro(tmp_path, mini):
    """ALPRO's MSVD-QA: txt/{split}.jsonl with clip names as video_id, txt/train_ans2label.json, and the
    YouTubeClips unpacked into videos/."""
    root = tmp_path / "alpro_msvd_qa"

    def rows(recs, first=0):
        return [
            {"question": r["question"], "answer": r["answer"], "video_id": CLIPS[r["video_id"] - 1],
             "answer_type": r["question"].split()[0], "question_id": first + i}
            for i, r in enumerate(recs)
        ]  # fmt: skip

    mini.write_jsonl(root / "txt" / "train.jsonl", rows(TRAIN))
    mini.write_jsonl(root / "txt" / "test.jsonl", rows(TEST, 100))
    mini.write_json(root / "txt" / "train_ans2label.json", {"man": 0, "potato": 1, "guitar": 2})
    for n in (0, 3):
        mini.avi(root / "videos" / f"{CLIPS[n]}.avi", level=40 * n, frames=2)
    return root


def test_alpro_jsonl_form_is_read(alpro):
    """ALPRO's form, its clips read as <video_id>.avi (ALPRO's video_fmt for msvd)."""
    root = alpro
    test = MSVDQADataset(str(root), "test", num_frames=2)
    assert test.annotation_file == root / "txt" / "test.jsonl"
    assert test.answer_vocab == ["man", "potato", "guitar"]
    assert test.video_path(0) == root / "videos" / "00jrXRMlZOY_0_10.avi"
    sample = test[1]
    assert sample["answer_idx"] == 2 and sample["family"] == "how"
    assert sample["video"].shape == (2, 3, 32, 32)
    assert "train_ans2label.json (3 answers)" in test.protocol["answer_vocab"]
