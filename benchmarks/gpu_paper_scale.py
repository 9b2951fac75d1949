"""On a GPU: paper-scale training step time, peak memory and the fraction of the GPU's bf16 peak, one
recipe of each paper (the MSRVTT-QA fine-tuning recipes), in one run.

Each recipe is built as written (every width, frame count and size, its own precision, its own batch
size, halved until it fits), its named pretrained weights read from a Hugging Face cache: by default a
temporary one that this script fills with random weights of the right architectures
(``tests/helpers.py``'s ``paper_hub_cache``, as the slow tests do: timing needs the shapes, not the
values; nothing is downloaded), or the cache given with ``--hub-cache`` (``HF_HUB_CACHE``).

* **step**: forward, loss, backward, clipping and the optimizer's step on one batch in GPU memory
  (``_steps.py``; random pixels at the recipe's frame count and size, ``example_batch``), median of
  ``--steps`` after ``--warmup``, with ``torch.cuda.synchronize``;
* **peak memory**: ``torch.cuda.max_memory_allocated`` over the timed steps;
* **FLOPs of a step**: ``vqa profile``'s forward MACs of one sample x batch x 2 x 3, and the FLOPs that
  ``torch.utils.flop_counter`` counts in one real step (frozen parts have no weight gradients, so the
  estimate overstates VideoDistill's frozen CLIP);
* **bf16 peak**: the best bf16 ``torch.matmul`` of 8192 x 8192 matrices measured in the same run, and
  the datasheet's dense bf16 figure where the GPU's name is known.

Without CUDA it says so and exits 0, leaving the results file as it is (``"last_run_on_gpu":
"never"`` until a GPU run writes it). Writes ``benchmarks/results/gpu_paper_scale.json`` and
``gpu_paper_scale.png``::

    python -m benchmarks gpu_paper_scale            # on a GPU machine: ~5 min
    python -m benchmarks gpu_paper_scale --quick    # 2 steps per recipe
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

try:
    from benchmarks import _report, _steps
except ImportError:
    import _report
    import _steps

NAME = "gpu_paper_scale"
ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "videodistill": "recipes/videodistill/finetune_msrvtt_qa.yaml",
    "cotok": "recipes/cotok/finetune_msrvtt_qa.yaml",
    "evilm": "recipes/evilm/finetune_msrvtt_qa.yaml",
}
#: dense bf16 tensor-core peak from the datasheets, TFLOP/s (no sparsity), by a piece of the device name
DATASHEET_BF16 = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                  "H100 NVL": 835.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
NEVER = {"benchmark": NAME, "last_run_on_gpu": "never", "recipes": {},
         "command": "python -m benchmarks gpu_paper_scale"}


def datasheet_peak(name: str) -> float | None:
    return next((v for k, v in DATASHEET_BF16.items() if k in name), None)


def bf16_peak(n: int = 8192, reps: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 5)
    return 2 * n**3 / best / 1e12


def use_hub_cache(folder: Path) -> None:
    """Point transformers, timm and open_clip at ``folder``, offline (``helpers.use_hub_cache`` without pytest)."""
    from huggingface_hub import constants

    os.environ["HF_HUB_CACHE"], os.environ["HF_HUB_OFFLINE"] = str(folder), "1"
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(folder), True


def measure(family: str, recipe: str, steps: int, warmup: int, peak_tflops: float, sheet: float | None,
            device: str = "cuda", batch_size: int | None = None) -> dict:
    import torch

    cuda = device.startswith("cuda")
    model, dm = _steps.build(recipe, "--trainer.accelerator=cpu")
    model.to(device)
    precision = str((_steps.recipe_yaml(recipe).get("trainer") or {}).get("precision", "bf16-mixed"))
    profiled = _steps.profiler_macs(model, _OnDevice(dm, device))
    bs = batch_size or int(dm.batch_size)
    notes = []
    while True:
        try:
            batch = _steps.to_device(example_batch(dm, bs), device)
            stepper = _steps.Stepper(model, recipe, precision, device=device)
            stepper.step(batch)
            break
        except torch.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            if bs == 1:
                raise
            notes.append(f"batch {bs} did not fit in GPU memory")
            bs //= 2
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timing = _steps.time_steps(stepper, batch, steps, warmup, sync=torch.cuda.synchronize if cuda else lambda: None)
    peak_mem = torch.cuda.max_memory_allocated() if cuda else 0
    counted = _steps.counted_flops(stepper, batch)
    s = timing["median_s"]
    estimate = 6 * profiled["macs"] * bs if profiled.get("macs") else None
    row = {"recipe": recipe, "precision": precision, "batch_size": bs, "recipe_batch_size": int(dm.batch_size),
           "step_median_s": round(s, 4), "samples_per_s": round(bs / s, 1),
           "peak_memory_gib": round(peak_mem / 2**30, 2), "profiler": profiled,
           "flops_estimate": estimate, "flops_counted": counted["flops"],
           "tflops_counted": round(counted["flops"] / s / 1e12, 1),
           "share_of_measured_peak_counted": round(counted["flops"] / s / 1e12 / peak_tflops, 4), "notes": notes}
    if estimate:
        row["tflops_estimate"] = round(estimate / s / 1e12, 1)
        row["share_of_measured_peak_estimate"] = round(row["tflops_estimate"] / peak_tflops, 4)
        if sheet:
            row["share_of_datasheet_peak_estimate"] = round(row["tflops_estimate"] / sheet, 4)
    print(f"{family:12s} batch {bs:4d}: step {1000 * s:8.1f} ms, {row['samples_per_s']:7.1f} samples/s, peak memory "
          f"{row['peak_memory_gib']:6.1f} GiB, {row['tflops_counted']:6.1f} TFLOP/s counted "
          f"({100 * row['share_of_measured_peak_counted']:.1f} % of the measured bf16 peak)", flush=True)
    del model, stepper, batch
    if cuda:
        torch.cuda.empty_cache()
    return row


def example_batch(dm, batch_size: int) -> dict:
    """``dm.example_batch`` (random pixels at the recipe's sizes, plausible questions) with what the training
    objectives read besides: an answer's text (a decoder head's targets), ids and indices."""
    import torch

    batch = dm.example_batch(batch_size=batch_size)
    batch.setdefault("answer", ["yes"] * batch_size)
    batch.setdefault("video_id", [f"example{i}" for i in range(batch_size)])
    batch.setdefault("index", torch.arange(batch_size))
    batch.setdefault("num_skipped", 0)
    batch.setdefault("skipped", [])
    return batch


class _OnDevice:
    """A data module whose ``example_batch`` lives on the GPU (what the profiler's fake forward needs)."""

    def __init__(self, dm, device: str) -> None:
        self.dm, self.device = dm, device

    def example_batch(self, batch_size: int = 1):
        return _steps.to_device(self.dm.example_batch(batch_size=batch_size), self.device)


def describe(result: dict) -> str:
    if result.get("last_run_on_gpu", "never") == "never":
        return "Last run on a GPU: **never** (no GPU was lent to the sessions that wrote this page)."
    return f"Last run on a GPU: {result['last_run_on_gpu']}. " + _report.describe(result)


def markdown(result: dict) -> str:
    if not result.get("recipes"):
        return (f"Not measured yet. On a machine with CUDA, one command: `{result.get('command', NEVER['command'])}` "
                "(about 5 minutes; random weights of the papers' architectures, nothing downloaded).\n")
    sheet = result.get("datasheet_bf16_tflops")
    rows = []
    for family, r in result["recipes"].items():
        rows.append([family, f"`{r['recipe']}`", r["precision"], str(r["batch_size"]), f"{1000 * r['step_median_s']:.0f} ms",
                     f"{r['samples_per_s']:.0f}", f"{r['peak_memory_gib']:.1f} GiB",
                     f"{r.get('tflops_estimate', float('nan')):.0f} / {r['tflops_counted']:.0f}",
                     (f"{100 * r.get('share_of_measured_peak_estimate', float('nan')):.0f} % / "
                     f"{100 * r['share_of_measured_peak_counted']:.0f} %"),
                     f"{100 * r['share_of_datasheet_peak_estimate']:.0f} %" if "share_of_datasheet_peak_estimate" in r else "-"])
    return "\n".join([
        f"{result['gpu']}: bf16 matmul peak measured in the run {result['bf16_peak_tflops']:.0f} TFLOP/s"
        + (f" (datasheet {sheet:.0f})" if sheet else "") + ". TFLOP/s: estimate (`vqa profile` MACs x batch x 6) / "
        "counted (`flop_counter` over one step).",
        "",
        _report.md_table(["paper", "recipe", "precision", "batch", "step", "samples/s", "peak memory",
                          "TFLOP/s", "of the measured bf16 peak", "estimate, of the datasheet peak"], rows),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = _report.parser(__doc__)
    p.add_argument("--papers", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, help="instead of the recipe's (halved until it fits in either case)")
    p.add_argument("--device", default="cuda", help="cpu: a dry run of the script's code path (tiny steps, "
                   "figures not comparable; the results file is not the GPU's)")
    p.add_argument("--hub-cache", type=Path, help="a Hugging Face cache holding the papers' weights (default: "
                   "a temporary one filled with random weights of their architectures)")
    args = p.parse_args(argv)
    out = args.results / f"{NAME}.json"
    import torch

    dry = not args.device.startswith("cuda")
    if not dry and not torch.cuda.is_available():
        print(f"{NAME}: skipped, no CUDA device here (torch {torch.__version__}); run it on a GPU machine: "
              f"python -m benchmarks {NAME}")
        if _report.read_json(out) is None:
            _report.write_json(NEVER, out)
        return 0
    if args.quick:
        args.steps, args.warmup = 2, 1
    sys.path.insert(0, str(ROOT / "tests"))  # helpers.paper_hub_cache: random weights in the hub's layout
    if dry and _report.default_results(args.results):
        p.error("--device cpu is a dry run: give --results DIR (the committed file is the GPU's)")
    gpu = "none (dry run on the CPU)" if dry else torch.cuda.get_device_name(0)
    peak = 1.0 if dry else bf16_peak()
    result: dict = {**_report.machine(), "benchmark": NAME, "quick": args.quick, "gpu": gpu,
                    "cuda": torch.version.cuda,
                    "gpu_memory_gib": None if dry else round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    "last_run_on_gpu": "never" if dry else f"{datetime.now(timezone.utc).date().isoformat()} on {gpu}",
                    "bf16_peak_tflops": round(peak, 1), "datasheet_bf16_tflops": datasheet_peak(gpu),
                    "steps": args.steps, "warmup": args.warmup, "recipes": {}}
    print(f"{gpu}: bf16 matmul {peak:.0f} TFLOP/s (datasheet {result['datasheet_bf16_tflops']})", flush=True)
    with tempfile.TemporaryDirectory(prefix="vqa_gpu_bench_") as tmp:
        for family in args.papers:
            if args.hub_cache:
                use_hub_cache(args.hub_cache)
            else:
                from helpers import paper_hub_cache

                use_hub_cache(paper_hub_cache(Path(tmp) / family, family))
            try:
                result["recipes"][family] = measure(family, RECIPES[family], args.steps, args.warmup, peak,
                                                    result["datasheet_bf16_tflops"], args.device, args.batch_size)
            except Exception as exc:  # noqa: BLE001  (one recipe failing must not lose the others' figures)
                print(f"{family}: failed: {type(exc).__name__}: {exc}", flush=True)
                result.setdefault("failed", {})[family] = f"{type(exc).__name__}: {str(exc)[:500]}"
    _report.write_json(result, out)
    plot(result, out.with_suffix(".png"))
    print(f"written {out} and {out.with_suffix('.png')}")
    return 0


def plot(result: dict, path: Path) -> None:
    names = list(result["recipes"])
    with _report.panels(2, 4.5, 3.5, f"{result['gpu']}, {result['date'][:10]}", path) as (ax_time, ax_share):
        ax_time.bar(names, [1000 * r["step_median_s"] for r in result["recipes"].values()])
        ax_time.set_ylabel("ms per training step")
        ax_share.bar(names, [100 * r["share_of_measured_peak_counted"] for r in result["recipes"].values()])
        ax_share.set_ylabel("% of the measured bf16 matmul peak")


if __name__ == "__main__":
    sys.exit(main())
