"""The package's import rules, checked statically (``ast``; nothing is imported, imports inside functions count).

1. No import cycle between modules of ``vqa_components``.
2. A part folder (one kind of part each) imports no module of another part folder, and none of the
   assembler and tools above the parts (``model``, ``pipeline``, ``model_folder``, ``inference``,
   ``demo``, ``cli``, ``cli_common``, ``lightning_cli``, ``profiler``, ``viz``, ``sweep/``, ``shards/``).
3. Every other module is shared by the kinds (``interfaces``, ``registry``, ``weights``,
   ``tokenizers``, ``errors``, ``layers/``, ``metrics/``, ...): it imports no part folder and
   nothing above the parts.
4. ``layers/``, ``metrics/`` and ``errors`` sit below ``interfaces``: they do not import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vqa_components

PACKAGE = "vqa_components"
ROOT = Path(vqa_components.__file__).parent
PART_FOLDERS = ("backbones", "text", "samplers", "fusion", "heads", "objectives", "data")
ABOVE_PARTS = (
    "model", "pipeline", "model_folder", "model_card", "inference", "demo", "cli", "cli_common", "lightning_cli",
    "profiler", "viz", "sweep", "shards",
)
BELOW_INTERFACES = ("layers", "metrics", "errors")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its file (inside functions too)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the module pkg.sub when there is one, else a name of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import pkg.mod.attr` style: keep the module part
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def area(module: str) -> str:
    """The first component below the package: a folder (``text``) or a top-level module (``model``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        here = area(module)
        for target in sorted(targets):
            there = area(target)
            if here in PART_FOLDERS and there != here and (there in PART_FOLDERS or there in ABOVE_PARTS):
                found.append(f"{module} (a {here} part) imports {target}")
            shared = here not in PART_FOLDERS and here not in ABOVE_PARTS and here != ""
            if shared and (there in PART_FOLDERS or there in ABOVE_PARTS):
                found.append(f"{module} (shared) imports {target}")
            if here in BELOW_INTERFACES and there == "interfaces":
                found.append(f"{module} (below interfaces) imports {target}")
    return found


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert (
        "vqa_components.interfaces" in graph["vqa_components.backbones.blind"]
    )  # top-level `from x import y`
    assert "vqa_components.weights" in graph["vqa_components.model"]  # `from pkg import submodule`
    assert "vqa_components.lightning_cli" in graph["vqa_components.cli"]  # inside a function


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_folders_import_only_what_they_may():
    found = violations(import_graph())
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"vqa_components.a": {"vqa_components.b"}, "vqa_components.b": {"vqa_components.a"}}, True),
        ({"vqa_components.a": {"vqa_components.b"}, "vqa_components.b": set()}, False),
    ],
)
def test_find_cycle_finds_a_two_module_cycle(graph, expected):
    assert (find_cycle(graph) is not None) == expected


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("vqa_components.text.t5", "vqa_components.backbones.open_clip"),
        ("vqa_components.objectives.svq", "vqa_components.model"),
        ("vqa_components.metrics", "vqa_components.interfaces"),
        ("vqa_components.layers.transformer", "vqa_components.heads.retrieval"),
        ("vqa_components.weights", "vqa_components.backbones"),
        ("vqa_components.tokenizers", "vqa_components.text.t5"),
        ("vqa_components.layers.pixels", "vqa_components.interfaces"),
    ],
)
def test_a_forbidden_import_is_reported(module, target):
    assert violations({module: {target}})
