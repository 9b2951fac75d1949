"""One run of a sweep on this machine: its plan, its stages as ``vqa`` processes, and its record.

The plan (``<out>/plans/<run>.json``) holds everything a stage needs, so that a stage runs the same
in a thread of ``vqa sweep`` and in a SLURM job (``python -m vqa_components.sweep.job PLAN STAGE``):
each ``vqa`` command is a process of its own, as a user would type it (DDP ranks re-run its command
line). A stage writes ``stage.json`` (exit status, wall time, test metrics, last validation values)
into its folder; after the last stage, or a failed one, the run's record is merged into
``sweep.json``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vqa_components.cli_common import CLIError
from vqa_components.sweep.spec import PLACEHOLDER, Run, benchmark_version


def make_plan(run: Run, out: Path, threads: int | None = None) -> dict[str, Any]:
    """The run as JSON: its key, folders and stages (arguments with their placeholders unfilled)."""
    from vqa_components.packaged_recipes import recipe_digest

    folder = (out / "runs" / run.folder).resolve()
    return {
        "key": run.key(), "sweep": run.sweep, "run": run.name, "override": run.override, "seed": run.seed,
        "row": run.row, "order": run.order, "folder": str(folder), "out": str(out.resolve()),
        "args": list(run.args), "threads": threads,
        "benchmark_version": benchmark_version([s.recipe for s in run.stages]),
        "stages": [{"name": s.name, "recipe": str(s.recipe), "recipe_sha256": recipe_digest(s.recipe),
                    "command": s.command, "args": list(s.args), "test": s.test} for s in run.stages],
    }  # fmt: skip


def write_plan(plan: dict[str, Any]) -> Path:
    path = Path(plan["out"]) / "plans" / (plan["run"] + (f".{plan['override']}" if plan["override"] else "")
                                          + f".seed{plan['seed']}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=1) + "\n")
    return path


def fill(arg: str, plan: dict[str, Any], dry: bool = False) -> str:
    """``{run}``, ``{STAGE}``, ``{STAGE.last}``, ``{STAGE.best}`` of an argument, for this run (``dry``:
    checkpoints as ``STAGE/checkpoints/{last,best}.ckpt``, for a stage that has not run yet)."""
    from vqa_components.cli_common import find_checkpoint

    def one(match) -> str:
        ref, which = match.groups()
        folder = Path(plan["folder"]) if ref == "run" else Path(plan["folder"]) / ref
        if which and dry:
            return str(folder / "checkpoints" / f"{which}.ckpt")
        return find_checkpoint(folder, which) if which else str(folder)

    return PLACEHOLDER.sub(one, arg)


def commands(plan: dict[str, Any], index: int, dry: bool = False) -> list[list[str]]:
    """The ``vqa`` command lines of stage ``index`` (without the interpreter)."""
    stage = plan["stages"][index]
    folder = Path(plan["folder"]) / stage["name"]
    args = [fill(a, plan, dry) for a in stage["args"]]
    if stage["command"] != "fit":
        return [[stage["command"], "--config", stage["recipe"], *args]]
    run_args = [fill(a, plan, dry) for a in plan["args"]]
    # the run's folder and seed come last: an argument of the sweep cannot move them
    common = ["--config", stage["recipe"], *run_args, *args, f"--seed_everything={plan['seed']}",
              f"--trainer.default_root_dir={folder}", "--trainer.enable_progress_bar=false"]
    cmds = [["fit", *common, "--overwrite"]]  # a stage that runs is not finished: its folder is a crashed run's
    if stage["test"]:
        cmds.append(["test", *common, "--ckpt_path", "best"])
    return cmds


def last_validation(folder: Path) -> dict[str, float]:
    """The last logged value of every ``val/`` metric in a fit's CSV log."""
    files = sorted(folder.glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    values: dict[str, float] = {}
    if files:
        with files[-1].open() as f:
            for row in csv.DictReader(f):
                values.update({k: float(v) for k, v in row.items() if k.startswith("val/") and v not in ("", None)})
    return values


@contextlib.contextmanager
def run_lock(plan: dict[str, Any]) -> Iterator[bool]:
    """Hold ``<run folder>/.running`` (an exclusive ``fcntl`` lock) while the run runs; ``False`` when
    another process holds it (the same run in another ``vqa sweep``, or a SLURM job): run nothing then,
    or the two would overwrite each other's checkpoints."""
    folder = Path(plan["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".running").open("w") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no guard
            yield True
            return
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_stage(plan: dict[str, Any], index: int) -> dict[str, Any]:
    """Run one stage's ``vqa`` processes (output into ``<stage>/stage.log``); write and return ``stage.json``."""
    stage = plan["stages"][index]
    folder = Path(plan["folder"]) / stage["name"]
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if plan.get("threads") and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(plan["threads"])
    start = time.time()
    result: dict[str, Any] = {"name": stage["name"], "command": stage["command"], "returncode": 0, "commands": []}
    with (folder / "stage.log").open("w") as log:
        try:
            cmds = commands(plan, index)
        except CLIError as exc:  # a {STAGE.best} with no checkpoint: the stage fails, as a command would
            log.write(f"vqa sweep: {exc}\n")
            cmds, result["returncode"] = [], 2
        for cmd in cmds:
            log.write("$ vqa " + " ".join(cmd) + "\n")
            log.flush()
            result["commands"].append(cmd)
            code = subprocess.run([sys.executable, "-m", "vqa_components.cli", *cmd], stdout=log, stderr=log,
                                  env=env, check=False).returncode
            if code:
                result["returncode"] = code
                break
    result["wall_s"] = time.time() - start
    if stage["command"] == "fit" and result["returncode"] == 0:
        result["val_metrics"] = last_validation(folder)
        tested = folder / "test_metrics.json"
        if stage["test"] and tested.is_file():
            result["metrics"] = json.loads(tested.read_text())
    (folder / "stage.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def machine() -> dict[str, Any]:
    """What the run ran on: host, CPU, GPU, and the versions that decide its numbers."""
    import importlib.metadata as md

    import torch

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return {
        "host": platform.node(), "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__, "lightning": version("lightning"),
        "vqa_components": version("vqa-components"),
    }  # fmt: skip


def finish_run(plan: dict[str, Any]) -> dict[str, Any]:
    """The run's record from its stages' ``stage.json``, merged into ``sweep.json``; returned."""
    from datetime import datetime, timezone

    from vqa_components.sweep.results import merge_record

    stages = []
    for stage in plan["stages"]:
        file = Path(plan["folder"]) / stage["name"] / "stage.json"
        if not file.is_file():
            break
        stages.append(json.loads(file.read_text()))
    failed = next((s for s in stages if s["returncode"]), None)
    complete = len(stages) == len(plan["stages"]) and failed is None
    tested = [s for s in stages if s.get("metrics")]
    record = {
        **{k: plan[k] for k in ("key", "sweep", "run", "override", "seed", "row", "order", "args")},
        "recipes": {s["name"]: {"path": s["recipe"], "sha256": s["recipe_sha256"]} for s in plan["stages"]},
        "returncode": failed["returncode"] if failed else (0 if complete else 1),
        # the last tested stage's test metrics; {} for a finished chain that tests nothing (a tokenizer)
        "metrics": (tested[-1]["metrics"] if tested else {}) if complete else None,
        "wall_s": sum(s["wall_s"] for s in stages),
        "stages": stages,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        # the runs' torch threads: a run is bit-identical for the same seed, threads and machine, not across
        "threads": int(os.environ.get("OMP_NUM_THREADS") or plan.get("threads") or 0) or None,
        "benchmark_version": plan.get("benchmark_version"),
    }
    merge_record(Path(plan["out"]), record)
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m vqa_components.sweep.job PLAN STAGE``: one stage (a SLURM job); the record after the last."""
    plan_file, index = (argv if argv is not None else sys.argv[1:])[:2]
    plan = json.loads(Path(plan_file).read_text())
    with run_lock(plan) as free:
        if not free:
            print(f"vqa sweep: {plan['folder']} is running in another process; this job runs nothing", file=sys.stderr)
            return 75  # EX_TEMPFAIL: the dependent stages do not start
        result = run_stage(plan, int(index))
    if result["returncode"] or int(index) == len(plan["stages"]) - 1:
        finish_run(plan)
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
