"""Recipes by name: the repository's ``recipes/`` folder, shipped in the wheel as ``vqa_components/recipes/``.

::

    vqa fit --config quickstart                   # recipes/quickstart.yaml, from a checkout or a wheel
    vqa fit --config videodistill/tiny/f_full     # .yaml may be left out
    vqa fit --config my_recipe.yaml               # an existing file wins over a name
    vqa fit --config recipes/quickstart.yaml      # a checkout's path also resolves where there is none

A recipe may build on another and name files beside it, and reads the same from the package, from
a checkout and from a copy (``vqa recipes copy``)::

    # my_recipe.yaml
    base: quickstart                  # loaded first: a path relative to this file's folder, or a name
    model:
      head: {num_answers: 32}         # merged key by key over the base's model
    data:
      dataset_args: {root: ./data}    # beside my_recipe.yaml, wherever vqa runs

Merging: dicts merge key by key; anything else replaces, and so does a part under another ``name``
or ``class_path`` (the base's arguments belong to the base's part). A ``base`` may have a ``base``;
a cycle is an error. Strings starting with ``./`` or ``../`` become absolute paths from the folder
of the file they are written in; every other relative path (``default_root_dir: runs/quickstart``)
stays relative to the working directory. Files under ``recipes/sweeps/`` are sweep files (a
top-level ``runs:``), listed but not read as recipes. No torch here: ``vqa recipes`` lists fast.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import vqa_components
from vqa_components.errors import ConfigError
from vqa_components.recipe import MODEL_PART_KINDS

SUFFIX = ".yaml"
#: the folder of sweep files inside the recipes folder
SWEEPS = "sweeps"
#: a recipe's top folder -> the paper it reproduces
PAPERS = {
    "videodistill": "VideoDistill (CVPR 2024)",
    "cotok": "Iterative co-tokenization (2022)",
    "evilm": "E-ViLM (2023)",
}
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class RecipeInfo:
    """One packaged YAML file: ``name`` (``videodistill/tiny/f_full``), its ``path``, ``description``
    (its first comment line), ``paper`` (or ``-``), ``dataset`` (``data.dataset`` of the merged recipe;
    ``None`` for a sweep) and ``kind`` (``recipe`` or ``sweep``)."""

    name: str
    path: Path
    description: str
    paper: str
    dataset: str | None
    kind: str


def recipes_root() -> Path:
    """The packaged recipes folder, or a checkout's ``recipes/`` beside the package (editable install)."""
    package = Path(vqa_components.__file__).resolve().parent
    packaged = package / "recipes"
    if packaged.is_dir():
        return packaged
    checkout = package.parent / "recipes"
    return checkout if checkout.is_dir() else packaged


def _names(kind: str | None = None) -> list[str]:
    root = recipes_root()
    names = sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SUFFIX}"))
    return [n for n in names if kind is None or _kind(n) == kind]


def _kind(name: str) -> str:
    return "sweep" if name.split("/", 1)[0] == SWEEPS else "recipe"


def _packaged(name: str) -> Path | None:
    """The packaged file of ``name`` (``quickstart``, ``quickstart.yaml``, ``recipes/quickstart.yaml``)."""
    root = recipes_root()
    stem = name.replace(os.sep, "/").removesuffix(SUFFIX)
    for candidate in (stem, stem.removeprefix("recipes/")):
        path = root / f"{candidate}{SUFFIX}"
        if candidate and not Path(candidate).is_absolute() and path.is_file():
            return path
    return None


def _not_found(name: str, what: str, prefix: str = "recipe not found:") -> ConfigError:
    stem = name.replace(os.sep, "/").removesuffix(SUFFIX).removeprefix("recipes/")
    names = _names(_kind(stem))
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.6)
    if not close:  # a misspelt file name in the right folder, or the right file name without its folder
        files = difflib.get_close_matches(
            stem.rsplit("/", 1)[-1], sorted({n.rsplit("/", 1)[-1] for n in names}), cutoff=0.6
        )
        close = [n for n in names if n.rsplit("/", 1)[-1] in files][:3]
    hint = f". Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(
        f"{prefix} {name!r} is neither {what} nor a packaged recipe{hint} (vqa recipes lists them)"
    )


def find_recipe(name_or_path: str | os.PathLike) -> Path:
    """An existing file, else the packaged recipe of that name (with or without ``.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    found = _packaged(os.fspath(name_or_path))
    if found is None:
        raise _not_found(os.fspath(name_or_path), "a file")
    return found


def _read(path: Path) -> dict[str, Any]:
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}".replace("\n", " ")) from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ConfigError(
            f"{path}: a recipe is a mapping of sections (trainer, model, data), not {type(cfg).__name__}"
        )
    return cfg


def _base_of(path: Path, cfg: dict[str, Any]) -> tuple[Path, bool] | None:
    """The file ``cfg``'s ``base:`` names, relative to ``path``'s folder or else a packaged recipe, and
    whether it was found by name."""
    value = cfg.get("base")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: base: expected the path or name of one recipe, got {value!r}")
    beside = path.parent / value
    if beside.is_file():
        return Path(os.path.abspath(beside)), False
    found = _packaged(value)
    if found is None:
        raise _not_found(value, "a file beside it", prefix=f"{path}: base")
    return Path(os.path.abspath(found)), True


def _chain(path: str | os.PathLike) -> list[tuple[Path, dict[str, Any], bool]]:
    """``[(file, its YAML, found by name)]``: the recipe (a file or a name), its base, the base's base ..."""
    chain: list[tuple[Path, dict[str, Any], bool]] = []
    link: tuple[Path, bool] | None = (Path(os.path.abspath(find_recipe(path))), False)
    while link is not None:
        current, by_name = link
        seen = [p for p, _, _ in chain]
        if any(os.path.samefile(current, p) for p in seen):
            loop = " -> ".join(str(p) for p in [*seen, current])
            raise ConfigError(f"recipe includes itself: {loop}")
        cfg = _read(current)
        chain.append((current, cfg, by_name))
        link = _base_of(current, cfg)
    return chain


def recipe_sources(path: str | os.PathLike) -> list[Path]:
    """The recipe file followed by the files it includes (``base:``), in include order."""
    return [p for p, _, _ in _chain(path)]


def recipe_digest(path: str | os.PathLike) -> str:
    """sha256 (16 hex digits) of what the recipe configures: the YAML of it and of the files it includes,
    as parsed (comments and layout do not count; nor does how ``base:`` names its file; ``./`` paths
    count as written, so that a copy in another folder has the same digest). ``vqa sweep`` keys runs on it."""
    content = [{k: v for k, v in cfg.items() if k != "base"} for _, cfg, _ in _chain(path)]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _resolve_paths(value: Any, folder: Path) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_paths(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_paths(v, folder) for v in value]
    if isinstance(value, str) and value.startswith(("./", "../")):
        return os.path.normpath(folder / value)
    return value


def _same_part(key: Any, base: dict[str, Any], over: dict[str, Any]) -> bool:
    """Whether ``over`` configures the part of ``base`` (a model part, or any ``class_path`` value)."""
    if key not in MODEL_PART_KINDS and "class_path" not in base and "class_path" not in over:
        return True
    return all(over.get(k, base.get(k)) == base.get(k) for k in ("name", "class_path"))


def merge(base: Any, over: Any, key: Any = None) -> Any:
    """``over`` deep-merged over ``base`` (the value of ``key``): dicts key by key; anything else, and
    a part under another ``name`` or ``class_path``, replaces."""
    if not (isinstance(base, dict) and isinstance(over, dict)) or not _same_part(key, base, over):
        return over
    merged = dict(base)
    for k, value in over.items():
        merged[k] = merge(base[k], value, k) if k in base else value
    return merged


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The recipe's YAML with its ``base`` chain merged under it and ``./`` paths made absolute."""
    merged: dict[str, Any] = {}
    for source, cfg, _ in reversed(_chain(path)):
        own = {k: v for k, v in cfg.items() if k != "base"}
        merged = merge(merged, _resolve_paths(own, source.parent))
    return merged


def _description(path: Path) -> str:
    with path.open(encoding="utf-8") as lines:
        return next((line.strip().lstrip("#").strip() for line in lines if line.lstrip().startswith("#")), "")


def _dataset(cfg: dict[str, Any]) -> str | None:
    sections = [
        cfg,
        *(cfg[s] for s in ("fit", "validate", "test", "predict") if isinstance(cfg.get(s), dict)),
    ]
    for section in sections:
        data = section.get("data")
        if isinstance(data, dict):
            data = data.get("init_args", data) if "class_path" in data else data
            if isinstance(data, dict) and data.get("dataset") is not None:
                return str(data["dataset"])
    return None


def list_recipes(pattern: str | None = None) -> list[RecipeInfo]:
    """Every packaged recipe, then every sweep file, by name; ``pattern`` is a glob over names."""
    root = recipes_root()
    infos = []
    for name in _names():
        if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
            continue
        path = root / f"{name}{SUFFIX}"
        kind = _kind(name)
        infos.append(
            RecipeInfo(
                name=name,
                path=path,
                description=_description(path),
                paper=PAPERS.get(name.split("/", 1)[0], "-"),
                dataset=_dataset(load_recipe(path)) if kind == "recipe" else None,
                kind=kind,
            )
        )
    return sorted(infos, key=lambda info: (info.kind != "recipe", info.name))


def copy_recipe(
    name_or_path: str | os.PathLike, folder: str | os.PathLike, force: bool = False
) -> list[Path]:
    """Write an editable copy of a recipe and the files it includes into ``folder`` and return the paths
    written, the recipe's first.

    The recipe and the files it includes by path keep their layout below their common folder (a recipe
    without ``base`` lands as ``folder/<file name>``); a packaged recipe included by name lands as
    ``folder/<name>.yaml`` and the ``base:`` line naming it is rewritten to its relative path, so
    that the copy reads its own files. Existing files are kept unless ``force``.
    """
    chain = _chain(find_recipe(name_or_path))
    first_named = next((i for i, (_, _, by_name) in enumerate(chain) if by_name), len(chain))
    common = Path(os.path.commonpath([p.parent for p, _, _ in chain[:first_named]]))
    root = Path(os.path.abspath(recipes_root()))
    targets = [
        Path(folder) / (source.relative_to(common) if i < first_named else source.relative_to(root))
        for i, (source, _, _) in enumerate(chain)
    ]
    clash = next((t for i, t in enumerate(targets) if t in targets[:i]), None)
    if clash is not None:
        raise ConfigError(
            f"vqa recipes copy: two of the files {name_or_path} reads would be written to {clash}"
        )
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise ConfigError(f"{', '.join(existing)} already {verb}: --force overwrites")
    for i, (source, cfg, _) in enumerate(chain):
        text = source.read_bytes()
        if i + 1 < len(chain) and chain[i + 1][2]:
            text = _pin_base(text, cfg["base"], os.path.relpath(targets[i + 1], targets[i].parent))
        targets[i].parent.mkdir(parents=True, exist_ok=True)
        targets[i].write_bytes(text)
    return targets


def _pin_base(text: bytes, name: str, relative: str) -> bytes:
    """``text`` with its ``base: NAME`` line naming ``relative`` (a path from the file's folder) instead."""
    lines = text.decode("utf-8").splitlines(keepends=True)
    path = relative if relative.startswith("../") else f"./{relative}"
    for i, line in enumerate(lines):
        if line.startswith("base:"):
            newline = line[len(line.rstrip("\r\n")) :]
            lines[i] = f"base: {path}  # was: base: {name}{newline}"
            break
    return "".join(lines).encode("utf-8")
