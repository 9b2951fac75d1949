"""Releases as users unpack them (issue 23): MSR-VTT's two video archives (a list of folders or one per
split, for every adapter through the shared base), and a split most of whose clips are missing stops
at start-up naming the folder, while a few corrupt clips are still skipped and reported."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

from vqa_components.data.bad_input import MissingVideosError, SkipReport
from vqa_components.data.benchmarks import MSRVTTQADataset
from vqa_components.data.datamodule import collate_videoqa
from vqa_components.data.dataset import VideoQADataset


def qa(video_ids, first_id=0):
    return [
        {
            "answer": ["man", "dog"][n % 2],
            "id": first_id + i,
            "question": f"what is in clip {n}?",
            "video_id": n,
        }
        for i, n in enumerate(video_ids)
    ]


@pytest.fixture
def msrvtt(tmp_path, mini):
    """MSRVTT-QA's question files beside MSR-VTT's two archives as unpacked: TrainValVideo/ (clips 0-7,
    train and val) and TestVideo/ (clips 8-11, test)."""
    root = tmp_path / "msrvtt"
    mini.write_json(root / "train_qa.json", qa(range(6)))
    mini.write_json(root / "val_qa.json", qa(range(6, 8), 100))
    mini.write_json(root / "test_qa.json", qa(range(8, 12), 200))
    for n in range(12):
        mini.mp4(root / ("TrainValVideo" if n < 8 else "TestVideo") / f"video{n}.mp4", level=10 * n, frames=2)
    return root


@pytest.mark.parametrize(
    "video_dir",
    [["TrainValVideo", "TestVideo"], {"train": "TrainValVideo", "val": "TrainValVideo", "test": "TestVideo"}],
    ids=["list", "per-split"],
)
def test_msrvtt_with_its_train_val_and_test_folders_finds_every_test_clip(msrvtt, video_dir):
    test = MSRVTTQADataset(str(msrvtt), "test", video_dir=video_dir, num_frames=2)
    assert [test.video_path(i) for i in range(4)] == [
        msrvtt / "TestVideo" / f"video{n}.mp4" for n in range(8, 12)
    ]
    assert not [s for s in (test[i] for i in range(4)) if not isinstance(s, dict)]  # none skipped
    train = MSRVTTQADataset(str(msrvtt), "train", video_dir=video_dir, num_frames=2)
    assert train.video_path(5) == msrvtt / "TrainValVideo" / "video5.mp4"
    assert test.video_dirs == ((msrvtt / "TestVideo",) if isinstance(video_dir, dict) else
                               (msrvtt / "TrainValVideo", msrvtt / "TestVideo"))  # fmt: skip


def test_the_generic_dataset_takes_several_folders_too(msrvtt, mini):
    rows = [
        {"video_id": f"video{n}", "question": "?", "answer": "man", "question_type": "what"} for n in (2, 9)
    ]
    ann = mini.write_json(msrvtt / "generic.json", rows)
    ds = VideoQADataset(str(ann), [str(msrvtt / "TrainValVideo"), str(msrvtt / "TestVideo")], num_frames=2)
    assert [ds.video_path(i).parent.name for i in range(2)] == ["TrainValVideo", "TestVideo"]


def test_a_split_with_half_its_videos_missing_stops_at_start_up_naming_the_folder(msrvtt):
    """The test clips are in TestVideo/, the run looks in TrainValVideo/ only: 4 of 4 missing."""
    with pytest.raises(MissingVideosError) as err:
        MSRVTTQADataset(str(msrvtt), "test", video_dir="TrainValVideo")
    msg = str(err.value)
    assert msg.startswith(
        f"{msrvtt / 'test_qa.json'}: msrvtt_qa: 4 of the 4 test videos (100%) are missing from "
        f"{msrvtt / 'TrainValVideo'} (first: video8, video9, video10, video11); "
    )
    assert "max_missing_fraction (now 0.05; 1.0 turns this check off)" in msg and "\n" not in msg
    assert isinstance(err.value, FileNotFoundError)
    # half missing (2 of 4 distinct clips): still more than 5 %
    for n in (8, 9):
        (msrvtt / "TestVideo" / f"video{n}.mp4").rename(msrvtt / "TrainValVideo" / f"video{n}.mp4")
    with pytest.raises(
        MissingVideosError, match=r"2 of the 4 test videos \(50%\) are missing from .*TrainValVideo"
    ):
        MSRVTTQADataset(str(msrvtt), "test", video_dir="TrainValVideo")
    assert len(MSRVTTQADataset(str(msrvtt), "test", video_dir="TrainValVideo", max_missing_fraction=0.5)) == 4
    with pytest.raises(ValueError, match=r"max_missing_fraction must be a number in \[0, 1\], got 5"):
        MSRVTTQADataset(str(msrvtt), "test", video_dir="TrainValVideo", max_missing_fraction=5)


def test_a_few_corrupt_and_missing_videos_are_skipped_and_reported(tmp_path, mini):
    """20 clips, one corrupt and one missing (5 % each): the dataset builds under the default threshold
    (corrupt clips are present, so they never count toward it) and the skip report lists both."""
    root = tmp_path / "msrvtt"
    mini.write_json(root / "train_qa.json", qa(range(20)))
    for n in range(20):
        if n != 7:
            mini.mp4(root / "video" / f"video{n}.mp4", level=10 * n, frames=2)
    (root / "video" / "video13.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video" * 20)
    ds = MSRVTTQADataset(str(root), "train", num_frames=2)
    report = SkipReport()
    for batch in DataLoader(ds, batch_size=10, collate_fn=collate_videoqa):
        report.add(batch["skipped"])
    summary = report.reduce()
    assert summary.counts == {"missing_video": 1, "undecodable_video": 1}
    assert [s.ident for s in summary.first["missing_video"]] == ["video7"]
    assert [s.ident for s in summary.first["undecodable_video"]] == ["video13"]
