"""Video datasets' frame options on real H.264 files: the default path is unchanged, resize_short and
crop_size, random positions in training only, reproducible draws per seed, worker and epoch, and
clear errors for bad options (including the feature cache with random draws)."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything
from torch.utils.data import DataLoader

from vqa_components.data.clip_transforms import crop_frames, resize_short_side
from vqa_components.data.datamodule import collate_videoqa
from vqa_components.data.dataset import VideoQADataset
from vqa_components.data.synthetic import SyntheticVQADataset
from vqa_components.data.video_io import read_video_streams, uniform_indices, write_video

SMALL = {"num_train": 32, "num_val": 16, "num_test": 16, "clip_frames": 32, "clip_size": 32}
RAMP_FRAMES = 64


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """``ramp``: frame i is grey level 4 i (the decoded level tells the position); ``noise``: 48x80
    random pixels (a crop's content tells its offsets). Four records per video."""
    root = tmp_path_factory.mktemp("videos")
    (root / "videos").mkdir()
    ramp = np.stack([np.full((32, 32, 3), 4 * i, dtype=np.uint8) for i in range(RAMP_FRAMES)])
    write_video(root / "videos" / "ramp.mp4", ramp, fps=8)
    noise = np.random.default_rng(0).integers(0, 256, size=(8, 48, 80, 3), dtype=np.uint8)
    write_video(root / "videos" / "noise.mp4", noise, fps=8)
    records = [
        {"video_id": vid, "question": "what?", "answer": "a", "question_type": "what"}
        for vid in ("ramp", "noise")
        for _ in range(4)
    ]
    (root / "train.json").write_text(json.dumps(records))
    return root


def _ds(folder, **kw) -> VideoQADataset:
    return VideoQADataset(str(folder / "train.json"), str(folder / "videos"), **kw)


def _positions(video: torch.Tensor) -> list[int]:
    return (video.float().mean(dim=(1, 2, 3)) / 4).round().long().tolist()


RAMP, NOISE = 0, 4  # record indices


def _old_computation(path, num_frames: int, size: int) -> torch.Tensor:
    """What the datasets returned before the frame options existed, written out independently:
    every frame decoded, the centres of equal segments, an antialiased bilinear square resize."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    n = len(frames)
    idx = [min(n - 1, int((i + 0.5) * n / num_frames)) for i in range(num_frames)]
    x = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2)
    if x.shape[-1] != size:
        x = F.interpolate(x.float() / 255, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return x


@pytest.mark.parametrize("frame_size", [None, 24])
def test_default_path_gives_the_same_tensors_as_before(frame_size):
    seed_everything(0)
    train = SyntheticVQADataset("train", num_frames=6, frame_size=frame_size, training=True, **SMALL)
    assert not train.random_draws() and train.transform.identity
    for i in (0, 5, 31):
        sample = train[i]
        expected = _old_computation(train.video_path(i), 6, frame_size or SMALL["clip_size"])
        assert sample["video"].dtype == torch.uint8
        assert torch.equal(sample["video"], expected), i
        assert torch.equal(train[i]["video"], sample["video"])  # nothing drawn: the same every epoch


def test_resize_short_and_centre_crop_at_evaluation(folder):
    ds = _ds(folder, split="val", num_frames=4, resize_short=24, crop_size=16)
    assert not ds.training and not ds.random_draws()
    native = read_video_streams(folder / "videos" / "noise.mp4", [(4, None)], dtype=torch.uint8)[0]
    resized = resize_short_side(native, 24)
    assert resized.shape == (4, 3, 24, 40)
    video = ds[NOISE]["video"]
    assert video.shape == (4, 3, 16, 16)
    assert torch.equal(video, crop_frames(resized, 16))
    assert torch.equal(ds[NOISE]["video"], video)


def _find_crop(resized: torch.Tensor, crop: torch.Tensor) -> tuple[int, int]:
    c = crop.shape[-1]
    hits = [
        (top, left)
        for top in range(resized.shape[-2] - c + 1)
        for left in range(resized.shape[-1] - c + 1)
        if torch.equal(resized[..., top : top + c, left : left + c], crop)
    ]
    assert len(hits) == 1, hits
    return hits[0]


def test_training_crops_are_random_in_bounds_and_follow_the_seed(folder):
    native = read_video_streams(folder / "videos" / "noise.mp4", [(4, None)], dtype=torch.uint8)[0]
    resized = resize_short_side(native, 24)

    def crops(seed: int) -> list[tuple[int, int]]:
        torch.manual_seed(seed)  # what seed_everything does in the main process
        ds = _ds(folder, num_frames=4, resize_short=24, crop_size=16, training=True)
        return [_find_crop(resized, ds[NOISE]["video"]) for _ in range(4)]  # 4 epochs

    first = crops(0)
    assert all(0 <= top <= 24 - 16 and 0 <= left <= 40 - 16 for top, left in first)
    assert len(set(first)) > 1  # a new crop every epoch
    assert crops(0) == first
    assert crops(1) != first


def test_random_positions_in_training_uniform_at_evaluation(folder):
    seed_everything(0)
    train = _ds(folder, num_frames=8, frame_sampling="random", training=True)
    epochs = [_positions(train[RAMP]["video"]) for _ in range(3)]
    for pos in epochs:
        assert pos == sorted(pos) and len(set(pos)) == 8 and all(0 <= p < RAMP_FRAMES for p in pos)
    assert len({tuple(p) for p in epochs}) == 3
    seed_everything(0)
    again = _ds(folder, num_frames=8, frame_sampling="random", training=True)
    assert _positions(again[RAMP]["video"]) == epochs[0]
    evaluation = _ds(folder, split="val", num_frames=8, frame_sampling="random")
    assert not evaluation.training
    for _ in range(2):
        assert _positions(evaluation[RAMP]["video"]) == uniform_indices(RAMP_FRAMES, 8)


def test_workers_draw_their_own_streams_reproducibly(folder):
    def run() -> list[list[int]]:
        seed_everything(0)
        ds = _ds(folder, num_frames=8, frame_sampling="random", training=True)
        ds[RAMP]  # the parent's generator exists now; workers must not reuse a copy of it
        loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_videoqa)
        return [_positions(b["video"][0]) for i, b in zip(range(4), loader)]

    first = run()
    # samples 0, 2 come from worker 0 and 1, 3 from worker 1: their first draws must differ
    assert first[0] != first[1]
    assert len({tuple(p) for p in first}) == 4
    assert run() == first


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resize_short": 256, "crop_size": 300}, "crop_size=300 is larger than resize_short=256"),
        ({"frame_size": 64, "crop_size": 96}, "crop_size=96 is larger than frame_size=64"),
        ({"frame_sampling": "dense"}, "frame_sampling must be one of ('uniform', 'random'), got 'dense'"),
        ({"resize_short": 0}, "resize_short must be a positive int"),
        ({"crop_size": 12.5}, "crop_size must be a positive int"),
        ({"frame_size": 224, "resize_short": 256}, "resize_short=256 and frame_size=224 both resize"),
    ],
)
def test_bad_options_raise_one_error_naming_the_option(folder, kwargs, message):
    with pytest.raises(ValueError) as err:
        _ds(folder, **kwargs)
    assert message in str(err.value)
    with pytest.raises(ValueError) as err:  # the same check without any file
        VideoQADataset.example_spec(**kwargs)
    assert message in str(err.value)


def test_crop_larger_than_native_frames_names_the_option_and_file(folder):
    ds = _ds(folder, num_frames=2, crop_size=40, split="val")
    with pytest.raises(ValueError, match=r"ramp\.mp4 \(record 0\): crop_size=40 does not fit in frames of 32x32"):
        ds[RAMP]


def test_example_spec_shapes():
    assert VideoQADataset.example_spec(num_frames=100, resize_short=256, crop_size=224).video_shapes == [(100, 224, 224)]
    assert VideoQADataset.example_spec(num_frames=8, resize_short=96).video_shapes == [(8, 96, 96)]
    spec = SyntheticVQADataset.example_spec(num_frames=4, resize_short=48, crop_size=32, frame_sampling="random")
    assert spec.video_shapes == [(4, 32, 32)]
    assert SyntheticVQADataset.example_spec(num_frames=4).video_shapes == [(4, 64, 64)]


def test_synthetic_dataset_takes_the_options():
    seed_everything(0)
    ds = SyntheticVQADataset("train", num_frames=4, resize_short=24, crop_size=16, training=True, **SMALL)
    assert ds.streams == [(4, None)] and ds.random_draws() == ["a random crop (crop_size=16)"]
    assert ds[0]["video"].shape == (4, 3, 16, 16)
    assert SyntheticVQADataset("val", **SMALL).training is False


def test_feature_cache_is_refused_with_random_training_draws(folder, tmp_path):
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError) as err:
        _ds(folder, crop_size=16, resize_short=24, training=True, feature_cache=cache)
    assert "feature_cache" in str(err.value) and "random crop (crop_size=16)" in str(err.value)
    with pytest.raises(ValueError, match=r"feature_cache.*frame_sampling='random'"):
        _ds(folder, frame_sampling="random", training=True, feature_cache=cache)
    # evaluation crops the centre and takes evenly spaced frames: the cache serves it, keyed by both
    val = _ds(folder, split="val", crop_size=16, resize_short=24, frame_sampling="random", feature_cache=cache)
    assert val.decode_args()["resize_short"] == 24 and val.decode_args()["crop"] == [16, "center"]
    assert "video_key" in val[NOISE]
    # without the options the key's arguments are exactly the ones caches were written with before
    assert _ds(folder, frame_size=32).decode_args() == {"reader": "read_video_streams/2", "streams": [[16, 32]]}
