"""The model's objectives, kept by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from vqa_components.interfaces import ModelOutput
from vqa_components.objectives.masked_pass import check_masked_pass, masked_forward


class ObjectiveDict(nn.ModuleDict):
    """The model's objectives, keyed by name (their registry name; ``vtm_2`` for a second ``vtm``),
    so that their weights sit at ``objectives.<name>.*`` in checkpoints whatever the list's order.
    Iterating gives the objectives in recipe order, like a list, and ``objectives[0]`` is the first.

    ``masked_pass`` says which forward the objectives read (:meth:`model_output`): ``"separate"``, the
    model's default forward, each masking objective running its own masked pass; ``"single"``, one
    forward on the inputs every masking objective masked (E-ViLM's Fig. 3;
    :mod:`vqa_components.objectives.masked_pass` says why this switch belongs to the set).
    """

    masked_pass: str = "separate"

    def __iter__(self):  # type: ignore[override]
        return iter(self.values())

    def __getitem__(self, key: int | str) -> nn.Module:  # type: ignore[override]
        return list(self.values())[key] if isinstance(key, int) else super().__getitem__(key)

    @classmethod
    def of(cls, objectives: Sequence[nn.Module], masked_pass: str = "separate") -> ObjectiveDict:
        """``objectives`` in recipe order, each under :func:`objective_key`."""
        out = cls()
        out.masked_pass = check_masked_pass(masked_pass)
        for obj in objectives:
            out[objective_key(obj, list(out.keys()))] = obj
        return out

    def model_output(self, model: nn.Module, batch: dict[str, Any]) -> ModelOutput | None:
        """The forward the objectives read this step: ``None`` when none runs the model's forward
        (``runs_model_forward``); the backbone alone when every one that does reads only the video
        features (``reads_only_video``: no text encoder, fusion or head is paid for and thrown away);
        else the default forward or the single masked one (``masked_pass``)."""
        if not model.runs_forward:
            return None
        if self.masked_pass == "single":
            return masked_forward(model, batch, self)
        readers = [o for o in self if getattr(o, "runs_model_forward", True)]
        if all(getattr(o, "reads_only_video", False) for o in readers):
            return ModelOutput(video=model.encode_video(batch["video"], batch), text=None, fused=None, head=None)
        return model(batch)


def objective_key(obj: nn.Module, taken: Sequence[str]) -> str:
    """The name an objective is kept under: its registry name (else its class name, lower case),
    with ``_2``, ``_3``, ... for a second, third objective of the same name."""
    base = getattr(obj, "registry_name", "") or type(obj).__name__.lower()
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name
