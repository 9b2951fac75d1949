"""Helpers that write miniature copies of the benchmark releases (exact file names, layouts, field
names and value types; a few records; tiny clips) and run a recipe on them through the real CLI."""

from __future__ import annotations

import contextlib
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
from PIL import Image

from recipe_helpers import objectives_with_tagger_size, paper_sized_bert_vocab

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
    from vqa_components.cli import main

    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([subcommand, "--config", str(path), "--trainer.fast_dev_run=1", *extra])
    return code, out.getvalue()


ROOT = Path(__file__).resolve().parents[3]


def run_paper_recipe(recipe: str, dataset_args: dict[str, Any], num_answers: int, tmp: Path) -> int:
    """``fast_dev_run`` of a paper-scale recipe (as written: its parts, widths and dataset) on a miniature
    release, offline: frames shrunk to 32x32 for the frame encoder, the frozen CLIP tower's random
    weights allowed, fine-tuning from scratch, fp32 (what tests/test_recipes.py does with synthetic data)."""
    from vqa_components.cli import main

    args = {"num_frames": 16, "frame_size": SIDE, **dataset_args}
    with contextlib.redirect_stdout(io.StringIO()):
        return main([
            "fit", "--config", str(ROOT / recipe), f"--trainer.default_root_dir={tmp / 'paper'}",
            f"--data.dataset_args={json.dumps(args)}", "--data.batch_size=2", "--data.num_workers=0",
            "--trainer.precision=32-true", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
            "--trainer.fast_dev_run=1", "--model.backbone.init_args.image_size=32",
            "--model.allow_random_frozen=true", f"--model.head.init_args.num_answers={num_answers}",
            "--model.init_parts=null",
        ])  # fmt: skip


#: The co-tokenization recipes' T5 stacks (text encoder, text_decoder head) and co-tokenizer in a
#: ``fast_dev_run``: width 64, one layer (tests/test_recipes.py shrinks them the same way).
SMALL_T5 = {"d_model": 64, "num_layers": 1, "num_heads": 2, "d_kv": 32, "d_ff": 128}


def run_multi_stream_recipe(recipe: str, dataset_args: dict[str, Any], tmp: Path) -> int:
    """``fast_dev_run`` of a co-tokenization recipe (one X3D per stream, a T5 encoder, a text_decoder
    head) on a miniature release, offline: its streams with 8x fewer frames, each 4x smaller; its T5
    stacks and fusion at :data:`SMALL_T5`; the recipe's other dataset arguments; fine-tuning from
    scratch, fp32, one thread (X3D's depthwise 3-D convolutions crawl on two contended threads)."""
    import torch

    from vqa_components.cli import main

    cfg = yaml.safe_load((ROOT / recipe).read_text())
    given = cfg["data"]["dataset_args"]
    streams = [
        {"num_frames": max(1, s["num_frames"] // 8), "frame_size": s["frame_size"] // 4}
        for s in given["streams"]
    ]
    args = {**{k: v for k, v in given.items() if k != "root"}, "streams": streams, **dataset_args}
    t5, d, heads = json.dumps(SMALL_T5), SMALL_T5["d_model"], SMALL_T5["num_heads"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return main([
                "fit", "--config", str(ROOT / recipe), f"--trainer.default_root_dir={tmp / 'paper'}",
                f"--data.dataset_args={json.dumps(args)}", "--data.batch_size=2", "--data.num_workers=0",
                "--trainer.precision=32-true", "--trainer.accelerator=cpu",
                "--trainer.enable_progress_bar=false", "--trainer.fast_dev_run=1",
                "--model.allow_random_frozen=true", "--model.init_parts=null",
                f"--model.text_encoder.init_args.config={t5}", f"--model.head.init_args.config={t5}",
                f"--model.fusion.init_args.text_dim={d}", f"--model.head.init_args.in_dim={d}",
                f"--model.fusion.init_args.dim={d}", f"--model.fusion.init_args.num_heads={heads}",
            ])  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def run_evilm_recipe(
    recipe: str, dataset_args: dict[str, Any], tmp: Path, num_answers: int | None = None, subcommand: str = "fit"
) -> int:
    """``fast_dev_run`` (``fit``, or ``test`` for an evaluation recipe) of an E-ViLM recipe as written
    (EdgeNeXt-small, tiny BERT, merged decoder; the tokenizer's or tagger's ViT-B/32) on a miniature
    release, offline: its 4 frames shrunk to 32x32 (EdgeNeXt's last stage and the tagger's 32-pixel
    patches then give one grid cell per frame), a vocabulary of the paper's size, earlier stages'
    weights replaced by random ones, fp32."""
    from vqa_components.cli import main

    cfg = yaml.safe_load((ROOT / recipe).read_text())
    model = cfg["model"]
    args = {"num_frames": cfg["data"]["dataset_args"]["num_frames"], "frame_size": SIDE, **dataset_args}
    extra = [f"--model.text_encoder.init_args.vocab_file={paper_sized_bert_vocab(tmp)}", "--model.allow_random_frozen=true"]
    if "backbone" in model:
        extra.append("--model.backbone.init_args.image_size=32")
    if num_answers is not None:
        extra.append(f"--model.head.init_args.num_answers={num_answers}")
    if model.get("init_parts"):
        extra.append("--model.init_parts=null")
    extra += objectives_with_tagger_size(model["objectives"], SIDE)
    with contextlib.redirect_stdout(io.StringIO()):
        return main([
            subcommand, "--config", str(ROOT / recipe), f"--trainer.default_root_dir={tmp / 'paper'}",
            f"--data.dataset_args={json.dumps(args)}", "--data.batch_size=2", "--data.num_workers=0",
            "--trainer.precision=32-true", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
            "--trainer.fast_dev_run=1", *extra,
        ])  # fmt: skip


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
        run_paper_recipe=run_paper_recipe,
        run_evilm_recipe=run_evilm_recipe,
        run_multi_stream_recipe=run_multi_stream_recipe,
    )
