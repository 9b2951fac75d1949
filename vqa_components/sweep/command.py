"""The ``vqa sweep`` command line.

::

    vqa sweep SWEEP_FILE [--seeds 0 1 2] [--only RUN ...] [--out DIR] [--parallel N] [-- VQA_ARGS]
    vqa sweep RECIPE [RECIPE ...] --seeds 0 1 2 [--name NAME]          # one run per recipe
    vqa sweep SWEEP_FILE --table-only [--table PATH]                   # rewrite table.md and plot.png
    vqa sweep SWEEP_FILE --launcher slurm --slurm '--partition=gpu --gres=gpu:1 --time=02:00:00'
    vqa sweep SWEEP_FILE --fresh                                       # forget the finished runs
    vqa sweep SWEEP_FILE --dry-run                                     # what would run, and how

Results go to ``--out`` (default ``runs/sweeps/<name>``): ``sweep.json``, ``table.md``,
``plot.png``, and each run's folders under ``runs/``. ``--table PATH`` also writes the table page
there (a results page of the docs). Arguments after ``--`` go to every ``fit`` and ``test`` and
into every run's key.
"""

from __future__ import annotations

import argparse
import os
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from vqa_components.cli_common import CLIError
from vqa_components.sweep import results
from vqa_components.sweep.spec import Run, Sweep, load_sweep, sweep_from_recipes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqa sweep", description="Run recipes x seeds x overrides, or chains of "
                                "stages, and tabulate mean ± std over seeds (docs/recipes.md, Sweeps).")
    p.add_argument("sources", nargs="+", help="a sweep file (path or packaged name), or recipes")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the sweep file's, or 0)")
    p.add_argument("--only", nargs="+", help="these runs of the sweep file only")
    p.add_argument("--name", help="the sweep's name (default: the file's name, or 'sweep' for recipes)")
    p.add_argument("--out", help="results folder (default: runs/sweeps/NAME)")
    p.add_argument("--parallel", type=int, default=1, help="runs at once on this machine (default 1)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each run (default: cores / parallel)")
    p.add_argument("--fresh", action="store_true", help="discard the finished runs and run everything again")
    p.add_argument("--dry-run", action="store_true", help="print what would run (the vqa commands), run nothing")
    p.add_argument("--table-only", action="store_true", help="only write table.md and plot.png from sweep.json")
    p.add_argument("--table", help="also write the table page to this file")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--slurm", action="append", default=[], metavar="'SBATCH_OPTIONS'",
                   help="sbatch options of every job, e.g. --slurm '--partition=gpu --time=01:00:00' (repeatable)")
    return p


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(sweep arguments, vqa arguments after ``--``)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def read_sources(args: argparse.Namespace, extra: list[str]) -> Sweep:
    from vqa_components.packaged_recipes import find_recipe

    first = find_recipe(args.sources[0])
    spec = yaml.safe_load(first.read_text()) if len(args.sources) == 1 else None
    if isinstance(spec, dict) and "runs" in spec:
        sweep = load_sweep(first)
        if args.name:
            sweep.name = args.name
    else:
        sweep = sweep_from_recipes(args.sources, args.name or "sweep")
    sweep.args = (*sweep.args, *extra)
    return sweep


def still_valid(sweep: Sweep):
    """Whether a record of ``sweep.json`` is a finished run of this sweep as it is now: its run and
    override exist and its key is the one the run would get today (updates its row and order)."""
    cache: dict[tuple, str] = {}

    def keep(record: dict) -> bool:
        slot = (record["run"], record["override"], record["seed"])
        if record["run"] not in sweep.runs_by_name or record["override"] not in sweep.overrides:
            return False
        run = sweep.run(*slot)
        if slot not in cache:
            cache[slot] = run.key()
        record.update(row=run.row, order=run.order)
        return cache[slot] == record["key"]

    return keep


def write_outputs(out: Path, table_copy: str | None) -> str:
    data = results.load(out)
    page = results.table_page(data)
    (out / results.TABLE).write_text(page)
    results.plot(data, out / results.PLOT)
    if table_copy:
        Path(table_copy).parent.mkdir(parents=True, exist_ok=True)
        Path(table_copy).write_text(page)
    return page


def run_local(runs: list[Run], out: Path, parallel: int, threads: int) -> list[dict]:
    from vqa_components.sweep.job import finish_run, make_plan, run_lock, run_stage, write_plan

    lock = threading.Lock()
    records = []

    def one(run: Run) -> None:
        plan = make_plan(run, out, threads)
        with run_lock(plan) as free:
            if not free:
                print(f"{run.row} seed {run.seed}: running in another process (vqa sweep or a job), skipped",
                      flush=True)
                return
            write_plan(plan)
            for index in range(len(plan["stages"])):
                if run_stage(plan, index)["returncode"]:
                    break
            record = finish_run(plan)
        with lock:
            records.append(record)
            acc = (record["metrics"] or {}).get("test/acc")
            if record["returncode"]:
                status = f"FAILED (exit {record['returncode']}): see {Path(plan['folder'])}/*/stage.log"
            else:
                status = f"test/acc {acc:.4f}" if acc is not None else "finished (no test)"
            print(f"[{len(records)}/{len(runs)}] {run.row} seed {run.seed}: {status}, {record['wall_s']:.0f} s",
                  flush=True)

    with ThreadPoolExecutor(max(1, parallel)) as pool:
        list(pool.map(one, runs))
    return records


def cmd_sweep(argv: list[str]) -> int:
    own, extra = split_args(argv)
    args = parser().parse_args(own)
    sweep = read_sources(args, extra)
    out = Path(args.out or Path("runs") / "sweeps" / sweep.name)
    if args.table_only:
        if not (out / results.RESULTS).is_file():
            raise CLIError(f"--table-only: no {out / results.RESULTS} (give the sweep's --out)")
        print(write_outputs(out, args.table), end="")
        return 0
    runs = sweep.runs(args.seeds, args.only)
    keep = (lambda r: False) if args.fresh else still_valid(sweep)
    meta = {"sweep": sweep.name, "file": " ".join(args.sources), "table": sweep.table}  # as the user named it
    if args.dry_run:  # reads sweep.json as it is: no lock, no folder, nothing written
        done = {r["key"] for r in results.load(out)["records"] if results.finished(r) and keep(r)}
    else:
        done = {r["key"] for r in results.keep_records(out, keep, meta)}
    todo = [r for r in runs if r.key() not in done]
    print(f"vqa sweep {sweep.name}: {len(runs) - len(todo)} of {len(runs)} runs finished already "
          f"({out / results.RESULTS}), {len(todo)} to run", flush=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.parallel))
    if args.dry_run:
        from vqa_components.sweep.job import commands, make_plan

        for run in todo:
            plan = make_plan(run, out, threads)
            print(f"{run.row} seed {run.seed} ({plan['folder']}):")
            for index in range(len(plan["stages"])):
                print("\n".join("  vqa " + " ".join(cmd) for cmd in commands(plan, index, dry=True)))
        return 0
    if args.launcher == "slurm":
        from vqa_components.sweep.job import make_plan, write_plan
        from vqa_components.sweep.slurm import submit

        plans = [(plan, write_plan(plan)) for plan in (make_plan(r, out, threads) for r in todo)]
        options = [*sweep.slurm, *(o for given in args.slurm for o in shlex.split(given))]
        jobs = submit(plans, options, Path.cwd())
        for job in jobs:
            after = f" after {job['after']}" if job["after"] else ""
            print(f"submitted {job['job_id']}{after}: {job['run']} seed {job['seed']} {job['stage']}")
        print(f"results land in {out / results.RESULTS}; `vqa sweep ... --table-only` rewrites the table")
        return 0
    start = time.time()
    records = run_local(todo, out, args.parallel, threads)
    page = write_outputs(out, args.table)
    print(page, end="")
    print(f"{len(records)} runs in {time.time() - start:.0f} s; results in {out}")
    return 0 if all(r["returncode"] == 0 for r in records) else 1

