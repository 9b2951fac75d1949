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

    python -m benchmarks cotok_cost            # about 2 min on 2 idle cores
    python -m benchmarks cotok_cost --quick    # seconds (smoke test)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

try:
    from benchmarks import _report
except ImportError:
    import _report

#: (frames, positions per frame) of X3D-XS's last feature map for the paper's three streams
PAPER_STREAMS = ((32, 4), (16, 16), (8, 49))
X3D_WIDTH = 432
TEXT_LEN = 16


def inputs(num_streams: int, scale: float, batch: int) -> tuple:
    import torch

    from vqa_components.interfaces import TextFeatures, VideoFeatures

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


def fusions(num_streams: int, dim: int, iterations: int, tokens: int) -> dict:
    import torch

    from vqa_components import create

    widths = [X3D_WIDTH] * num_streams
    torch.manual_seed(0)
    return {
        "co_tokenizer": create("fusion", "co_tokenizer", video_dim=widths, text_dim=X3D_WIDTH, dim=dim,
                               num_tokens=tokens, num_iterations=iterations, num_heads=8),
        "concat": create("fusion", "concat_self_attention", video_dim=widths, text_dim=X3D_WIDTH, dim=dim,
                         num_layers=iterations, num_heads=8),
    }


def macs(fusion, video, text) -> int:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        fusion(video, text)
    return counter.get_total_flops() // 2


def seconds(fusion, video, text, repeats: int) -> float:
    import torch

    times = []
    with torch.no_grad():
        fusion(video, text)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            fusion(video, text)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    with _report.panels(2, 5.5, 4, title, path) as axes:
        _draw(rows, axes)


def _draw(rows: list[dict], axes: list) -> None:
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


def markdown(result: dict) -> str:
    """The block of docs/benchmarks.md: both fusions' cost per stream count and size, and the ratio."""
    cfg = result["config"]
    rows = [[str(r["streams"]), str(r["scale"]), str(r["video_tokens"]),
             f"{r['co_tokenizer']['gmacs']:.3f}", f"{r['concat']['gmacs']:.3f}", f"{r['concat_over_cotok']['gmacs']:.1f}x",
             f"{1000 * r['co_tokenizer']['seconds']:.1f}", f"{1000 * r['concat']['seconds']:.1f}",
             f"{r['concat_over_cotok']['seconds']:.1f}x"] for r in result["rows"]]
    return "\n".join([
        (f"Width {cfg['dim']}, {cfg['iterations']} iterations / layers, K = {cfg['tokens']} tokens, batch {cfg['batch']}; "
        "X3D-XS-shaped features of the paper's streams (32x4, 16x16, 8x49 positions of width 432), their frame "
        "counts scaled. GMACs per sample, ms per forward (median)."),
        "",
        _report.md_table(["streams", "frames x", "video tokens", "co_tokenizer GMACs", "concat GMACs",
                          "concat / co_tokenizer", "co_tokenizer ms", "concat ms", "concat / co_tokenizer"], rows),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = _report.parser(__doc__)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    args.out = args.results / "cotok_cost.json"
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
        **_report.machine(), "device": "cpu", "quick": args.quick,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "streams": [{"frames": f, "positions_per_frame": p, "width": X3D_WIDTH} for f, p in PAPER_STREAMS],
        "rows": rows,
        "co_tokenizer_linearity": linear,
        "paper_streams_concat_over_cotok": paper and paper["concat_over_cotok"],
    }
    _report.write_json(result, args.out)
    plot(rows, args.out.with_suffix(".png"), _report.plot_title(result))
    print(f"written: {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
