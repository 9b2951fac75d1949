"""Achieved GFLOP/s of each tiny recipe's training step against this machine's matrix-multiply peak,
measured in the same run, in fp32 and bf16.

* **Peak**: the best of several ``torch.matmul`` of square matrices (``--sizes``), ``2 n^3`` FLOPs
  each, in fp32 and in bf16, on torch's default threads, timed in this process before the recipes.
* **Step**: the recipe's model (random weights) trains on one real batch of its data (the loader is
  not part of the step), ``--steps`` steps after ``--warmup``, the median taken: forward, the
  objectives' loss, backward, gradient clipping and the optimizer's step, as ``vqa fit`` takes them,
  in fp32 (``32-true``) and in bf16 autocast (``bf16-mixed``).
* **FLOPs of a step**, two ways: the issue's estimate ``vqa profile``'s forward MACs of one sample x
  batch x 2 x 3 (forward, and a backward of twice the forward), and the FLOPs that
  ``torch.utils.flop_counter`` counts in one real step (forward and backward as they ran: frozen
  parts without weight gradients, objectives' extra passes included; element-wise work is not counted
  either way). GFLOP/s = FLOPs / median step time; the share of the peak of the same precision.

The goal (issue 22): the quickstart's fp32 step at least 20 % of the fp32 peak. When it is below,
``torch.profiler`` records where one step's time goes (``quickstart_profile`` in the results, always
written with ``--profile``). Writes ``benchmarks/results/step_flops.json`` and ``step_flops.png``::

    python -m benchmarks step_flops                     # the representative tiny recipes (~6 min on 2 cores)
    python -m benchmarks step_flops --recipes all       # every tiny recipe (~25 min)
    python -m benchmarks step_flops --quick             # quickstart and one more, few steps (~1 min)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

try:
    from benchmarks import _report, _steps
except ImportError:
    import _report
    import _steps

NAME = "step_flops"
GOAL = 0.20
PRECISIONS = ("32-true", "bf16-mixed")


def matmul_peak(sizes: list[int], reps: int, min_seconds: float) -> dict:
    """Best GFLOP/s of square ``torch.matmul`` in fp32 and bf16 (each size timed ``reps`` times, at least
    ``min_seconds`` of work per repetition)."""
    import torch

    out: dict = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        per_size = {}
        for n in sizes:
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            start = time.perf_counter()
            torch.matmul(a, b)  # warm-up, and a first estimate of the time
            inner = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
            best = float("inf")
            for _ in range(reps):
                start = time.perf_counter()
                for _ in range(inner):
                    torch.matmul(a, b)
                best = min(best, (time.perf_counter() - start) / inner)
            per_size[str(n)] = round(2 * n**3 / best / 1e9, 1)
        out[name] = {"gflops": max(per_size.values()), "by_size": per_size}
    return out


def op_profile(stepper: _steps.Stepper, batch: dict, top: int = 12) -> dict:
    """Where one training step's time goes: the operators by self CPU time (``torch.profiler``)."""
    import torch

    stepper.step(batch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        stepper.step(batch)
        seconds = time.perf_counter() - start
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1

    def kind(op: str) -> str:
        if "conv" in op:
            return "convolution"
        if op in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"):
            return "matrix product"
        if "attention" in op:
            return "attention"
        if "adam" in op.lower() or "foreach" in op:
            return "optimizer"
        if op.startswith("aten::"):
            return "element-wise, copies, norms, other aten"
        return "Python-side and autograd bookkeeping"

    kinds: dict[str, float] = {}
    for e in events:
        kinds[kind(e.key)] = kinds.get(kind(e.key), 0.0) + e.self_cpu_time_total
    return {
        "step_s": round(seconds, 4),
        "by_kind": {k: round(v / total, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3),
                     "ms": round(e.self_cpu_time_total / 1e3, 1), "calls": e.count} for e in events[:top]],
    }


def measure(recipe: str, steps: int, warmup: int, peak: dict, profile: bool) -> dict:
    model, dm = _steps.build(recipe)
    batch = _steps.first_batch(dm)
    bs = _steps.batch_size(batch)
    profiled = _steps.profiler_macs(model, dm)
    estimate = 6 * profiled["macs"] * bs if profiled.get("macs") else None
    row: dict = {"recipe": recipe, "batch_size": bs, "profiler": profiled,
                 "flops_estimate": estimate, "precisions": {}}
    for precision in PRECISIONS:
        stepper = _steps.Stepper(model, recipe, precision)
        timing = _steps.time_steps(stepper, batch, steps, warmup)
        counted = _steps.counted_flops(stepper, batch)
        unit = "fp32" if precision == "32-true" else "bf16"
        entry = {**{k: round(v, 5) if isinstance(v, float) else v for k, v in timing.items()},
                 "flops_counted": counted["flops"], "flops_counted_by_kind": counted["by_kind"]}
        s = timing["median_s"]
        # the matmul rate right after the steps: under a changing load, the peak at the moment of the steps
        near = matmul_peak([2048], reps=2, min_seconds=0.1)[unit]["gflops"]
        entry["matmul_gflops_adjacent"] = near
        entry["gflops_counted"] = round(counted["flops"] / s / 1e9, 2)
        entry["share_of_peak_counted"] = round(entry["gflops_counted"] / peak[unit]["gflops"], 4)
        if estimate:
            entry["gflops_estimate"] = round(estimate / s / 1e9, 2)
            entry["share_of_peak_estimate"] = round(entry["gflops_estimate"] / peak[unit]["gflops"], 4)
            entry["share_of_adjacent_estimate"] = round(entry["gflops_estimate"] / near, 4)
        entry["samples_per_s"] = round(bs / s, 2)
        row["precisions"][precision] = entry
        print(f"{_steps.short_name(recipe):28s} {precision:10s} step {1000 * s:7.1f} ms  "
              f"{entry.get('gflops_estimate', float('nan')):7.1f} GFLOP/s (profiler x 6)  "
              f"{entry['gflops_counted']:7.1f} GFLOP/s (counted)  "
              f"{100 * entry.get('share_of_peak_estimate', entry['share_of_peak_counted']):5.1f} % of the {unit} peak",
              flush=True)
        if profile and precision == "32-true":
            row["profile_fp32"] = op_profile(stepper, batch)
    return row


def plot(result: dict, path: Path) -> None:
    names = [_steps.short_name(r) for r in result["recipes"]]
    with _report.panels(1, max(6.0, 0.9 * len(names) + 2), 3.8, _report.plot_title(result), path) as (ax,):
        width = 0.38
        for j, (precision, unit) in enumerate((("32-true", "fp32"), ("bf16-mixed", "bf16"))):
            shares = [100 * _share(row["precisions"][precision]) for row in result["recipes"].values()]
            xs = [i + (j - 0.5) * width for i in range(len(names))]
            ax.bar(xs, shares, width, label=f"{unit} step / {unit} matmul peak "
                   f"({result['matmul_peak'][unit]['gflops']:.0f} GFLOP/s)")
        ax.axhline(100 * GOAL, color="k", lw=0.8, ls="--", label="goal for the quickstart (fp32)")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("% of the matmul peak")
        ax.legend(fontsize=7)


def _share(entry: dict) -> float:
    return entry.get("share_of_peak_estimate", entry["share_of_peak_counted"])


def markdown(result: dict) -> str:
    peak = result["matmul_peak"]
    lines = [
        (f"Matrix-multiply peak measured in the same run: **fp32 {peak['fp32']['gflops']:.0f} GFLOP/s**, "
        f"**bf16 {peak['bf16']['gflops']:.0f} GFLOP/s** (best square `torch.matmul`, sizes "
        f"{', '.join(peak['fp32']['by_size'])}; torch threads: {result.get('torch_threads')}). Achieved = FLOPs of a "
        "training step / median step time; *estimate* = `vqa profile` MACs x batch x 2 x 3, *counted* = "
        "`torch.utils.flop_counter` over one real step."),
        "",
    ]
    rows = []
    for recipe, row in result["recipes"].items():
        cells = [_steps.short_name(recipe), str(row["batch_size"])]
        for precision in PRECISIONS:
            e = row["precisions"][precision]
            est = (f"{e['gflops_estimate']:.0f} ({100 * e['share_of_peak_estimate']:.0f} %)"
                   if "gflops_estimate" in e else "no forward")
            cells += [f"{1000 * e['median_s']:.0f} ms", est,
                      f"{e['gflops_counted']:.0f} ({100 * e['share_of_peak_counted']:.0f} %)"]
        rows.append(cells)
    lines.append(_report.md_table(
        ["recipe", "batch", "fp32 step", "fp32 GFLOP/s, estimate (% of peak)", "fp32 GFLOP/s, counted",
         "bf16 step", "bf16 GFLOP/s, estimate (% of peak)", "bf16 GFLOP/s, counted"], rows))
    qs = result["recipes"].get("recipes/quickstart.yaml")
    if qs:
        share = qs["precisions"]["32-true"].get("share_of_peak_estimate")
        verdict = "met" if share is not None and share >= GOAL else "**not met**"
        near = qs["precisions"]["32-true"]
        lines += ["", (f"Goal: the quickstart's fp32 step at least {100 * GOAL:.0f} % of the fp32 matmul peak: "
                       f"{100 * share:.0f} %, {verdict} ({100 * near['share_of_adjacent_estimate']:.0f} % of the "
                       f"{near['matmul_gflops_adjacent']:.0f} GFLOP/s that a matmul reached right after the steps: "
                       "the load of the machine can change within a run).")]
        prof = qs.get("profile_fp32")
        if prof:
            kinds = ", ".join(f"{k} {100 * v:.0f} %" for k, v in list(prof["by_kind"].items())[:5])
            ops = ", ".join(f"`{o['op']}` {100 * o['share']:.0f} %" for o in prof["top_ops"][:6])
            lines += ["", (f"Where the quickstart's fp32 step goes (`torch.profiler`, self CPU time, one step of "
                      f"{1000 * prof['step_s']:.0f} ms): {kinds}. Top operators: {ops}.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = _report.parser(__doc__)
    p.add_argument("--recipes", nargs="+",
                   help="recipe paths, 'representative' (the default: one of each tiny model; with --quick, two) or 'all'")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096], help="matmul sizes of the peak")
    p.add_argument("--profile", action="store_true", help="profile the quickstart's step even if it meets the goal")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.sizes = 3, 1, [1024, 2048]
        args.recipes = args.recipes or ["recipes/quickstart.yaml", "recipes/videodistill/tiny/f_full.yaml"]
    recipes = _steps.pick_recipes(args.recipes or ["representative"])
    peak = matmul_peak(args.sizes, reps=3 if args.quick else 5, min_seconds=0.2 if args.quick else 0.5)
    print(f"matmul peak: fp32 {peak['fp32']['gflops']:.0f} GFLOP/s, bf16 {peak['bf16']['gflops']:.0f} GFLOP/s",
          flush=True)
    result: dict = {**_report.machine(), "benchmark": NAME, "quick": args.quick, "steps": args.steps,
                    "warmup": args.warmup, "matmul_peak": peak, "goal": f"quickstart fp32 >= {GOAL:.0%} of the fp32 peak",
                    "recipes": {}}
    for recipe in recipes:
        profile = args.profile or recipe == "recipes/quickstart.yaml"
        result["recipes"][recipe] = measure(recipe, args.steps, args.warmup, peak, profile)
    result["peak_after"] = matmul_peak(args.sizes[:1], reps=2, min_seconds=0.2)  # did the load change?
    qs = result["recipes"].get("recipes/quickstart.yaml")
    if qs:
        result["goal_met"] = qs["precisions"]["32-true"].get("share_of_peak_estimate", 0) >= GOAL
    return _report.finish(result, args.results, NAME, plot)


if __name__ == "__main__":
    sys.exit(main())
