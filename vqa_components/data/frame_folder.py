"""Clips stored as folders of extracted frames (``img_00001.jpg``, ``img_00002.jpg``, ...).

Some releases ship frames instead of videos (EgoTaskQA: the LEMMA videos as JPEG frames per
view). :func:`read_frame_folder` samples them as :func:`~vqa_components.data.video_io.read_video_streams`
samples a video file: ``(num_frames, size)`` per stream, positions from ``indices(n, k)``
(evenly spaced by default), ``uint8`` or float output. Only the chosen frames are read.

Frame order is the order of the number in the file name (``img_9.jpg`` before ``img_10.jpg``),
which for zero-padded names is also the alphabetical order. ``first``/``last`` restrict the
clip to a range of that order, ``[first, last)`` (0-based), as the releases' intervals do.

Every problem raises :class:`~vqa_components.data.video_io.VideoDecodeError` naming the folder
(or the frame): a missing folder, no frames in it or in the range, an unreadable image, frames
of different sizes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from vqa_components.data.video_io import Size, VideoDecodeError, _as_hw, resize_frames, uniform_indices

#: File extensions read as frames (case-insensitive).
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
_NUMBER = re.compile(r"(\d+)")


def _order(name: str) -> tuple:
    """Sort key: the text with every number compared as a number (``img_9`` < ``img_10``)."""
    return tuple(int(p) if p.isdigit() else p for p in _NUMBER.split(name))


def list_frames(folder: str | os.PathLike) -> list[Path]:
    """The frame files of ``folder`` in frame order (see the module docstring).

    Raises:
        VideoDecodeError: the folder does not exist or holds no frame file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoDecodeError(folder, "frame folder not found")
    names = [e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(FRAME_EXTENSIONS)]
    if not names:
        raise VideoDecodeError(folder, f"no frames ({', '.join(FRAME_EXTENSIONS)} files) in the folder")
    return [folder / n for n in sorted(names, key=_order)]


def _read_image(path: Path) -> Tensor:
    """``(3, h, w)`` uint8 RGB (grayscale and palette images are converted)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as exc:
        raise VideoDecodeError(path, f"unreadable frame image ({type(exc).__name__}: {exc})") from exc


def read_frame_folder(
    folder: str | os.PathLike,
    streams: Sequence[tuple[int, Size]],
    first: int | None = None,
    last: int | None = None,
    dtype: torch.dtype = torch.float32,
    indices: Callable[[int, int], Sequence[int]] = uniform_indices,
    frames: Sequence[Path] | None = None,
) -> tuple[Tensor, ...]:
    """Sample several streams of the clip stored in ``folder``, reading each chosen frame once.

    Args:
        folder: the frame folder.
        streams: ``(num_frames, size)`` per stream, as in ``read_video_streams``.
        first, last: the clip is frames ``[first, last)`` of the folder's frame order.
        dtype: ``torch.uint8`` (pixels in ``[0, 255]``) or a float dtype (``[0, 1]``).
        indices: ``indices(num_available, num_frames)`` -> frame positions in the clip.
        frames: the folder's frame files, if already listed (:func:`list_frames`).

    Returns:
        One ``(num_frames, 3, h, w)`` tensor per stream.
    """
    if not streams:
        raise ValueError("streams must name at least one (num_frames, size)")
    folder = Path(folder)
    files = list(frames) if frames is not None else list_frames(folder)
    lo = 0 if first is None else max(int(first), 0)
    hi = len(files) if last is None else min(int(last), len(files))
    clip = files[lo:hi]
    if not clip:
        raise VideoDecodeError(folder, f"no frames in the range [{first}, {last}) of {len(files)} frames")
    per_stream = []
    for k, _ in streams:
        pos = [int(i) for i in indices(len(clip), k)]
        if len(pos) != k or any(not 0 <= i < len(clip) for i in pos):
            raise ValueError(f"frame positions {pos[:8]}... must be {k} indices in [0, {len(clip)})")
        per_stream.append(pos)
    decoded = {i: _read_image(clip[i]) for i in sorted({i for pos in per_stream for i in pos})}
    shapes = {tuple(t.shape) for t in decoded.values()}
    if len(shapes) > 1:
        raise VideoDecodeError(folder, f"frames of different sizes {sorted(shapes)} (c, h, w)")
    out = []
    for pos, (_, size) in zip(per_stream, streams):
        x = torch.stack([decoded[i] for i in pos])
        hw = _as_hw(size)
        if hw is not None and tuple(x.shape[-2:]) != hw:
            x = resize_frames(x.float().div_(255.0), hw)
            if dtype == torch.uint8:
                x = x.mul_(255.0).round_().to(torch.uint8)
        if dtype != torch.uint8 and x.dtype == torch.uint8:
            x = x.to(dtype).div_(255.0)
        out.append(x.contiguous())
    return tuple(out)
