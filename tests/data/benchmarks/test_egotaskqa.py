"""egotaskqa: qa/{direct,indirect}/{train,val,test}_qas.json and JPEG frame folders
(videos/<video>/fpv<N>/img_00001.jpg, the release loader's path); intervals select frames, the
frame-folder reader, errors, a CLI fit."""

from __future__ import annotations

import json

import pytest
import torch

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks import EgoTaskQADataset, ReleaseLayoutError
from vqa_components.data.frame_folder import list_frames, read_frame_folder
from vqa_components.data.video_io import VideoDecodeError


def qa(question, answer, interval, semantic, qid):
    return {
        "question": question, "answer": answer, "interval": interval, "type": ["world"],
        "category": ["descriptive"], "semantic": semantic, "structural": "query", "reference": "direct",
        "program": "query([hoi], ...)", "question_id": qid, "video_id": 0,
    }  # fmt: skip


TRAIN = [
    qa("what is the person doing?", "cutting", "S1_Cook_Egg|fpv1|0|8", "action", 0),
    qa("did the person open the fridge?", "yes", "S1_Cook_Egg|fpv1|8|16", "action", 1),
    qa("what is in the pan?", "egg", "S2_Wash_Cup|fpv2|4|12", "object", 2),
    qa("is the cup clean?", "no", "S2_Wash_Cup|fpv2|0|4", "state", 3),
]
VAL = [qa("what changed?", "cup", "S2_Wash_Cup|fpv2|0|16", "change", 4)]
TEST = [qa("did they eat?", "yes", "S1_Cook_Egg|fpv1|0|16", "action", 5)]


@pytest.fixture
def release(tmp_path, mini):
    root = tmp_path / "EgoTaskQA"
    for kind in ("direct", "indirect"):
        for name, recs in (("train", TRAIN), ("val", VAL), ("test", TEST)):
            mini.write_json(root / "qa" / kind / f"{name}_qas.json", recs)
    mini.jpeg_frames(root / "videos" / "S1_Cook_Egg" / "fpv1", level=0, frames=16)
    mini.jpeg_frames(root / "videos" / "S2_Wash_Cup" / "fpv2", level=100, frames=16)
    return root


def test_intervals_select_frames_of_the_folder(release):
    ds = EgoTaskQADataset(str(release), "train", num_frames=4)
    assert ds.answer_vocab == ["cutting", "egg", "no", "yes"] and ds.families == ["action", "object", "state"]
    sample = ds[1]  # S1_Cook_Egg|fpv1|8|16: img_00009 ... img_00016, frame i at level 4 i
    assert sample["video"].shape == (4, 3, 32, 32) and sample["video"].dtype == torch.uint8
    levels = (sample["video"].float().mean(dim=(1, 2, 3)) / 4).round().tolist()
    assert levels == [9.0, 11.0, 13.0, 15.0]  # segment centres of frames 8..15 (0-based)
    assert (
        sample["video_id"] == "S1_Cook_Egg|fpv1|8|16"
        and ds.video_path(1) == release / "videos/S1_Cook_Egg/fpv1"
    )
    assert sample["ans_type"] == "binary" and ds[0]["ans_type"] == "open"
    assert sample["categories"] == ["world", "descriptive"] and sample["structural"] == "query"
    val = EgoTaskQADataset(str(release), "val", split_type="indirect")
    assert val.annotation_file == release / "qa" / "indirect" / "val_qas.json" and val[0]["answer_idx"] == -1


def test_frame_folder_reader(tmp_path, mini):
    folder = mini.jpeg_frames(tmp_path / "f", level=0, frames=12, pattern="img_{}.jpg")  # unpadded numbers
    assert [p.name for p in list_frames(folder)][8:11] == ["img_9.jpg", "img_10.jpg", "img_11.jpg"]
    (small, big) = read_frame_folder(folder, [(3, 16), (12, None)], dtype=torch.uint8)
    assert small.shape == (3, 3, 16, 16) and big.shape == (12, 3, 32, 32)
    assert ((big.float().mean(dim=(1, 2, 3)) / 4).round().tolist()) == list(range(12))
    with pytest.raises(VideoDecodeError, match="frame folder not found"):
        read_frame_folder(tmp_path / "none", [(2, None)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="no frames"):
        read_frame_folder(tmp_path / "empty", [(2, None)])
    (folder / "img_5.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoDecodeError, match=r"img_5.jpg: unreadable frame image"):
        read_frame_folder(folder, [(12, None)])


def test_a_missing_folder_is_a_skipped_sample(release):
    ds = EgoTaskQADataset(str(release), "train", num_frames=2)
    (release / "videos" / "S2_Wash_Cup" / "fpv2").rename(release / "videos" / "S2_Wash_Cup" / "gone")
    skipped = ds[2]
    assert skipped.video_id == "S2_Wash_Cup|fpv2|4|12" and "frame folder not found" in skipped.reason


def test_errors(release):
    path = release / "qa" / "direct" / "test_qas.json"
    path.write_text(json.dumps([{**TEST[0], "interval": "S1_Cook_Egg|fpv1|9"}]))
    with pytest.raises(
        AnnotationError, match=r"test_qas.json: record 0 .*field 'interval': must be '<video>\|<view>"
    ):
        EgoTaskQADataset(str(release), "test")
    (release / "videos").rename(release / "jpgs")
    with pytest.raises(ReleaseLayoutError, match=r"videos: egotaskqa: expected the EgoTaskQA frame folder"):
        EgoTaskQADataset(str(release), "train")
    with pytest.raises(ValueError, match="split_type must be one of"):
        EgoTaskQADataset(str(release), "train", split_type="both")
    with pytest.raises(ValueError, match="feature_cache is not supported"):
        EgoTaskQADataset(str(release), "train", frames_dir="jpgs", feature_cache=str(release / "cache"))


def test_fit_through_the_cli(release, tmp_path, mini):
    cfg = mini.recipe("egotaskqa", {"root": str(release)}, "open_ended", tmp_path / "run", num_answers=4)
    assert mini.run_cli("fit", cfg, tmp_path)[0] == 0


def test_the_videodistill_recipe_reads_the_miniature_release_like_its_example_batch(release, mini):
    mini.check_recipe_batch("recipes/videodistill/finetune_egotaskqa.yaml", {"root": str(release)})


def test_the_release_frame_layout_is_the_default_and_the_former_one_is_an_argument(release):
    """The release's LEMMA loader reads <base>/videos/<video>/fpv<N>/img_*.jpg: the default here; the
    adapter's former frames/ folder is frames_dir: frames."""
    ds = EgoTaskQADataset(str(release), "test", num_frames=2)
    assert ds.video_path(0) == release / "videos" / "S1_Cook_Egg" / "fpv1"
    assert ds[0]["video"].shape == (2, 3, 32, 32)
    (release / "videos").rename(release / "frames")
    old = EgoTaskQADataset(str(release), "test", frames_dir="frames", num_frames=2)
    assert old.video_path(0) == release / "frames" / "S1_Cook_Egg" / "fpv1" and isinstance(old[0], dict)
