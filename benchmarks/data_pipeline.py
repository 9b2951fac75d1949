"""Data pipeline throughput of the tiny recipes: clips per second out of the training loader, against
a bare decode of the same frames and against the recipe's training step rate, in one run.

For each recipe (``--recipes``: the representative tiny recipes by default, ``all`` for every one):

* **loader**: the recipe's training ``DataLoader`` as ``vqa fit`` builds it (``VideoQADataModule``:
  decoding, resizing and cropping, collation), in its first epoch at the DataModule's default
  ``num_workers`` (2) and at the recipe's own value where it differs, and at the recipe's own value
  after one whole epoch (a split that fits ``data.keep_decoded_mb`` is then read from memory); clips
  per second over ``--batches`` batches after the first (worker start-up excluded);
* **bare decode**: ``read_video_streams(path, streams, dtype=uint8)`` of the same clips at the same
  frame counts and sizes, in this process: what decoding alone costs, no workers, no collation;
* **training step rate**: samples per second of the recipe's fp32 training step on one batch held in
  memory (``_steps.py``: forward, backward, clipping, optimizer);
* **fed by the loader**: the same steps drawing their batches from the loader, at both worker counts
  (a short ``vqa fit`` without Lightning): where workers and training share the cores, the cost of
  loading shows as the gap to the step rate;
* **one core each**: the first epoch again with the step on 1 torch thread and the loader on 1 worker,
  so that each has a core of the 2 (what a machine with cores to spare gives them): the step rate,
  the loader alone and the steps fed by it.

Goal (issue 22): data loading is never the bottleneck of a tiny recipe: loader throughput at least
2x the training step rate at default settings (the recipe as written, from its second epoch). Writes ``benchmarks/results/data_pipeline.json`` and
``data_pipeline.png``::

    python -m benchmarks data_pipeline                  # the representative tiny recipes (~5 min on 2 cores)
    python -m benchmarks data_pipeline --recipes all    # every tiny recipe
    python -m benchmarks data_pipeline --quick          # two recipes, few batches (~1 min)
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path

try:
    from benchmarks import _report, _steps
except ImportError:
    import _report
    import _steps

NAME = "data_pipeline"
GOAL = 2.0


def default_workers() -> int:
    from vqa_components.data.datamodule import VideoQADataModule

    return int(inspect.signature(VideoQADataModule).parameters["num_workers"].default)


def training_loader(dm, workers: int, warm: bool = False):
    """The recipe's training loader with ``workers`` workers; ``warm``: after one whole epoch, so that
    a split that fits ``data.keep_decoded_mb`` is read from memory (persistent workers keep it)."""
    dm.num_workers = workers
    loader = dm.train_dataloader()
    if warm:
        for _ in loader:
            pass
    return loader


def loader_rate(loader, batches: int) -> dict:
    """Clips per second out of ``loader`` over ``batches`` batches after the first of an epoch."""
    it = iter(loader)
    start = time.perf_counter()
    first = next(it)
    first_s = time.perf_counter() - start
    clips, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        clips += int(batch["batch_size"])
    seconds = time.perf_counter() - start
    del it
    return {"num_workers": loader.num_workers, "clips": clips, "seconds": round(seconds, 3),
            "clips_per_s": round(clips / seconds, 1), "first_batch_s": round(first_s, 3),
            "batch_size": int(first["batch_size"])}


def bare_decode_rate(dataset, clips: int) -> dict:
    import torch

    from vqa_components.data.video_io import read_video_streams

    paths = [dataset.video_path(i) for i in range(min(clips, len(dataset)))]
    read_video_streams(paths[0], dataset.streams, dtype=torch.uint8)  # warm-up
    start = time.perf_counter()
    for path in paths:
        read_video_streams(path, dataset.streams, dtype=torch.uint8)
    seconds = time.perf_counter() - start
    return {"clips": len(paths), "seconds": round(seconds, 3), "clips_per_s": round(len(paths) / seconds, 1),
            "streams": [list(s) for s in dataset.streams]}


def fed_by_loader(stepper, loader, steps: int) -> dict:
    it = iter(loader)
    stepper.step(next(it))  # warm-up, workers started
    samples, start = 0, time.perf_counter()
    for _ in range(steps):
        batch = next(it)
        stepper.step(batch)
        samples += int(batch["batch_size"])
    seconds = time.perf_counter() - start
    del it
    return {"num_workers": loader.num_workers, "steps": steps, "samples_per_s": round(samples / seconds, 2)}


def one_core_each(stepper, batch, dm, args) -> dict:
    """The first epoch with a core for the training step (1 torch thread) and one for a loader worker:
    the step rate on a batch in memory, the loader alone, and the steps fed by it. Where the step has
    a core of its own, as on a machine with cores to spare, this shows whether the loader keeps up."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timing = _steps.time_steps(stepper, batch, args.steps, args.warmup)
        step_rate = _steps.batch_size(batch) / timing["median_s"]
        loader = loader_rate(training_loader(dm, 1), args.batches)
        fed = fed_by_loader(stepper, training_loader(dm, 1), args.fed_steps)
    finally:
        torch.set_num_threads(threads)
    return {"torch_threads": 1, "num_workers": 1, "step_samples_per_s": round(step_rate, 2),
            "loader_clips_per_s": loader["clips_per_s"], "loader_over_step_rate": round(loader["clips_per_s"] / step_rate, 2),
            "fed_samples_per_s": fed["samples_per_s"], "fed_over_step_rate": round(fed["samples_per_s"] / step_rate, 2)}  # fmt: skip


def measure(recipe: str, args) -> dict:
    model, dm = _steps.build(recipe)
    recipe_workers = dm.num_workers
    batch = _steps.first_batch(dm)
    stepper = _steps.Stepper(model, recipe)
    timing = _steps.time_steps(stepper, batch, args.steps, args.warmup)
    step_rate = _steps.batch_size(batch) / timing["median_s"]
    dataset = dm.dataset(dm.splits["fit"], training=True)
    row: dict = {"recipe": recipe, "batch_size": _steps.batch_size(batch), "recipe_num_workers": recipe_workers,
                 "step": {"median_s": round(timing["median_s"], 4), "samples_per_s": round(step_rate, 2)},
                 "bare_decode": bare_decode_rate(dataset, args.clips), "loader": {}}
    # first epoch (every clip decoded) at the DataModule's default and the recipe's workers; then the
    # recipe as written from its second epoch on (a split that fits data.keep_decoded_mb: from memory)
    settings = [(w, False) for w in dict.fromkeys([args.default_workers, recipe_workers])] + [(recipe_workers, True)]
    row["fed_by_loader"] = {}
    for workers, warm in settings:
        key = f"{workers}, later epochs" if warm else str(workers)
        loader = training_loader(dm, workers, warm)
        entry = loader_rate(loader, args.batches)
        entry["over_step_rate"] = round(entry["clips_per_s"] / step_rate, 2)
        entry["over_bare_decode"] = round(entry["clips_per_s"] / row["bare_decode"]["clips_per_s"], 2)
        row["loader"][key] = entry
        fed = fed_by_loader(stepper, loader if warm else training_loader(dm, workers), args.fed_steps)
        fed["over_step_rate"] = round(fed["samples_per_s"] / step_rate, 2)
        row["fed_by_loader"][key] = fed
        del loader
    row["one_core_each"] = one_core_each(stepper, batch, dm, args)
    row["goal_met"] = row["loader"][f"{recipe_workers}, later epochs"]["over_step_rate"] >= GOAL
    print(f"{_steps.short_name(recipe):28s} step {step_rate:7.1f} samples/s | bare decode "
          f"{row['bare_decode']['clips_per_s']:7.1f} clips/s | " + " | ".join(
              f"loader ({w} workers) {e['clips_per_s']:7.1f} clips/s ({e['over_step_rate']:.1f}x the step rate)"
              for w, e in row["loader"].items())
          + " | fed by the loader " + ", ".join(f"({w} workers) {e['samples_per_s']:.1f} samples/s"
                                                for w, e in row["fed_by_loader"].items()), flush=True)
    return row


def plot(result: dict, path: Path) -> None:
    names = [_steps.short_name(r) for r in result["recipes"]]
    rows = list(result["recipes"].values())
    series = [("training step (batch in memory)", [r["step"]["samples_per_s"] for r in rows]),
              ("fed by the loader, later epochs", [r["fed_by_loader"][later(r)]["samples_per_s"] for r in rows]),
              ("loader, first epoch", [r["loader"][str(r["recipe_num_workers"])]["clips_per_s"] for r in rows]),
              ("loader, later epochs", [r["loader"][later(r)]["clips_per_s"] for r in rows]),
              ("bare decode, 1 process", [r["bare_decode"]["clips_per_s"] for r in rows])]
    with _report.panels(1, max(6.0, 1.1 * len(names) + 2), 3.8, _report.plot_title(result), path) as (ax,):
        width = 0.8 / len(series)
        for j, (label, values) in enumerate(series):
            ax.bar([i + (j - 2) * width for i in range(len(names))], values, width, label=label)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("clips (samples) per second (recipe's workers)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)


def later(row: dict) -> str:
    return f"{row['recipe_num_workers']}, later epochs"


def markdown(result: dict) -> str:
    d = str(result["default_num_workers"])
    rows, cores = [], []
    for recipe, row in result["recipes"].items():
        own = str(row["recipe_num_workers"])

        def cell(entry: dict | None, key: str, digits: int = 1) -> str:
            return f"{entry[key]:.0f} ({entry['over_step_rate']:.{digits}f}x)" if entry else "-"

        loader, fed = row["loader"], row["fed_by_loader"]
        rows.append([_steps.short_name(recipe), own, f"{row['step']['samples_per_s']:.0f}",
                     f"{row['bare_decode']['clips_per_s']:.0f}", cell(loader.get(d), "clips_per_s"),
                     cell(fed.get(d), "samples_per_s", 2),
                     cell(loader.get(own), "clips_per_s") if own != d else "same",
                     cell(fed.get(own), "samples_per_s", 2) if own != d else "same",
                     cell(loader[later(row)], "clips_per_s"),
                     cell(fed[later(row)], "samples_per_s", 2), "yes" if row["goal_met"] else "**no**"])
        if "one_core_each" in row:
            c = row["one_core_each"]
            cores.append([_steps.short_name(recipe), f"{c['step_samples_per_s']:.0f}",
                          f"{c['loader_clips_per_s']:.0f} ({c['loader_over_step_rate']:.1f}x)",
                          f"{c['fed_samples_per_s']:.0f} ({c['fed_over_step_rate']:.2f}x)",
                          "yes" if c["loader_over_step_rate"] >= GOAL else "**no**"])
    recipes = result["recipes"].values()
    met = all(r["goal_met"] for r in recipes)
    first = sum(r["loader"][str(r["recipe_num_workers"])]["over_step_rate"] >= GOAL for r in recipes)
    first_default = sum(r["loader"][d]["over_step_rate"] >= GOAL for r in recipes if d in r["loader"])
    lines = [
        ("Clips (samples) per second. Training step: the step on a batch held in memory. Bare decode: "
         "`read_video_streams` of the same clips in one process. Loader: the training loader alone (in brackets, "
         "against the training step rate). Fed: the training steps drawing their batches from the loader (in "
         "brackets, against the step on a batch in memory). First epoch: every clip decoded, at the DataModule's "
         f"default {d} workers and at the recipe's own `num_workers`; later epochs: the recipe as written after "
         "its first epoch, when the training split's decoded clips are kept in memory (`data.keep_decoded_mb`)."),
        "",
        _report.md_table(["recipe", "recipe's workers", "training step", "bare decode",
                          f"loader, first epoch, {d} workers", f"fed, first epoch, {d} workers",
                          "loader, first epoch, recipe's workers", "fed, first epoch, recipe's workers",
                          "loader, later epochs", "fed, later epochs",
                          f"loader >= {GOAL:.0f}x step, later epochs"], rows),
        "",
        (f"Goal: loader throughput at least {GOAL:.0f}x the training step rate for every tiny recipe measured, as "
         f"written: {'met' if met else '**not met**'} from the second epoch; in the first epoch, which decodes "
         f"every clip, met by {first_default} of {len(result['recipes'])} at the DataModule's default {d} workers "
         f"and by {first} of {len(result['recipes'])} at the recipes' own `num_workers`."),
    ]  # fmt: skip
    if cores:
        loader_ok = sum(r["one_core_each"]["loader_over_step_rate"] >= GOAL for r in recipes)
        fed = [r["one_core_each"]["fed_over_step_rate"] for r in recipes]
        lines += [
            "",
            ("First epoch with one core for each: the training step on 1 torch thread, the loader on 1 worker "
             "(what a machine with cores to spare gives the step and its loader). Step and loader as above; fed "
             "against this step."),
            "",
            _report.md_table(["recipe", "training step, 1 thread", "loader, 1 worker", "fed",
                              f"loader >= {GOAL:.0f}x step"], cores),
            "",
            (f"With a core each, the loader is at least {GOAL:.0f}x the step for {loader_ok} of {len(fed)} recipes, "
             f"and the steps fed by it run at {min(fed):.2f}-{max(fed):.2f}x the step on a batch in memory."),
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = _report.parser(__doc__)
    p.add_argument("--recipes", nargs="+",
                   help="recipe paths, 'representative' (the default: one of each tiny model; with --quick, two) or 'all'")
    p.add_argument("--batches", type=int, default=12, help="loader batches timed after the first")
    p.add_argument("--clips", type=int, default=128, help="clips of the bare decode")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--fed-steps", type=int, default=8, help="training steps fed by the loader")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.clips, args.steps, args.warmup, args.fed_steps = 4, 32, 3, 1, 3
        args.recipes = args.recipes or ["recipes/quickstart.yaml", "recipes/cotok/tiny/three_streams.yaml"]
    args.default_workers = default_workers()
    result: dict = {**_report.machine(), "benchmark": NAME, "quick": args.quick,
                    "default_num_workers": args.default_workers, "goal": f"loader >= {GOAL}x the step rate",
                    "config": {k: v for k, v in vars(args).items() if k in ("batches", "clips", "steps", "fed_steps")},
                    "recipes": {}}
    for recipe in _steps.pick_recipes(args.recipes or ["representative"]):
        result["recipes"][recipe] = measure(recipe, args)
    result["goal_met"] = all(r["goal_met"] for r in result["recipes"].values())
    return _report.finish(result, args.results, NAME, plot)


if __name__ == "__main__":
    sys.exit(main())
