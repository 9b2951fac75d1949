"""Fusion cost as the number of video tokens grows: cross-attention, LA-Gate, co-tokenizer,
concatenated self-attention and the merged transformer, on the same inputs, in one run.

Each fusion is built from the registry at one width (``--dim``, 4 heads) and depth (2 layers; the
co-tokenizer 2 iterations of ``K`` = 8 tokens; the LA-Gate fusion 2 gates), and fed the same random
features: ``t`` frames of ``n`` = 16 tokens (a 4x4 grid) of width ``dim`` and a 16-token question,
batch ``--batch``, for ``t`` in ``--frames`` (video tokens ``t x n``).

Measured per fusion and size:

* **GMACs** of one sample's forward, counted by ``torch.utils.flop_counter`` (attention included,
  the fused CPU kernel too; the ``nn.MultiheadAttention`` fast path is turned off while counting so
  that its products are counted);
* **wall time** of a forward of the batch (``torch.no_grad``, eval mode, the fusions' default kernels),
  the median of ``--repeats``; the fusions are interleaved inside each repetition, so that a loaded
  machine slows all of them alike.

Reported as ratios within the run: each fusion against cross-attention at the same size, and each
fusion's growth from the smallest size to the largest (``x`` of MACs and of time for ``y`` x the tokens).
Writes ``benchmarks/results/fusion_cost.json`` and ``fusion_cost.png``::

    python -m benchmarks fusion_cost            # ~1 min on 2 cores
    python -m benchmarks fusion_cost --quick    # seconds
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

try:
    from benchmarks import _report, _steps
except ImportError:
    import _report
    import _steps

NAME = "fusion_cost"
FUSIONS = ("cross_attention", "la_gate", "co_tokenizer", "concat_self_attention", "merged_transformer")
TOKENS_PER_FRAME = 16
TEXT_LEN = 16


def build(name: str, dim: int, max_frames: int):
    import torch

    from vqa_components import create

    torch.manual_seed(0)
    common = {"video_dim": dim, "text_dim": dim, "dim": dim}
    extra = {
        "cross_attention": {"num_layers": 2, "num_heads": 4},
        "la_gate": {"num_layers": 2, "num_heads": 4},
        "co_tokenizer": {"num_tokens": 8, "num_iterations": 2, "num_heads": 4},
        "concat_self_attention": {"num_layers": 2, "num_heads": 4},
        "merged_transformer": {"num_layers": 2, "num_heads": 4, "max_frames": max_frames,
                               "max_tokens_per_frame": TOKENS_PER_FRAME},
    }[name]
    return create("fusion", name, **common, **extra).eval()


def inputs(frames: int, dim: int, batch: int):
    import torch

    from vqa_components.interfaces import TextFeatures, VideoFeatures

    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(batch, frames, TOKENS_PER_FRAME, dim, generator=g)
    video = VideoFeatures(tokens=tokens, cls=tokens.mean(2), grid=(4, 4))
    words = torch.randn(batch, TEXT_LEN, dim, generator=g)
    text = TextFeatures(tokens=words, cls=words.mean(1), mask=torch.ones(batch, TEXT_LEN, dtype=torch.bool))
    return video, text


def gmacs(fusion, video, text) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    one = (video.select([0]), text.__class__(tokens=text.tokens[:1], cls=text.cls[:1], mask=text.mask[:1]))
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_steps._attention_formulas())
        with torch.no_grad(), counter:
            fusion(*one)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return counter.get_total_flops() / 2 / 1e9


def plot(result: dict, path: Path) -> None:
    with _report.panels(2, 5.2, 3.8, _report.plot_title(result), path) as (ax_macs, ax_time):
        for name in result["fusions"]:
            rows = result["sizes"]
            x = [r["video_tokens"] for r in rows]
            ax_macs.plot(x, [r["fusions"][name]["gmacs"] for r in rows], "-o", label=name, ms=3)
            ax_time.plot(x, [r["fusions"][name]["ms"] for r in rows], "-o", label=name, ms=3)
        ax_macs.set(xlabel="video tokens", ylabel="GMACs per sample (forward)", xscale="log", yscale="log")
        ax_time.set(xlabel="video tokens", ylabel=f"ms per forward, batch {result['batch']}", xscale="log",
                    yscale="log")
        for ax in (ax_macs, ax_time):
            ax.grid(True, which="both", alpha=0.3)
        ax_macs.legend(fontsize=7)


def markdown(result: dict) -> str:
    sizes = result["sizes"]
    head = ["fusion", *(f"{r['video_tokens']} tokens" for r in sizes),
            f"growth {sizes[0]['video_tokens']} -> {sizes[-1]['video_tokens']}"]
    macs_rows, time_rows = [], []
    for name in result["fusions"]:
        g = result["growth"][name]
        macs_rows.append([name, *(f"{r['fusions'][name]['gmacs']:.3g} ({r['fusions'][name]['macs_vs_cross_attention']:.2f}x)"
                                  for r in sizes), f"{g['gmacs']:.1f}x"])
        time_rows.append([name, *(f"{r['fusions'][name]['ms']:.2f} ({r['fusions'][name]['time_vs_cross_attention']:.2f}x)"
                                  for r in sizes), f"{g['time']:.1f}x"])
    cfg = result["config"]
    return "\n".join([
        (f"Width {cfg['dim']}, 2 layers, 4 heads; {TOKENS_PER_FRAME} tokens a frame, a {TEXT_LEN}-token question; "
        f"forward of a batch of {result['batch']}, median of {cfg['repeats']} interleaved repetitions. "
        "In brackets: against `cross_attention` at the same size."),
        "",
        "GMACs per sample (forward):",
        "",
        _report.md_table(head, macs_rows),
        "",
        "Wall time, ms per forward:",
        "",
        _report.md_table(head, time_rows),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = _report.parser(__doc__)
    p.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.batch, args.repeats = [4, 16, 32], 4, 3
    import torch

    fusions = {name: build(name, args.dim, max(args.frames)) for name in FUSIONS}
    result: dict = {**_report.machine(), "benchmark": NAME, "quick": args.quick, "batch": args.batch,
                    "config": {"dim": args.dim, "frames": args.frames, "repeats": args.repeats,
                               "tokens_per_frame": TOKENS_PER_FRAME, "text_tokens": TEXT_LEN},
                    "fusions": list(FUSIONS), "sizes": []}
    for frames in args.frames:
        video, text = inputs(frames, args.dim, args.batch)
        times: dict[str, list[float]] = {n: [] for n in fusions}
        with torch.no_grad():
            for fusion in fusions.values():
                fusion(video, text)  # warm-up
            for _ in range(args.repeats):
                for name, fusion in fusions.items():
                    start = time.perf_counter()
                    fusion(video, text)
                    times[name].append(time.perf_counter() - start)
        row = {"frames": frames, "video_tokens": frames * TOKENS_PER_FRAME, "fusions": {}}
        for name, fusion in fusions.items():
            row["fusions"][name] = {"gmacs": gmacs(fusion, video, text),
                                    "ms": 1000 * statistics.median(times[name])}
        ref = row["fusions"]["cross_attention"]
        for entry in row["fusions"].values():
            entry["macs_vs_cross_attention"] = entry["gmacs"] / ref["gmacs"]
            entry["time_vs_cross_attention"] = entry["ms"] / ref["ms"]
        result["sizes"].append(row)
        print(f"{row['video_tokens']:5d} video tokens: " + "  ".join(
            f"{n} {e['gmacs']:.3f} GMACs {e['ms']:.1f} ms" for n, e in row["fusions"].items()), flush=True)
    first, last = result["sizes"][0], result["sizes"][-1]
    result["growth"] = {
        name: {"tokens": last["video_tokens"] / first["video_tokens"],
               "gmacs": last["fusions"][name]["gmacs"] / first["fusions"][name]["gmacs"],
               "time": last["fusions"][name]["ms"] / first["fusions"][name]["ms"]}
        for name in FUSIONS
    }
    return _report.finish(result, args.results, NAME, plot)


if __name__ == "__main__":
    sys.exit(main())
