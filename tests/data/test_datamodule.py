"""The DataModule: batches, skipped videos, example batches without disk access."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vqa_components.data.datamodule import SkippedSample, VideoQADataModule, collate_videoqa
from vqa_components.data.dataset import VideoQADataset
from vqa_components.data.video_io import VideoDecodeError, write_video

SMALL = dict(num_train=32, num_val=16, num_test=16, clip_frames=32, clip_size=32, num_frames=4)


def _sample(i, video=None):
    return {
        "video": torch.full((4, 3, 8, 8), float(i)) if video is None else video,
        "question": f"q{i}",
        "answer_idx": i,
        "family": "f",
    }


def test_collate_stacks_and_counts_skips():
    skipped = SkippedSample(index=1, video_id="v1", path="/data/v1.mp4", reason="corrupt video data")
    batch = collate_videoqa([_sample(0), skipped, None, _sample(2)])
    assert batch["video"].shape == (2, 4, 3, 8, 8)
    assert batch["answer_idx"].tolist() == [0, 2]
    assert batch["question"] == ["q0", "q2"]
    assert batch["num_skipped"] == 2 and batch["batch_size"] == 2
    assert batch["skipped"][0] is skipped and "/data/v1.mp4" in str(skipped) and "record 1" in str(skipped)
    assert batch["skipped"][1].cause == "unreadable_sample"  # a dataset that returned None


def test_collate_multi_stream_and_empty():
    two = (torch.zeros(8, 3, 16, 16), torch.zeros(2, 3, 32, 32))
    batch = collate_videoqa([_sample(0, two), _sample(1, two)])
    assert isinstance(batch["video"], tuple)
    assert batch["video"][0].shape == (2, 8, 3, 16, 16) and batch["video"][1].shape == (2, 2, 3, 32, 32)
    empty = collate_videoqa([None, None])
    assert empty["batch_size"] == 0 and empty["num_skipped"] == 2 and "video" not in empty


def test_synthetic_datamodule_serves_batches(tmp_path):
    dm = VideoQADataModule("synthetic_vqa", {**SMALL, "root": str(tmp_path)}, batch_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (8, 4, 3, 32, 32)
    assert len(batch["question"]) == 8 and batch["answer_idx"].dtype == torch.long
    assert len(dm.answer_vocab) == 16 and dm.families == ["spatial", "motion", "counting", "needle"]
    # the example batch has the same shapes and needs no file
    ex = VideoQADataModule("synthetic_vqa", {**SMALL, "root": str(tmp_path / "never")}).example_batch(2)
    assert ex["video"].shape == (2, 4, 3, 32, 32)
    assert not (tmp_path / "never").exists()


def _videoqa_folder(tmp_path, n=6, broken=(2,)):
    vids = tmp_path / "videos"
    vids.mkdir()
    recs = []
    for i in range(n):
        write_video(vids / f"v{i}.mp4", np.full((8, 16, 16, 3), 30 * i, dtype=np.uint8))
        recs.append({"video_id": f"v{i}", "question": "what?", "answer": "a" if i % 2 else "b",
                     "question_type": "what"})
    for i in broken:
        (vids / f"v{i}.mp4").write_bytes(b"garbage" * 10)
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(recs))
    return ann, vids


def test_bad_video_raise_names_file_record_and_field(tmp_path):
    ann, vids = _videoqa_folder(tmp_path)
    ds = VideoQADataset(str(ann), str(vids), on_bad_video="raise", num_frames=2)
    with pytest.raises(VideoDecodeError) as err:
        ds[2]
    msg = str(err.value)
    assert "v2.mp4" in msg and "record 2" in msg and "video_id" in msg and "train.json" in msg


def test_bad_video_skip_is_counted_per_epoch(tmp_path):
    ann, vids = _videoqa_folder(tmp_path, broken=(2, 5))
    ds = VideoQADataset(str(ann), str(vids), on_bad_video="skip", num_frames=2)
    batch = collate_videoqa([ds[i] for i in range(len(ds))])
    assert batch["batch_size"] == 4 and batch["num_skipped"] == 2
    assert [(s.index, s.video_id, s.cause) for s in batch["skipped"]] == [(2, "v2", "undecodable_video"),
                                                                       (5, "v5", "undecodable_video")]
    assert str(batch["skipped"][0]).startswith(str(vids / "v2.mp4"))


def test_strict_mode_names_the_first_missing_or_empty_clip_at_start_up(tmp_path):
    ann, vids = _videoqa_folder(tmp_path, broken=())
    (vids / "v4.mp4").unlink()
    (vids / "v3.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match=r"v3.mp4: file is empty \(0 bytes\) \(record 3 of .*train.json"):
        VideoQADataset(str(ann), str(vids), on_bad_video="raise", num_frames=2)
    ds = VideoQADataset(str(ann), str(vids), on_bad_video="skip", num_frames=2, max_missing_fraction=1.0)
    assert [(s.index, s.cause) for s in (ds[3], ds[4])] == [(3, "empty_video"), (4, "missing_video")]


@pytest.mark.parametrize("world_size", [2, 3])
def test_evaluation_loaders_under_ddp_cover_every_sample_exactly_once(world_size, tmp_path):
    """Ranks' shards of val/test/predict are disjoint and complete (no padding by repetition)."""
    from types import SimpleNamespace

    dm = VideoQADataModule("synthetic_vqa", dict(SMALL, root=str(tmp_path)), batch_size=4, num_workers=0)
    n = len(dm.dataset("test"))
    seen: list[int] = []
    for rank in range(world_size):
        dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
        seen += list(iter(dm.test_dataloader().sampler))
        assert len(list(iter(dm.val_dataloader().sampler))) in (16 // world_size, 16 // world_size + 1)
    assert sorted(seen) == list(range(n))
    # training: the order Lightning's DistributedSampler gives (tests/data/test_data_order.py), resumable
    dm.trainer = SimpleNamespace(world_size=world_size, global_rank=1)
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, torch.utils.data.DistributedSampler) and (sampler.rank, sampler.num_replicas) == (1, world_size)


def test_training_loader_draws_and_evaluation_loaders_do_not(tmp_path):
    args = {**SMALL, "root": str(tmp_path), "resize_short": 24, "crop_size": 16, "frame_sampling": "random"}
    dm = VideoQADataModule("synthetic_vqa", args, batch_size=4, num_workers=0, val_split="train")
    dm.setup("fit")
    train, val = dm.train_dataloader().dataset, dm.val_dataloader().dataset
    assert train is not val and train.split == val.split == "train"  # one split, two modes
    assert train.training and len(train.random_draws()) == 2
    assert not val.training and val.random_draws() == []
    assert not dm.test_dataloader().dataset.training
    assert next(iter(dm.train_dataloader()))["video"].shape == (4, 4, 3, 16, 16)
    assert dm.dataset("train") is val  # outside the loaders: evaluation mode


def test_datasets_without_a_training_argument_still_work():
    class Plain(torch.utils.data.Dataset):
        def __init__(self, split):
            self.split = split

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return _sample(i)

    dm = VideoQADataModule("synthetic_vqa", {}, batch_size=2, num_workers=0)
    dm.dataset_cls = Plain
    assert next(iter(dm.train_dataloader()))["video"].shape == (2, 4, 3, 8, 8)


def test_training_in_dataset_args_is_refused():
    with pytest.raises(ValueError, match=r"data\.dataset_args\.training: the DataModule sets it per loader"):
        VideoQADataModule("synthetic_vqa", {"training": True})


def test_the_training_split_is_decoded_once_when_it_fits_in_keep_decoded_mb(tmp_path, monkeypatch):
    """Epoch 2 reads every clip from memory (no decode) with the same pixels; a split larger than the
    budget, or one that draws frames at random, decodes every epoch and keeps nothing."""
    from vqa_components.data import dataset as dataset_module

    decoded: list[str] = []
    real = dataset_module.read_video_streams
    monkeypatch.setattr(dataset_module, "read_video_streams", lambda p, *a, **k: decoded.append(p) or real(p, *a, **k))

    def epochs(keep_mb: int, **args) -> list[dict[int, torch.Tensor]]:
        dm = VideoQADataModule("synthetic_vqa", dict(SMALL, root=str(tmp_path), **args), batch_size=8,
                               num_workers=0, keep_decoded_mb=keep_mb)
        loader = dm.train_dataloader()
        out = []
        for _ in range(2):
            decoded.clear()
            out.append({int(i): v for b in loader for i, v in zip(b["index"], b["video"])})
            out[-1]["decoded"] = len(decoded)
        return out

    first, second = epochs(1)
    assert first["decoded"] == 32 and second["decoded"] == 0  # 32 clips of 4 x 3 x 32 x 32: 393 KB
    assert all(torch.equal(first[i], second[i]) for i in range(32))
    assert [e["decoded"] for e in epochs(0)] == [32, 32]  # turned off
    tiny_budget = VideoQADataModule("synthetic_vqa", dict(SMALL, root=str(tmp_path)), num_workers=0, keep_decoded_mb=1)
    train = tiny_budget.dataset("train", training=True)
    train.keep_decoded(32 * 4 * 3 * 32 * 32 - 1)  # one byte short of the split
    for _ in range(2):
        decoded.clear()
        [train[i] for i in range(32)]
        assert len(decoded) == 32
    assert [e["decoded"] for e in epochs(1, frame_sampling="random")] == [32, 32]  # new frames every epoch
