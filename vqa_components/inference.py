"""Answers for your own video: a model folder, a clip, a question -> the answer and its top 5.

:class:`Answerer` is what ``vqa ask`` and the demo page (``vqa demo``) run. It builds the model
folder's parts as a :class:`~vqa_components.pipeline.VideoQAPipeline` (no Lightning: it starts in
about the time ``import torch`` takes) and reads a clip the way the model's evaluation read its
test clips (the folder's ``video`` section: evenly spaced frames per stream, the same resize and
centre crop), so that a benchmark clip asked here gets the answer the test gave it.

A clip is any file PyAV decodes (MP4, AVI, MKV, WebM, GIF, ...) or a folder of frame images
(``frame_folder``'s naming and order). A file that cannot be read raises
:class:`~vqa_components.data.video_io.VideoDecodeError` naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vqa_components.errors import ConfigError

#: models cheaper than this per sample run on one CPU thread by default (:class:`Answerer`)
ONE_THREAD_GMACS = 1.0


class Answerer:
    """A model folder's model, answering questions about clips.

    Args:
        model: a model folder (``vqa export``) or a hub id.
        device: where the model runs.
        threads: torch's CPU threads for the model (``torch.set_num_threads``, process-wide); ``None``:
            one for a model under :data:`ONE_THREAD_GMACS` per sample (the folder's ``cost``), else
            torch's default. A small model answers in milliseconds on one thread, while two threads
            on a busy machine spent 0.8 s waiting for each other (``docs/results/ask.md``).
        decode_threads: FFmpeg's decoding threads (0: FFmpeg's choice, which helps on HD clips).
    """

    def __init__(
        self, model: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None,
        decode_threads: int = 0,
    ) -> None:
        from vqa_components.model_folder import load_pipeline, read_config

        self.config = read_config(model)
        self.folder = Path(self.config["folder"])
        self.video = self.config["video"]
        self.threads = decode_threads
        gmacs = (self.config.get("cost") or {}).get("gmacs_per_sample")
        if threads is None and gmacs is not None and gmacs < ONE_THREAD_GMACS:
            threads = 1
        if threads is not None and str(device) == "cpu":
            torch.set_num_threads(threads)
        self.pipeline = load_pipeline(self.folder, device)
        self.task = self.pipeline.head.task if self.pipeline.head is not None else None

    # ------------------------------------------------------------ clips
    def read_video(self, path: str | os.PathLike) -> Tensor | tuple[Tensor, ...]:
        """The clip at ``path`` as the evaluation reads it: ``uint8`` ``(t, 3, h, w)`` (one per stream
        for a multi-stream model)."""
        from vqa_components.data.video_io import VideoDecodeError, read_video_streams, uniform_indices

        path = Path(path)
        streams = [(int(t), tuple(s) if isinstance(s, list) else s) for t, s in self.video["streams"]]
        if path.is_dir():
            from vqa_components.data.frame_folder import read_frame_folder

            videos = read_frame_folder(path, streams, dtype=torch.uint8, indices=uniform_indices)
        elif path.is_file():
            videos = read_video_streams(path, streams, dtype=torch.uint8, indices=uniform_indices,
                                        threads=self.threads)
        else:
            raise VideoDecodeError(path, "no such file or folder")
        if self.video.get("resize_short") is not None or self.video.get("crop_size") is not None:
            from vqa_components.data.clip_transforms import ClipTransform  # torchvision: only when needed

            transform = ClipTransform(self.video.get("resize_short"), self.video.get("crop_size"), random_crop=False)
            try:
                videos = transform(videos)
            except ValueError as exc:
                raise VideoDecodeError(path, str(exc)) from exc
        return videos if self.video.get("multi_stream") else videos[0]

    def batch(
        self, videos: Sequence[Tensor | tuple[Tensor, ...]], questions: Sequence[str],
        options: Sequence[Sequence[str]] | None = None,
    ) -> dict[str, Any]:
        """A batch of clips (from :meth:`read_video`) and questions, as the datasets' collate makes it."""
        if self.task == "multiple_choice" and not options:
            raise ConfigError("this model chooses among options: give them (vqa ask --options A B C ...)")
        device = self.pipeline_device
        if isinstance(videos[0], tuple):
            video: Any = tuple(torch.stack([v[s] for v in videos]).to(device) for s in range(len(videos[0])))
        else:
            video = torch.stack(list(videos)).to(device)
        batch: dict[str, Any] = {"video": video, "question": list(questions), "batch_size": len(questions)}
        if options:
            batch["options"] = [list(o) for o in options]
        return batch

    @property
    def pipeline_device(self) -> torch.device:
        return next((p.device for p in self.pipeline.parameters()), torch.device("cpu"))

    # ------------------------------------------------------------ answers
    def ask(self, video: str | os.PathLike | Tensor | tuple[Tensor, ...], question: str,
            options: Sequence[str] | None = None, top_k: int = 5) -> dict[str, Any]:
        """``{"answer": str, "top": [(answer, probability), ...]}`` for one clip (a path, or frames
        from :meth:`read_video`) and question."""
        frames = video if isinstance(video, (Tensor, tuple)) else self.read_video(video)
        batch = self.batch([frames], [question], [list(options)] if options else None)
        return self.pipeline.answer(batch, top_k=top_k)[0]

    def ask_many(self, rows: Iterable[dict[str, Any]], top_k: int = 5, batch_size: int = 8) -> list[dict[str, Any]]:
        """Answers for ``{"video", "question"[, "options"]}`` rows (``vqa ask --input``), in order; each
        answer row repeats its input and adds ``answer`` and ``top``."""
        rows = list(rows)
        answers: list[dict[str, Any]] = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            videos = [self.read_video(r["video"]) for r in chunk]
            options = [r["options"] for r in chunk] if chunk[0].get("options") else None
            if options is not None and len({len(o) for o in options}) > 1:  # the model batches equal counts
                answers += [{**r, **self.ask(v, r["question"], r["options"], top_k)} for r, v in zip(chunk, videos)]
                continue
            got = self.pipeline.answer(self.batch(videos, [r["question"] for r in chunk], options), top_k=top_k)
            answers += [{**r, **a} for r, a in zip(chunk, got)]
        return answers


def read_pairs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``vqa ask --input`` JSON Lines file: ``video`` (relative to the file's folder, or
    absolute), ``question`` and, for multiple choice, ``options``; a bad line is named."""
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {n}: not JSON ({exc.msg})") from None
        for field in ("video", "question"):
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise ConfigError(f"{path}, line {n}: field {field!r} is missing or not a string")
        if "options" in row and not (isinstance(row["options"], list) and all(isinstance(o, str) for o in row["options"])):
            raise ConfigError(f"{path}, line {n}: field 'options' must be a list of strings")
        video = Path(row["video"]).expanduser()
        row["video"] = str(video if video.is_absolute() else path.parent / video)
        rows.append(row)
    return rows


def format_answer(result: dict[str, Any]) -> str:
    """The lines ``vqa ask`` prints: the answer, then the top answers with their probabilities."""
    lines = [f"answer: {result['answer']}"]
    for i, (name, p) in enumerate(result.get("top") or [], start=1):
        lines.append(f"  {i}. {name:<24} {100 * p:6.2f} %")
    return "\n".join(lines)
