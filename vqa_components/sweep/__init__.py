"""``vqa sweep``: recipes x seeds x named overrides, and multi-stage chains, run and tabulated.

A sweep file (YAML) names runs; each run is one recipe, or a chain of stages where a stage reads an
earlier stage's checkpoint or output. ``vqa sweep`` runs ``fit`` then ``test`` for every run, seed
and override (several at once with ``--parallel``, or as SLURM jobs with ``--launcher slurm``), keeps
what finished (a run is keyed on its recipes' sha256, seed, arguments and benchmark version), and
writes ``sweep.json`` (every run's metrics, wall time, versions and machine), ``table.md`` (mean ±
sample std over seeds, overall and per question family) and ``plot.png``.

* :mod:`~vqa_components.sweep.spec`: the sweep file, expanded into :class:`~vqa_components.sweep.spec.Run` s;
* :mod:`~vqa_components.sweep.job`: one stage of one run (the ``vqa`` processes) and the run's record;
* :mod:`~vqa_components.sweep.results`: ``sweep.json`` (merged under a file lock), the table and the plot;
* :mod:`~vqa_components.sweep.slurm`: the job scripts and their ``sbatch`` submissions;
* :mod:`~vqa_components.sweep.command`: the ``vqa sweep`` command line.

The file format and examples: ``docs/recipes.md`` ("Sweeps").
"""

from vqa_components.sweep.spec import Run, Stage, load_sweep, sweep_from_recipes

__all__ = ["Run", "Stage", "load_sweep", "sweep_from_recipes"]
