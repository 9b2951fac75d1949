"""Training speed of the quickstart and of the tiny VideoDistill full model: fp32 against bf16-mixed, and
DDP with 2 processes against 1, all through the ``vqa`` command in one run on one machine.

For each (recipe, precision, processes) it runs ``vqa fit`` for ``--steps`` optimizer steps
(no validation) with a callback that times the steps after ``--warmup`` (``_step_timer.py``), and
reports training samples per second; the ratios (bf16 / fp32, 2 processes / 1) compare figures
of the same run. ``--profile`` adds the operators that take the time in one fp32 and one bf16
training step of each recipe (``torch.profiler``, in this process). Test accuracy after the full
recipe comes from the seed sweeps, whose results (``experiments/results/<folder>/sweep.json``) are
read and quoted with their source::

    vqa sweep sweeps/quickstart --out experiments/results/quickstart
    vqa sweep sweeps/quickstart --only quickstart --name quickstart_bf16 --out experiments/results/quickstart_bf16 \
        -- --trainer.precision=bf16-mixed
    vqa sweep sweeps/videodistill_table4 --only f_full --out experiments/results/videodistill_tiny_v3
    vqa sweep sweeps/videodistill_table4 --only f_full --name videodistill_table4_bf16 \
        --out experiments/results/videodistill_tiny_v3_bf16 -- --trainer.precision=bf16-mixed

Writes ``benchmarks/results/training_speed.json``, a PNG beside it and (into the committed results
folder, not with ``--quick``) the table ``docs/results/training_speed_table.md``::

    python -m benchmarks training_speed                # about 10 min on 2 idle CPU cores
    python -m benchmarks training_speed --quick        # the quickstart, 3 steps per configuration (~2 min)
    python -m benchmarks training_speed --table-only   # the table again, from the results file
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from benchmarks import _report
except ImportError:
    import _report

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "quickstart": "recipes/quickstart.yaml",
    "videodistill_tiny_f_full": "recipes/videodistill/tiny/f_full.yaml",
}
#: where the accuracy after the full recipe comes from: (a sweep's output folder, the run's name in its sweep file)
ACCURACY = {
    ("quickstart", "32-true"): ("experiments/results/quickstart", "quickstart"),
    ("quickstart", "bf16-mixed"): ("experiments/results/quickstart_bf16", "quickstart"),
    ("videodistill_tiny_f_full", "32-true"): ("experiments/results/videodistill_tiny_v3", "f_full"),
    ("videodistill_tiny_f_full", "bf16-mixed"): ("experiments/results/videodistill_tiny_v3_bf16", "f_full"),
}
CONFIGS = [("32-true", 1), ("bf16-mixed", 1), ("32-true", 2)]


def vqa_command() -> str:
    exe = Path(sys.executable).with_name("vqa")
    if not exe.is_file():
        raise SystemExit(f"the vqa command is not installed next to {sys.executable}: pip install -e .")
    return str(exe)


def time_training(recipe: str, precision: str, devices: int, steps: int, warmup: int, out: Path) -> dict:
    timing = out / f"{Path(recipe).stem}_{precision}_{devices}.json"
    args = [vqa_command(), "fit", "--config", str(ROOT / recipe), f"--trainer.default_root_dir={out}/run",
            f"--trainer.precision={precision}", f"--trainer.devices={devices}", "--trainer.accelerator=cpu",
            f"--trainer.max_steps={steps + warmup}", "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false", "--trainer.logger=false", "--checkpoint.save_last=false",
            "--trainer.enable_checkpointing=false",
            f"--trainer.callbacks+={{class_path: _step_timer.StepTimer, init_args: {{out: {timing}, warmup: {warmup}}}}}"]
    if devices > 1:
        args.append("--trainer.strategy=ddp")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]))
    start = time.time()
    res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if res.returncode != 0 or not timing.is_file():
        raise SystemExit(f"{' '.join(args[:4])} failed:\n{res.stderr[-3000:]}")
    t = json.loads(timing.read_text())
    row = {"precision": precision, "processes": devices, "steps": t["steps"], "seconds": round(t["seconds"], 3),
           "samples_per_s": round(t["samples"] / t["seconds"], 2), "wall_s_with_startup": round(time.time() - start, 1)}
    print(f"{Path(recipe).stem:12s} {precision:10s} x{devices}: {row['samples_per_s']:8.2f} samples/s", flush=True)
    return row


def profile_step(recipe: str, top: int = 6) -> dict:
    """The operators that take the time in one training step, fp32 and bf16 autocast (this process)."""
    import torch

    from vqa_components.cli import release, run_cli

    cli = run_cli(["--config", str(ROOT / recipe), "--data.num_workers=0"], run=False)
    model, dm = cli.model, cli.datamodule
    release(cli)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model.train()
    model.log = lambda *a, **k: None  # no trainer here
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True)
    report = {}
    for name, bf16 in (("32-true", False), ("bf16-mixed", True)):
        def step(bf16: bool = bf16) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model.training_step(batch, 0)
            loss.backward()
            opt.step()
            opt.zero_grad()

        step()
        with torch.profiler.profile() as prof:
            start = time.perf_counter()
            step()
            seconds = time.perf_counter() - start
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ops) or 1
        report[name] = {"step_s": round(seconds, 3), "top_ops": [
            {"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "ms": round(e.self_cpu_time_total / 1e3, 1)}
            for e in ops[:top]]}
    return report


def accuracy(recipe_key: str, precision: str) -> dict | None:
    source = ACCURACY.get((recipe_key, precision))
    file = ROOT / source[0] / "sweep.json" if source else None
    if file is None or not file.is_file():
        return None
    runs = [r for r in json.loads(file.read_text())["records"] if r["run"] == source[1] and r["returncode"] == 0
            and (r.get("metrics") or {}).get("test/acc") is not None]
    if not runs:
        return None
    accs = [r["metrics"]["test/acc"] for r in runs]
    return {"test_acc_mean": round(sum(accs) / len(accs), 4), "seeds": [r["seed"] for r in runs],
            "source": f"{source[0]}/sweep.json", "generator_version": runs[0].get("benchmark_version")}


def plot(result: dict, path: Path) -> None:
    names = list(result["recipes"])
    title = f"{result['cpu']} ({result['cpu_count']} cores), {result['date'][:10]}"
    with _report.panels(len(names), 5, 3.4, title, path) as axes:
        for ax, name in zip(axes, names):
            rows = result["recipes"][name]["speed"]
            labels = [f"{r['precision']}\n{r['processes']} proc." for r in rows]
            ax.bar(labels, [r["samples_per_s"] for r in rows], color=["#4c72b0", "#dd8452", "#55a868"][: len(rows)])
            ax.set_title(name)
            ax.set_ylabel("training samples / s")


def table(result: dict) -> str:
    """The markdown table that ``docs/results/training_speed.md`` quotes."""
    comment = _report.provenance("training_speed.py", result, f"flags {' '.join(result['cpu_flags'])}, torch {result['torch']}")
    header = ("| recipe | fp32, 1 process | bf16-mixed, 1 process | fp32, DDP 2 processes | bf16 / fp32 | DDP 2 / 1 "
              "| test acc. fp32 | test acc. bf16 |")
    lines = [comment, header, "|---|---|---|---|---|---|---|---|"]
    for name, entry in result["recipes"].items():
        speed = {(r["precision"], r["processes"]): r["samples_per_s"] for r in entry["speed"]}
        acc = [entry["accuracy"].get(p) for p in ("32-true", "bf16-mixed")]
        cells = [f"{speed[c]:.1f}/s" for c in (("32-true", 1), ("bf16-mixed", 1), ("32-true", 2))]
        cells += [f"{entry['bf16_over_fp32']:.2f}×", f"{entry['ddp2_over_1']:.2f}×"]
        cells += [f"{100 * a['test_acc_mean']:.1f} ({len(a['seeds'])} seed{'s' if len(a['seeds']) > 1 else ''})"
                  if a else "not run" for a in acc]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    """The block of docs/benchmarks.md: the table, its provenance line given by the page."""
    return "\n".join(table(result).splitlines()[1:]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = _report.parser(__doc__)
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--table", type=Path, default=ROOT / "docs" / "results" / "training_speed_table.md")
    parser.add_argument("--table-only", action="store_true", help="rewrite the table (fresh accuracies) only")
    args = parser.parse_args(argv)
    args.out = args.results / "training_speed.json"
    if args.quick:
        args.recipes, args.steps, args.warmup, args.profile = ["quickstart"], 3, 2, False
    write_table = _report.default_results(args.results) and not args.quick
    if args.table_only:
        result = json.loads(args.out.read_text())
        for key, entry in result["recipes"].items():
            entry["accuracy"] = {p: accuracy(key, p) for p in ("32-true", "bf16-mixed")}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        args.table.write_text(table(result))
        return 0
    result: dict = {
        **_report.machine(), "quick": args.quick,
        "steps": args.steps, "warmup": args.warmup, "recipes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.recipes:
            recipe = RECIPES[key]
            rows = [time_training(recipe, p, d, args.steps, args.warmup, Path(tmp)) for p, d in CONFIGS]
            speed = {(r["precision"], r["processes"]): r["samples_per_s"] for r in rows}
            entry = {
                "recipe": recipe, "speed": rows,
                "bf16_over_fp32": round(speed[("bf16-mixed", 1)] / speed[("32-true", 1)], 3),
                "ddp2_over_1": round(speed[("32-true", 2)] / speed[("32-true", 1)], 3),
                "accuracy": {p: accuracy(key, p) for p in ("32-true", "bf16-mixed")},
            }
            if args.profile:
                entry["profile"] = profile_step(recipe)
            result["recipes"][key] = entry
    _report.write_json(result, args.out)
    plot(result, args.out.with_suffix(".png"))
    if write_table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table(result))
    print(f"written {args.out}, {args.out.with_suffix('.png')}" + (f" and {args.table}" if write_table else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
