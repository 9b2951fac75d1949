"""Cost of co-tokenization against concatenation, for 1, 2 and 3 streams and a growing number of video tokens.

The two fusions of issue 11 on the same inputs:

* ``co_tokenizer``: ``K`` text-conditioned TokenLearner tokens per iteration, then a transformer
  layer over ``K`` tokens + the question's ``l`` tokens (``I`` iterations);
* ``concat_self_attention``: every video token of every stream and the question's tokens in one
  sequence through ``I`` transformer layers (the baseline the blog compares with).

Inputs are what one X3D-XS per stream gives for the paper's streams (32x64x64, 16x112x112,
8x224x224 -> 32x4, 16x16 and 8x49 positions of width 432; measured with ``backbone: x3d``); the
first ``s`` streams for ``s`` = 1, 2, 3, and each stream's frame count scaled by ``--scales`` to grow
the number of video tokens. Both fusions have width ``--dim`` and ``I`` = ``--iterations`` layers.

Measured in one process, as ratios (concatenation / co-tokenization):

* multiply-accumulates of a forward pass, counted by ``torch.utils.flop_counter`` with attention
  on PyTorch's math kernel (the fused CPU kernel is not counted by the flop counter);
* wall time of a forward pass (median of ``--repeats``, after a warm-up), batch ``--batch``.

Writes ``benchmarks/results/cotok_cost.json`` and ``cotok_cost.png``::

    python benchmarks/cotok_cost.py            # about 2 min on 2 idle cores
    python benchmarks/cotok_cost.py --quick    # seconds (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vqa_components import create
from vqa_components.interfaces import TextFeatures, VideoFeatures

RESULTS = Path(__file__).parent / "results"
#: (frames, positions per frame) of X3D-XS's last feature map for the paper's three streams
PAPER_STREAMS = ((32, 4), (16, 16), (8, 49))
X3D_WIDTH = 432
TEXT_LEN = 16


def inputs(num_streams: int, scale: float, batch: int) -> tuple[VideoFeatures, TextFeatures]:
    g = torch.Generator().manual_seed(0)
    streams = []
    for frames, positions in PAPER_STREAMS[:num_streams]:
        t = max(1, round(frames * scale))
        tokens = torch.randn(batch, t, positions, X3D_WIDTH, generator=g)
        streams.append(VideoFeatures(tokens=tokens, cls=tokens.mean(2)))
    first = streams[0]
    video = VideoFeatures(tokens=first.tokens, cls=first.cls, streams=tuple(streams) if num_streams > 1 else None)
    text_tokens = torch.randn(batch, TEXT_LEN, X3D_WIDTH, generator=g)
    text = TextFeatures(tokens=text_tokens, cls=text_tokens.mean(1), mask=torch.ones(batch, TEXT_LEN, dtype=torch.bool))
    return video, text


def fusions(num_streams: int, dim: int, iterations: int, tokens: int) -> dict[str, torch.nn.Module]:
    widths = [X3D_WIDTH] * num_streams
    torch.manual_seed(0)
    return {
        "co_tokenizer": create("fusion", "co_tokenizer", video_dim=widths, text_dim=X3D_WIDTH, dim=dim,
                               num_tokens=tokens, num_iterations=iterations, num_heads=8),
        "concat": create("fusion", "concat_self_attention", video_dim=widths, text_dim=X3D_WIDTH, dim=dim,
                         num_layers=iterations, num_heads=8),
    }


def macs(fusion: torch.nn.Module, video: VideoFeatures, text: TextFeatures) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        fusion(video, text)
    return counter.get_total_flops() // 2


def seconds(fusion: torch.nn.Module, video: VideoFeatures, text: TextFeatures, repeats: int) -> float:
    times = []
    with torch.no_grad():
        fusion(video, text)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            fusion(video, text)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in sorted({r["streams"] for r in rows}):
        sub = [r for r in rows if r["streams"] == s]
        x = [r["video_tokens"] for r in sub]
        for name, style in (("co_tokenizer", "-o"), ("concat", "--s")):
            axes[0].plot(x, [r[name]["gmacs"] for r in sub], style, label=f"{name}, {s} stream(s)")
            axes[1].plot(x, [1000 * r[name]["seconds"] for r in sub], style, label=f"{name}, {s} stream(s)")
    axes[0].set(xlabel="video tokens (all streams)", ylabel="GMACs per forward", title="Multiply-accumulates")
    axes[1].set(xlabel="video tokens (all streams)", ylabel="ms per forward", title="Wall time (CPU)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small width, two scales, one repeat")
    parser.add_argument("--out", type=Path, default=RESULTS / "cotok_cost.json")
    args = parser.parse_args()
    if args.quick:
        args.scales, args.dim, args.repeats = [0.25, 0.5], 64, 1
    rows = []
    for num_streams in (1, 2, 3):
        parts = fusions(num_streams, args.dim, args.iterations, args.tokens)
        for scale in args.scales:
            video, text = inputs(num_streams, scale, args.batch)
            positions = sum(s.tokens.shape[1] * s.tokens.shape[2] for s in (video.streams or (video,)))
            row = {"streams": num_streams, "scale": scale, "video_tokens": positions}
            for name, fusion in parts.items():
                fusion.eval()
                row[name] = {"gmacs": macs(fusion, video, text) / 1e9 / args.batch,
                             "seconds": seconds(fusion, video, text, args.repeats)}
            row["concat_over_cotok"] = {k: row["concat"][k] / row["co_tokenizer"][k] for k in ("gmacs", "seconds")}
            rows.append(row)
            print(f"{num_streams} stream(s), {positions:5d} video tokens: co_tokenizer {row['co_tokenizer']['gmacs']:.3f} "
                  f"GMACs {1000 * row['co_tokenizer']['seconds']:.1f} ms | concat {row['concat']['gmacs']:.3f} GMACs "
                  f"{1000 * row['concat']['seconds']:.1f} ms | ratio {row['concat_over_cotok']['gmacs']:.2f}x MACs, "
                  f"{row['concat_over_cotok']['seconds']:.2f}x time", flush=True)
    # linearity: MACs per video token of the co-tokenizer across scales (constant if the cost is linear)
    linear = {}
    for num_streams in (1, 2, 3):
        sub = [r for r in rows if r["streams"] == num_streams]
        a, b = sub[0], sub[-1]
        slope = (b["co_tokenizer"]["gmacs"] - a["co_tokenizer"]["gmacs"]) / (b["video_tokens"] - a["video_tokens"])
        mids = [(r["co_tokenizer"]["gmacs"] - a["co_tokenizer"]["gmacs"]) - slope * (r["video_tokens"] - a["video_tokens"]) for r in sub]
        linear[str(num_streams)] = {"gmacs_per_video_token": slope,
                                    "largest_deviation_from_the_line_gmacs": max(abs(m) for m in mids)}
    paper = next(r for r in rows if r["streams"] == 3 and r["scale"] == 1.0) if 1.0 in args.scales else None
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu", "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "streams": [{"frames": f, "positions_per_frame": p, "width": X3D_WIDTH} for f, p in PAPER_STREAMS],
        "rows": rows,
        "co_tokenizer_linearity": linear,
        "paper_streams_concat_over_cotok": paper and paper["concat_over_cotok"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, args.out.with_suffix(".png"))
    print(f"written: {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
