"""The sweep file: runs (one recipe, or a chain of stages) x seeds x named overrides.

::

    # Quickstart against its question-only baseline     <- the first comment line: `vqa recipes` shows it
    name: quickstart                 # default: the file's stem; results go to runs/sweeps/<name>
    seeds: [0, 1, 2]                 # default [0]; `--seeds` replaces them
    args: []                         # vqa arguments for every fit and test of every run
    runs:
      quickstart: quickstart         # a run: a recipe (packaged name, path, or ./path beside this file)
      blind:
        recipe: quickstart_question_only
        label: question only (blind video)     # the table's row (default: the run's name)
        args: [--trainer.max_epochs=8]
      chain:                         # a chain: stages run in order, each in its own folder
        label: tokenizer, then QA
        args: ["--model.text_encoder.init_args.vocab_file={run}/vocab.txt"]   # every fit/test stage's
        stages:
          - {name: vocab, command: vocab, recipe: evilm/tiny/tokenizer, args: [--out, "{run}/vocab.txt"]}
          - {name: tokenizer, recipe: evilm/tiny/tokenizer}
          - {name: finetune, recipe: evilm/tiny/finetune, args: ["--model.init_from={tokenizer.last}"]}
    overrides:                       # crossed with every run; default: none
      fp32: []
      bf16: [--trainer.precision=bf16-mixed]
    table: {metric: test/acc, columns: [spatial, motion, counting, needle]}
    slurm: [--time=01:00:00]         # sbatch options of every job (`--launcher slurm`)
    x-common: &common [...]          # keys starting with x- are free: YAML anchors to reuse

A stage's ``command`` is ``fit`` (the default: ``vqa fit``, then ``vqa test --ckpt_path best`` when
the stage is tested, by default the last stage only; ``test: true|false`` says otherwise) or another
``vqa`` command that takes ``--config`` (``vocab``, ``export``, ...), which gets the stage's ``args``
only. In arguments, ``{run}`` is the run's folder, ``{STAGE}`` an earlier stage's folder, and
``{STAGE.last}`` / ``{STAGE.best}`` its last or best checkpoint.

A run's key is the sha256 of what decides its result: each stage's command, recipe digest (the recipe
and the files it includes) and arguments, the seed, the override's and the sweep's arguments, and the
version of the benchmark it reads (``synthetic_vqa``'s generator). A finished run whose key is
unchanged is not run again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vqa_components.interfaces import ConfigError

#: ``{run}``, ``{STAGE}``, ``{STAGE.last}``, ``{STAGE.best}`` in a stage's arguments
PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w-]*)(?:\.(last|best))?\}")
RUN_KEYS = {"recipe", "label", "args", "stages"}
STAGE_KEYS = {"name", "recipe", "command", "args", "test"}
SWEEP_KEYS = {"name", "seeds", "args", "runs", "overrides", "table", "slurm"}
TABLE_KEYS = {"metric", "columns", "scale", "digits"}


@dataclass(frozen=True)
class Stage:
    """One step of a run: ``vqa COMMAND --config RECIPE ARGS`` in the folder ``<run>/<name>``."""

    name: str
    recipe: Path  # resolved
    command: str = "fit"
    args: tuple[str, ...] = ()
    test: bool = False

    @property
    def trains(self) -> bool:
        return self.command == "fit"


@dataclass(frozen=True)
class Run:
    """One run of a sweep: a run of the file, under one override, with one seed."""

    sweep: str
    name: str
    override: str  # "" when the sweep has no overrides
    seed: int
    label: str
    stages: tuple[Stage, ...]
    args: tuple[str, ...] = ()  # the sweep's, the run's and the override's, for every fit and test
    order: int = 0  # the row's position in the table

    @property
    def row(self) -> str:
        """The table's row: the run's label, and the override's name where the sweep has several."""
        return f"{self.label} [{self.override}]" if self.override else self.label

    @property
    def folder(self) -> str:
        """Where the run lives under the sweep's ``runs/`` folder."""
        return f"{self.name}{'.' + self.override if self.override else ''}/seed{self.seed}"

    def key(self) -> str:
        from vqa_components.packaged_recipes import recipe_digest

        content = {
            "stages": [
                {"command": s.command, "recipe": recipe_digest(s.recipe), "args": list(s.args), "test": s.test}
                for s in self.stages
            ],
            "seed": self.seed,
            "args": list(self.args),
            "benchmark_version": benchmark_version([s.recipe for s in self.stages]),
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Sweep:
    """A sweep file, read: its runs by name and its overrides, expanded per seed by :meth:`runs`."""

    name: str
    path: Path | None
    seeds: list[int]
    runs_by_name: dict[str, tuple[str, tuple[Stage, ...], tuple[str, ...]]]  # name -> label, stages, args
    overrides: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"": ()})
    args: tuple[str, ...] = ()
    table: dict[str, Any] = field(default_factory=dict)
    slurm: list[str] = field(default_factory=list)

    def run(self, name: str, override: str, seed: int) -> Run:
        label, stages, args = self.runs_by_name[name]
        order = list(self.runs_by_name).index(name) * len(self.overrides) + list(self.overrides).index(override)
        return Run(self.name, name, override, seed, label, stages, (*self.args, *args, *self.overrides[override]),
                   order)

    def runs(self, seeds: list[int] | None = None, only: list[str] | None = None) -> list[Run]:
        """Every run x override x seed (seed-major: a first pass over the seeds gives every row a value)."""
        names = list(self.runs_by_name)
        for name in only or []:
            if name not in self.runs_by_name:
                raise ConfigError(_unknown(self, "run", name, names))
        return [self.run(n, o, s) for s in (seeds or self.seeds) for n in (only or names) for o in self.overrides]


def _unknown(sweep: Sweep, what: str, name: str, valid: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"sweep {sweep.path or sweep.name}: no {what} '{name}'.{hint} Its {what}s: {', '.join(valid)}"


def benchmark_version(recipes: list[Path]) -> int | None:
    """``synthetic_vqa``'s generator version when a recipe reads it (its clips change with it), else None."""
    from vqa_components.packaged_recipes import load_recipe

    for recipe in recipes:
        data = load_recipe(recipe).get("data") or {}
        if isinstance(data, dict) and data.get("dataset") == "synthetic_vqa":
            from vqa_components.data.synthetic import GENERATOR_VERSION

            return GENERATOR_VERSION
    return None


def _args(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(a, (str, int, float)) for a in value):
        raise ConfigError(f"{where}: a list of vqa arguments, e.g. [--trainer.max_epochs=4], not {value!r}")
    return tuple(str(a) for a in value)


def _recipe(where: str, value: Any, folder: Path | None) -> Path:
    from vqa_components.packaged_recipes import find_recipe

    if not isinstance(value, str):
        raise ConfigError(f"{where}: recipe: a packaged recipe's name or a path, not {value!r}")
    if folder is not None and value.startswith(("./", "../")):
        value = str(folder / value)
    try:
        return find_recipe(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_keys(where: str, spec: dict, allowed: set[str]) -> None:
    unknown = sorted(k for k in set(spec) - allowed if not str(k).startswith("x-"))  # x-NAME: YAML anchors
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (a sweep file's keys here: {', '.join(sorted(allowed))})")


def _stages(where: str, spec: Any, folder: Path | None) -> tuple[str, tuple[Stage, ...], tuple[str, ...]]:
    """One run of the file: (label, stages, run args)."""
    name = where.rsplit(".", 1)[-1]
    if isinstance(spec, str):
        spec = {"recipe": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: a recipe name, or a mapping with recipe or stages")
    _check_keys(where, spec, RUN_KEYS)
    if ("recipe" in spec) == ("stages" in spec):
        raise ConfigError(f"{where}: give either recipe (one stage) or stages (a chain)")
    raw = spec.get("stages") or [{"name": "train", "recipe": spec.get("recipe")}]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: stages: a list of {{name, recipe, command, args, test}}")
    stages: list[Stage] = []
    for i, st in enumerate(raw):
        at = f"{where}.stages[{i}]"
        if not isinstance(st, dict):
            raise ConfigError(f"{at}: a mapping with name and recipe")
        _check_keys(at, st, STAGE_KEYS)
        stage_name = str(st.get("name") or "")
        if not re.fullmatch(r"[A-Za-z_][\w-]*", stage_name) or stage_name == "run":
            raise ConfigError(f"{at}: name: a word (letters, digits, _ or -) other than 'run', not {stage_name!r}")
        if stage_name in {s.name for s in stages}:
            raise ConfigError(f"{at}: a second stage named '{stage_name}'")
        args = _args(f"{at}.args", st.get("args"))
        for arg in args:
            for ref, _ in PLACEHOLDER.findall(arg):
                if ref != "run" and ref not in {s.name for s in stages}:
                    raise ConfigError(f"{at}: '{{{ref}}}' in {arg!r} names no earlier stage of {name}")
        stages.append(Stage(stage_name, _recipe(at, st.get("recipe"), folder), str(st.get("command", "fit")), args,
                            bool(st.get("test", i == len(raw) - 1))))
    run_args = _args(f"{where}.args", spec.get("args"))
    for arg in run_args:
        for ref, _ in PLACEHOLDER.findall(arg):
            if ref != "run" and ref not in {s.name for s in stages}:
                raise ConfigError(f"{where}.args: '{{{ref}}}' in {arg!r} names no stage of {name}")
    return str(spec.get("label") or name), tuple(stages), run_args


def load_sweep(source: str | Path) -> Sweep:
    """Read a sweep file (a path, or a packaged sweep's name such as ``sweeps/quickstart``)."""
    from vqa_components.packaged_recipes import find_recipe

    path = Path(source)
    if not path.is_file():
        path = find_recipe(str(source))
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), dict) or not spec["runs"]:
        raise ConfigError(f"{path}: not a sweep file (it has no `runs:` mapping); a recipe runs with "
                          f"`vqa sweep {path} --seeds 0 1 2`")
    where = str(path)
    _check_keys(where, spec, SWEEP_KEYS)
    overrides = spec.get("overrides") or {"": []}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: overrides: a mapping of name -> vqa arguments")
    table = spec.get("table") or {}
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: table: a mapping with metric, columns, scale, digits")
    _check_keys(f"{where}: table", table, TABLE_KEYS)
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{where}: seeds: a list of integers, not {seeds!r}")
    return Sweep(
        name=str(spec.get("name") or path.stem),
        path=path,
        seeds=seeds,
        runs_by_name={str(n): _stages(f"{where}: runs.{n}", r, path.parent) for n, r in spec["runs"].items()},
        overrides={str(n): _args(f"{where}: overrides.{n}", a) for n, a in overrides.items()},
        args=_args(f"{where}: args", spec.get("args")),
        table=table,
        slurm=list(_args(f"{where}: slurm", spec.get("slurm"))),
    )


def sweep_from_recipes(recipes: list[str], name: str = "sweep") -> Sweep:
    """A sweep of one run per recipe (named by its packaged name, or its file's stem), seed 0."""
    from vqa_components.packaged_recipes import find_recipe, recipes_root

    runs: dict[str, tuple[str, tuple[Stage, ...], tuple[str, ...]]] = {}
    root = recipes_root().resolve()
    for given in recipes:
        path = find_recipe(given)
        try:
            run_name = path.resolve().relative_to(root).with_suffix("").as_posix()
        except ValueError:
            run_name = path.stem
        if run_name in runs:
            raise ConfigError(f"vqa sweep: {given} is given twice (run '{run_name}')")
        runs[run_name] = (run_name, (Stage("train", path, test=True),), ())
    return Sweep(name=name, path=None, seeds=[0], runs_by_name=runs)
