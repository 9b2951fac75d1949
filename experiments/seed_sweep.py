"""Train and test a set of recipes on synthetic_vqa over several seeds.

Runs ``vqa fit`` then ``vqa test --ckpt_path best`` for every recipe of a set and every seed,
several runs at a time, then writes the set's results file (every run's test metrics and wall
time) and its table (mean ± std over seeds, overall and per family), which the results docs quote:

* ``--set videodistill_tiny``: ``recipes/videodistill/tiny/``, into
  ``experiments/results/videodistill_tiny.json`` and ``docs/results/videodistill_table.md``;
* ``--set quickstart``: ``recipes/quickstart*.yaml``, into ``experiments/results/quickstart.json``
  and ``docs/results/quickstart_table.md``.
* ``--set cotok_tiny``: ``recipes/cotok/tiny/``, into ``experiments/results/cotok_tiny.json`` and
  ``docs/results/cotok_table.md``.

    python experiments/seed_sweep.py --set videodistill_tiny --seeds 0 1 2 --parallel 7 [--accelerator gpu]
    python experiments/seed_sweep.py --set quickstart --seeds 0 1 2
    python experiments/seed_sweep.py --set cotok_tiny --seeds 0 1 2
    python experiments/seed_sweep.py --set quickstart --seeds 0 --name bf16 -- --trainer.precision=bf16-mixed

Extra ``vqa`` arguments (after ``--``) are recorded with each run; give such a variant its own
``--name`` so that its results file and table sit beside the set's (``quickstart_bf16.json``).

A sweep can be split over several invocations (or machines): runs already in the results file
whose recipe file (sha256), seed, extra arguments and ``synthetic_vqa`` generator version are
unchanged are kept and not run again; ``--fresh`` discards them. Every run the sweep starts fits
with ``--overwrite``: what its folder holds is from a crashed or discarded run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from vqa_components.data.synthetic import GENERATOR_VERSION

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("spatial", "motion", "counting", "needle")
DEVICE = "cpu"  # set in main(): the GPU name when the runs use one
VIDEODISTILL_LABELS = {
    "question_only": "question only (blind video)",
    "a_baseline": "(a) baseline: uniform 8 frames + 3-layer transformer",
    "b_uniform_sampling": "(b) uniform sampling + vision refinement",
    "c_soft_sampling": "(c) soft sampling + vision refinement",
    "d_no_refinement": "(d) top-K sampling + 3-layer transformer",
    "e_cross_attention": "(e) cross-attention instead of LA-Gate",
    "f_full": "(f) full: top-K sampling + vision refinement",
}
COTOK_LABELS = {
    "question_only": "question only (blind streams)",
    "three_streams": "3 streams, K = 8, I = 3, generating decoder",
    "streams_1": "1 stream: 4 x 64² (full resolution)",
    "streams_1_fast": "1 stream: 16 x 24² (high frame rate)",
    "streams_2": "2 streams: 16 x 24² + 4 x 64²",
    "iterations_1": "3 streams, I = 1 iteration",
    "iterations_2": "3 streams, I = 2 iterations",
    "classifier_head": "3 streams, classifier head instead of the decoder",
    "concat": "concatenation baseline: all streams' tokens, 3 layers",
}
#: name -> (recipe folder, {recipe stem: label}, results file, table file)
SETS = {
    "videodistill_tiny": (ROOT / "recipes" / "videodistill" / "tiny", VIDEODISTILL_LABELS,
                          "experiments/results/videodistill_tiny.json", "docs/results/videodistill_table.md"),
    "cotok_tiny": (ROOT / "recipes" / "cotok" / "tiny", COTOK_LABELS,
                   "experiments/results/cotok_tiny.json", "docs/results/cotok_table.md"),
    "quickstart": (ROOT / "recipes", {"quickstart": "quickstart", "quickstart_question_only": "question only (blind video)"},
                   "experiments/results/quickstart.json", "docs/results/quickstart_table.md"),
}


def git_commit() -> str:
    """The library's commit, recorded with every run (``unknown`` outside a git checkout)."""
    res = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


def recipe_digest(recipe: Path) -> str:
    return hashlib.sha256(recipe.read_bytes()).hexdigest()[:16]


def run_one(recipe: Path, seed: int, out_root: Path, extra: list[str], accelerator: str) -> dict:
    name = recipe.stem
    digest = recipe_digest(recipe)
    root = out_root / name / f"seed{seed}"
    common = ["--config", str(recipe), f"--seed_everything={seed}", f"--trainer.default_root_dir={root}", *extra,
              f"--trainer.accelerator={accelerator}"]
    cmd = [sys.executable, "-m", "vqa_components.cli"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.time()
    log = (out_root / f"{name}_seed{seed}.log").open("w")
    # a run the sweep starts is not in the results file: files in its folder are a crashed or discarded run's
    fit = subprocess.run([*cmd, "fit", *common, "--overwrite", "--trainer.enable_progress_bar=false"],
                         stdout=log, stderr=log, env=env)
    test = subprocess.run([*cmd, "test", *common, "--ckpt_path", "best", "--trainer.enable_progress_bar=false"],
                          stdout=log, stderr=log, env=env) if fit.returncode == 0 else fit
    wall = time.time() - start
    metrics_file = root / "test_metrics.json"
    metrics = json.loads(metrics_file.read_text()) if test.returncode == 0 and metrics_file.is_file() else None
    print(f"{name} seed {seed}: rc={test.returncode} {wall:.0f}s acc={metrics and metrics.get('test/acc')}", flush=True)
    return {"recipe": name, "seed": seed, "recipe_sha256": digest, "extra": extra, "returncode": test.returncode,
            "wall_s": wall, "device": DEVICE, "commit": git_commit(), "generator_version": GENERATOR_VERSION,
            "metrics": metrics}


def mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± sample std`` of ``values * scale`` (percent by default) with ``digits`` decimals."""
    if not values:
        return "n/a"
    m = scale * statistics.mean(values)
    if len(values) < 2:  # one run has no spread to show
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def table(runs: list[dict], labels: dict[str, str]) -> str:
    lines = [
        "| model | overall | " + " | ".join(FAMILIES) + " | seeds |",
        "|---|---|" + "---|" * len(FAMILIES) + "---|",
    ]
    for name in labels:
        ok = [r["metrics"] for r in runs if r["recipe"] == name and r["metrics"]]
        if not ok:
            continue
        cells = [mean_std([m["test/acc"] for m in ok])]
        cells += [mean_std([m[f"test/acc_{f}"] for m in ok if f"test/acc_{f}" in m]) for f in FAMILIES]
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + f" | {len(ok)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", choices=list(SETS), default="videodistill_tiny")
    parser.add_argument("--name", default="", help="a variant's suffix for the results and table files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="*", default=None, help="recipe stems of the set (default: all)")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--fresh", action="store_true", help="ignore the runs already in the results file")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more vqa arguments, after --")
    args = parser.parse_args()
    folder, labels, results_file, table_file = SETS[args.set]
    suffix = f"_{args.name}" if args.name else ""
    args.results = ROOT / results_file.replace(".json", f"{suffix}.json")
    args.table = ROOT / table_file.replace(".md", f"{suffix}.md")
    args.out = ROOT / "runs" / f"{args.set}{suffix}"
    recipes = args.recipes or list(labels)
    extra = [a for a in args.extra if a != "--"]  # recorded with each run; the accelerator is not
    args.out.mkdir(parents=True, exist_ok=True)
    global DEVICE
    try:
        import torch

        if torch.cuda.is_available() and args.accelerator != "cpu":
            DEVICE = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    runs: list[dict] = []
    if args.results.is_file() and not args.fresh:  # keep finished runs of unchanged recipes
        for r in json.loads(args.results.read_text()).get("runs", []):
            recipe = folder / f"{r['recipe']}.yaml"
            if r.get("metrics") and recipe.is_file() and r.get("recipe_sha256") == recipe_digest(recipe) \
                    and r.get("extra") == extra and r.get("generator_version", 1) == GENERATOR_VERSION:
                runs.append(r)
    done = {(r["recipe"], r["seed"]) for r in runs}
    jobs = [(folder / f"{name}.yaml", seed) for seed in args.seeds for name in recipes if (name, seed) not in done]
    print(f"{len(runs)} runs kept from {args.results}, {len(jobs)} to run", flush=True)
    start = time.time()
    lock = threading.Lock()

    def write() -> None:  # after every run, so that an interrupted sweep keeps what finished
        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "devices": sorted({r.get("device", "?") for r in runs}),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "parallel_runs": args.parallel,
            "total_wall_s": time.time() - start,
            "runs": sorted(runs, key=lambda r: (r["recipe"], r["seed"])),
        }
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=1) + "\n")
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(
            f"<!-- written by experiments/seed_sweep.py --set {args.set}{' --name ' + args.name if args.name else ''}"
            f" on {result['date']}, devices: {', '.join(result['devices'])}, synthetic_vqa generator version "
            f"{GENERATOR_VERSION}{', extra arguments: ' + ' '.join(extra) if extra else ''} -->\n" + table(runs, labels)
        )

    def job(recipe_seed: tuple[Path, int]) -> None:
        run = run_one(recipe_seed[0], recipe_seed[1], args.out, extra, args.accelerator)
        with lock:
            runs.append(run)
            write()

    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        list(pool.map(job, jobs))
    write()
    print(table(runs, labels))
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
