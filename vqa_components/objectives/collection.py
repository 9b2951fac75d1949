"""The model's objectives, kept by name."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class ObjectiveDict(nn.ModuleDict):
    """The model's objectives, keyed by name (their registry name; ``vtm_2`` for a second ``vtm``),
    so that their weights sit at ``objectives.<name>.*`` in checkpoints whatever the list's order.
    Iterating gives the objectives in recipe order, like a list, and ``objectives[0]`` is the first.
    """

    def __iter__(self):  # type: ignore[override]
        return iter(self.values())

    def __getitem__(self, key: int | str) -> nn.Module:  # type: ignore[override]
        return list(self.values())[key] if isinstance(key, int) else super().__getitem__(key)

    @classmethod
    def of(cls, objectives: Sequence[nn.Module]) -> ObjectiveDict:
        """``objectives`` in recipe order, each under :func:`objective_key`."""
        out = cls()
        for obj in objectives:
            out[objective_key(obj, list(out.keys()))] = obj
        return out


def objective_key(obj: nn.Module, taken: Sequence[str]) -> str:
    """The name an objective is kept under: its registry name (else its class name, lower case),
    with ``_2``, ``_3``, ... for a second, third objective of the same name."""
    base = getattr(obj, "registry_name", "") or type(obj).__name__.lower()
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name
