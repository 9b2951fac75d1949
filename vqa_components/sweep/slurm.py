"""``vqa sweep --launcher slurm``: each stage of each run as a SLURM job, submitted with ``sbatch``.

A job runs ``python -m vqa_components.sweep.job PLAN STAGE`` in the directory ``vqa sweep`` ran in,
with this interpreter (the cluster's nodes must see both: a shared file system). A stage's job
waits for the previous stage's (``--dependency=afterok:ID``; ``--kill-on-invalid-dep=yes`` drops the
rest of a chain whose stage failed). The last stage's job, or a failed one, merges the run's record
into ``sweep.json`` under the same lock as local runs. The resources are the user's: ``sbatch``
options from the sweep file's ``slurm:`` list and ``--slurm`` on the command line (the latter win,
as later options do for ``sbatch``). Nothing here schedules: SLURM does.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from vqa_components.cli_common import CLIError


def job_script(plan: dict[str, Any], plan_file: Path, index: int, options: list[str], workdir: Path) -> str:
    stage = plan["stages"][index]
    folder = Path(plan["folder"]) / stage["name"]
    name = f"vqa-{plan['sweep']}-{plan['run']}{'.' + plan['override'] if plan['override'] else ''}" \
           f"-s{plan['seed']}-{stage['name']}".replace("/", "-")
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={folder}/slurm-%j.out"]
    lines += [f"#SBATCH {opt}" for opt in options]
    if plan.get("threads"):
        lines.append(f"export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{plan['threads']}}}")
    lines += [f"cd {shlex.quote(str(workdir))}",
              f"exec {shlex.quote(sys.executable)} -m vqa_components.sweep.job {shlex.quote(str(plan_file))} {index}"]
    return "\n".join(lines) + "\n"


def submit(plans: list[tuple[dict[str, Any], Path]], options: list[str], workdir: Path, sbatch: str = "sbatch"
           ) -> list[dict[str, Any]]:
    """Write every stage's job script beside its plan and submit it; return one entry per job
    (run, seed, stage, script, job id, dependency)."""
    exe = shutil.which(sbatch)
    if exe is None:
        raise CLIError(f"--launcher slurm: no `{sbatch}` on PATH (run vqa sweep on the cluster's login node)")
    jobs = []
    for plan, plan_file in plans:
        previous: str | None = None
        for index, stage in enumerate(plan["stages"]):
            script = plan_file.with_suffix(f".{stage['name']}.sbatch")
            script.write_text(job_script(plan, plan_file, index, options, workdir))
            (Path(plan["folder"]) / stage["name"]).mkdir(parents=True, exist_ok=True)
            cmd = [exe, "--parsable"]
            if previous:
                cmd += [f"--dependency=afterok:{previous}", "--kill-on-invalid-dep=yes"]
            res = subprocess.run([*cmd, str(script)], capture_output=True, text=True, check=False)
            if res.returncode:
                raise CLIError(f"sbatch {script} failed (exit {res.returncode}): {res.stderr.strip()[-500:]}")
            job_id = res.stdout.strip().split(";")[0]  # --parsable: ID or ID;CLUSTER
            jobs.append({"run": plan["run"], "override": plan["override"], "seed": plan["seed"],
                         "stage": stage["name"], "script": str(script), "job_id": job_id, "after": previous})
            previous = job_id
    return jobs
