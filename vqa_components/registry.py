"""Registries of interchangeable parts, and plugin discovery.

Every kind of part (``backbone``, ``text_encoder``, ``sampler``, ``fusion``,
``head``, ``objective``, ``dataset``) has one :class:`Registry`. A part registers
under a stable snake_case name::

    from vqa_components.registry import FUSIONS

    @FUSIONS.register("my_fusion")
    class MyFusion(Fusion):
        ...

Lookups of an unknown name raise :class:`UnknownPartError`, which names the
registry, the closest matches and every valid name. Registering a name twice
raises :class:`DuplicatePartError`, naming both modules.

Plugins: every installed distribution that declares an entry point in the group
``vqa_components.plugins`` is imported once, before the first lookup or listing.
Importing it is enough for its ``@register`` decorators to run. A plugin that
fails to import is reported with a warning that names it; everything else keeps
working. Set ``VQA_COMPONENTS_NO_PLUGINS=1`` to turn auto-loading off.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger(__name__)

PLUGIN_GROUP = "vqa_components.plugins"
NO_PLUGINS_ENV = "VQA_COMPONENTS_NO_PLUGINS"


class RegistryError(LookupError):
    """Base class of registry errors; its message is one line meant for users."""


class UnknownPartError(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicatePartError(RegistryError, ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Callable[..., Any]
    kind: str

    @property
    def qualname(self) -> str:
        return f"{self.obj.__module__}.{self.obj.__qualname__}"

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.obj) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """Name -> class (or builder function) for one kind of part."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if not name.isidentifier() or name != name.lower():
            raise ValueError(f"{self.kind} name {name!r} must be a snake_case identifier")

        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            old = self._entries.get(name)
            if old is not None and old.obj is not obj:
                new_q = f"{obj.__module__}.{obj.__qualname__}"
                if old.qualname != new_q:  # re-import of the same module is not a clash
                    raise DuplicatePartError(
                        f"{self.kind} {name!r} is already registered by {old.qualname}; "
                        f"{new_q} tries to register it again"
                    )
            self._entries[name] = Entry(name, obj, self.kind)
            obj.registry_name = name  # type: ignore[attr-defined]
            return obj

        return deco

    def _ensure_loaded(self) -> None:
        import_builtin_parts()
        load_plugins()

    def get(self, name: str) -> Callable[..., Any]:
        self._ensure_loaded()
        try:
            return self._entries[name].obj
        except KeyError:
            raise UnknownPartError(self._unknown_message(name)) from None

    def _unknown_message(self, name: str) -> str:
        names = sorted(self._entries)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        if close:
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?"
        else:  # nothing really close: still name the nearest few
            nearest = difflib.get_close_matches(name, names, n=3, cutoff=0.0)
            hint = f" Closest: {', '.join(repr(c) for c in nearest)}." if nearest else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid {self.kind} names: {', '.join(names)}"

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def entries(self, pattern: str = "*") -> list[Entry]:
        self._ensure_loaded()
        return [e for n, e in sorted(self._entries.items()) if fnmatch.fnmatch(n, pattern)]

    def names(self, pattern: str = "*") -> list[str]:
        return [e.name for e in self.entries(pattern)]

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} parts)"


BACKBONES = Registry("backbone")
TEXT_ENCODERS = Registry("text_encoder")
SAMPLERS = Registry("sampler")
FUSIONS = Registry("fusion")
HEADS = Registry("head")
OBJECTIVES = Registry("objective")
DATASETS = Registry("dataset")

REGISTRIES: dict[str, Registry] = {
    r.kind: r for r in (BACKBONES, TEXT_ENCODERS, SAMPLERS, FUSIONS, HEADS, OBJECTIVES, DATASETS)
}


def get_registry(kind: str) -> Registry:
    try:
        return REGISTRIES[kind]
    except KeyError:
        close = difflib.get_close_matches(kind, list(REGISTRIES), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownPartError(
            f"unknown kind of part {kind!r}.{hint} Valid kinds: {', '.join(REGISTRIES)}"
        ) from None


_BUILTIN_PACKAGES = (
    "backbones",
    "text",
    "samplers",
    "fusion",
    "heads",
    "objectives",
    "data",
)
_builtins_imported = False


def import_builtin_parts() -> None:
    """Import every built-in part (the modules each kind's package names in ``PARTS``) so that its
    decorators run (once). The packages import none of their parts themselves, so that importing one
    part does not import the others and their libraries (``vqa ask`` builds only the parts of the
    model it answers with)."""
    global _builtins_imported
    if _builtins_imported:
        return
    _builtins_imported = True
    for pkg in _BUILTIN_PACKAGES:
        for module in importlib.import_module(f"vqa_components.{pkg}").PARTS:
            importlib.import_module(f"vqa_components.{pkg}.{module}")


_plugins_loaded = False
loaded_plugins: dict[str, str] = {}
failed_plugins: dict[str, str] = {}


def load_plugins(force: bool = False) -> dict[str, str]:
    """Import every ``vqa_components.plugins`` entry point once.

    Returns ``{entry point name: module}`` of the plugins that loaded. A plugin
    that raises on import is skipped with a warning that names it.
    """
    global _plugins_loaded
    if _plugins_loaded and not force:
        return loaded_plugins
    _plugins_loaded = True
    if os.environ.get(NO_PLUGINS_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        log.info("plugin auto-loading is off (%s is set)", NO_PLUGINS_ENV)
        return loaded_plugins
    for ep in entry_points(group=PLUGIN_GROUP):
        dist = getattr(ep.dist, "name", "?")
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not break the library
            failed_plugins[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"vqa_components plugin {ep.name!r} ({ep.value}, from {dist}) failed to load "
                f"and is skipped: {type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        loaded_plugins[ep.name] = ep.value
        log.info("loaded vqa_components plugin %r (%s, from %s)", ep.name, ep.value, dist)
    return loaded_plugins


def list_parts(kind: str | None = None, pattern: str = "*") -> dict[str, list[Entry]]:
    """``{kind: [Entry, ...]}`` of every part whose name matches ``pattern``."""
    kinds = [kind] if kind else list(REGISTRIES)
    return {k: get_registry(k).entries(pattern) for k in kinds}


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Build a registered part: ``create("fusion", "cross_attention", dim=128)``."""
    return get_registry(kind).build(name, **kwargs)
