"""Helpers that write miniature copies of the benchmark releases (exact file names, layouts, field
names and value types; a few records; tiny clips), run a tiny recipe on them through the real CLI, and
check that a paper recipe's datamodule reads them into batches like the one its model is checked on."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import numpy as np
import pytest
import yaml
from helpers import run_vqa
from PIL import Image

from vqa_components.data.video_io import write_video

SIDE = 32
FRAMES = 8


def clip(level: int, frames: int = FRAMES, side: int = SIDE) -> np.ndarray:
    """``(t, side, side, 3)`` uint8: frame i has grey level ``level + 4 i`` (tells clips apart)."""
    return np.stack([np.full((side, side, 3), (level + 4 * i) % 256, dtype=np.uint8) for i in range(frames)])


def mp4(path: Path, level: int = 40, frames: int = FRAMES) -> Path:
    return write_video(path, clip(level, frames), fps=8)


def avi(path: Path, level: int = 40, frames: int = FRAMES) -> Path:
    """MPEG-4 Part 2 in AVI, as the MSVD YouTubeClips are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        for frame in clip(level, frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def gif(path: Path, level: int = 40, frames: int = FRAMES) -> Path:
    """An animated GIF (palette frames, 100 ms each), as TGIF's are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in clip(level, frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


def jpeg_frames(folder: Path, level: int = 40, frames: int = FRAMES, pattern: str = "img_{:05d}.jpg") -> Path:
    """A folder of JPEG frames numbered from 1 (``img_00001.jpg`` ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(clip(level, frames), start=1):
        Image.fromarray(frame).save(folder / pattern.format(i), quality=95)
    return folder


def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, header: list[str], rows: list[list[Any]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue())
    return path


def recipe(
    dataset: str, dataset_args: dict[str, Any], kind: str, root_dir: Path, num_answers: int = 0, **data: Any
) -> dict[str, Any]:
    """A tiny recipe (32-wide parts, 2 frames of 32x32) for ``kind``: open_ended, multiple_choice, captions."""
    dim = 32
    model: dict[str, Any] = {
        "backbone": {
            "name": "frame_cnn",
            "dim": dim,
            "channels": [8, 16, 32],
            "grid": 2,
            "temporal_kernel": 0,
        },
        "text_encoder": {"name": "small_transformer", "dim": dim, "num_layers": 1, "num_heads": 2},
        "fusion": {
            "name": "cross_attention",
            "video_dim": dim,
            "text_dim": dim,
            "dim": dim,
            "num_layers": 1,
            "num_heads": 2,
        },
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
    }
    if kind == "open_ended":
        model["head"] = {"name": "answer_classifier", "in_dim": dim, "num_answers": num_answers}
        model["objectives"] = [{"name": "answer_cross_entropy"}]
    elif kind == "multiple_choice":
        model["head"] = {"name": "vtm_choice", "in_dim": dim}
        model["objectives"] = [{"name": "vtm", "in_dim": dim}]
    else:
        model["text_field"] = "caption"
        model["head"] = {"name": "vtm_choice", "in_dim": dim}
        model["objectives"] = [
            {"name": "vtm", "in_dim": dim},
            {"name": "contrastive", "video_dim": dim, "text_dim": dim},
        ]
    return {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(root_dir),
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
        },
        "model": model,
        "data": {
            "dataset": dataset,
            "dataset_args": {"num_frames": 2, "frame_size": SIDE, **dataset_args},
            "batch_size": 2,
            "num_workers": 0,
            **data,
        },
    }


def run_cli(subcommand: str, cfg: dict[str, Any], tmp: Path, *extra: str) -> tuple[int, str]:
    """``vqa <subcommand> --config <cfg> --trainer.fast_dev_run=1`` in this process; (exit code, stdout)."""
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run_vqa(subcommand, "--config", path, "--trainer.fast_dev_run=1", *extra)


ROOT = Path(__file__).resolve().parents[3]

#: the loader a split of the datamodule is read through
LOADERS = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader"}
SPLIT_KEYS = {"train": "fit", "val": "validate", "test": "test"}


def check_recipe_batch(recipe: str, dataset_args: dict[str, Any], split: str = "train") -> dict[str, Any]:
    """The first ``split`` batch (2 samples) of a paper recipe's datamodule, pointed at a miniature
    release, checked against ``dm.example_batch(2)``: the batch the recipe's model is checked on at
    full size (tests/recipes/test_paper_scale.py builds it on the meta device and runs a step on it).

    The datamodule is the recipe's ``data:`` section as written (its dataset, frames, sizes, streams,
    frame sampling, resizing and cropping, so the shapes are the recipe's), with ``dataset_args``
    overriding where the release lies (``root`` etc.), ``batch_size=2`` and ``num_workers=0``. No model
    is built. Every key of the example batch must be in the real batch with the same kind of value:
    tensors of the same shape (video pixels may be uint8 in the batch and float in the example: the
    model takes both; each stream of a multi-stream video), string lists of the same length, the same
    ints. The keys the recipe's model reads beyond them must be there too: its text field, the options
    of a multiple-choice question, the answers a generating head is taught with. Returns the batch."""
    import torch

    from vqa_components.data.datamodule import VideoQADataModule
    from vqa_components.registry import HEADS, import_builtin_parts

    cfg = yaml.safe_load((ROOT / recipe).read_text())
    data = dict(cfg["data"])
    data["dataset_args"] = {**(data.get("dataset_args") or {}), **dataset_args}
    data.update(batch_size=2, num_workers=0)
    dm = VideoQADataModule(**data)
    dm.prepare_data()
    dm.setup(SPLIT_KEYS[split])
    assert dm.splits[SPLIT_KEYS[split]] is not None, f"{recipe}: no {split} split"
    batch = next(iter(getattr(dm, LOADERS[split])()))
    assert batch["num_skipped"] == 0, batch["skipped"]
    example = dm.example_batch(2)

    def same_kind(key: str, want: Any, got: Any) -> None:
        where = f"{recipe}: batch[{key!r}]"
        if isinstance(want, torch.Tensor):
            assert isinstance(got, torch.Tensor), f"{where} is a {type(got).__name__}, the example's a tensor"
            assert got.shape == want.shape, (
                f"{where}: shape {tuple(got.shape)}, the example's {tuple(want.shape)}"
            )
            if key.startswith("video"):  # decoded uint8 pixels or float ones (each stream's)
                assert got.dtype == torch.uint8 or got.dtype.is_floating_point, f"{where}: dtype {got.dtype}"
            else:
                assert got.dtype == want.dtype, f"{where}: dtype {got.dtype}, the example's {want.dtype}"
        elif isinstance(want, tuple):  # a multi-stream video: one tensor per stream
            assert isinstance(got, tuple) and len(got) == len(want), f"{where}: not {len(want)} streams"
            for i, (w, g) in enumerate(zip(want, got)):
                same_kind(f"{key}[{i}]", w, g)
        elif isinstance(want, list):
            assert isinstance(got, list) and len(got) == len(want), f"{where}: not a list of {len(want)}"
            assert all(isinstance(g, type(w)) for w, g in zip(want, got)), (
                f"{where}: {got!r}, the example's {want!r}"
            )
        else:
            assert type(got) is type(want) and got == want, f"{where} = {got!r}, the example's {want!r}"

    for key, want in example.items():
        assert key in batch, f"{recipe}: the example batch has {key!r}, the {split} batch has not"
        same_kind(key, want, batch[key])

    def strings(key: str, what: str, empty: bool = False) -> None:
        values = batch.get(key)
        assert isinstance(values, list) and len(values) == 2, f"{recipe}: the batch has no {key!r} ({what})"
        assert all(isinstance(v, str) and (v or empty) for v in values), (
            f"{recipe}: batch[{key!r}] = {values!r} ({what})"
        )

    model = cfg.get("model") or {}
    text_field = model.get("text_field", "question")
    import_builtin_parts()
    head = model.get("head")
    task = HEADS.get(head["name"]).task if isinstance(head, dict) and "name" in head else None
    choice = task == "multiple_choice" and text_field == "question"  # a question with options to pick from
    # the question of a multiple-choice record may be empty (MSR-VTT MC: the options are the captions)
    strings(text_field, "the model's text_field", empty=choice)
    if task == "generate":
        strings("answer", "what the generating head is taught")
    if choice:
        options = batch.get("options")
        assert isinstance(options, list) and len(options) == 2, f"{recipe}: the batch has no 'options'"
        assert len({len(o) for o in options}) == 1 and len(options[0]) > 1, f"{recipe}: options {options!r}"
        assert all(isinstance(o, str) and o for opts in options for o in opts), (
            f"{recipe}: options {options!r}"
        )
    return batch


@pytest.fixture
def mini() -> SimpleNamespace:
    return SimpleNamespace(
        clip=clip,
        mp4=mp4,
        avi=avi,
        gif=gif,
        jpeg_frames=jpeg_frames,
        write_json=write_json,
        write_jsonl=write_jsonl,
        write_csv=write_csv,
        recipe=recipe,
        run_cli=run_cli,
        check_recipe_batch=check_recipe_batch,
    )
