"""Sharded training (FSDP) of a model assembled from parts: ``--trainer.strategy vqa_fsdp``.

Lightning's ``FSDPStrategy`` with the auto-wrap policy read from the model's parts, for the
configurations whose weights, gradients and AdamW states do not fit one GPU (co-tokenization with
T5-large or T5-3B; VideoDistill with its backbone unfrozen: ``docs/scaling.md``)::

    VideoQAModel ─────────────────────── the root FSDP unit: every weight outside a block
      ├ backbone      open_clip: ResidualAttentionBlock ×12 ── one FSDP unit each
      ├ text_encoder  t5: T5Block ×24 ─────────────────────── one FSDP unit each
      ├ fusion        co_tokenizer: TransformerBlock ×3 ────── one FSDP unit each
      └ head          text_decoder: T5Block ×24 ───────────── one FSDP unit each

**Which modules are units** (:func:`fsdp_units`). A part says which of its module classes are its
repeated blocks with a class attribute ``fsdp_blocks`` (class names, matched against
``type(module).__name__`` inside that part only, so timm's generic ``Block`` names nothing outside
a timm part); every module of the model that declares it is read, so the backbones inside
``multi_stream`` speak for themselves. A part that declares nothing (a plugin's, the samplers',
the objectives' inner networks, a timm architecture that none of the declared names fits) gets the
fallback: the children of the outermost ``nn.ModuleList``/``nn.Sequential`` whose two or more
children are all of one class and hold parameters. ``fsdp_blocks = ()`` says "no blocks". Each
unit's weights are gathered only while it runs; everything else (embeddings, projections,
classifier, LM head) is in the root unit, gathered for the whole step. Whole parts are not units
on purpose: a part's methods other than ``forward`` (``text_decoder.generate`` in evaluation)
read its weights outside its ``forward``, which FSDP would have left sharded.

**Frozen parts.** Lightning's FSDP sets ``use_orig_params=True``, with which torch's FSDP accepts
frozen and trainable parameters in one unit; a block inside a frozen part is a unit of frozen
parameters only (no gradient memory), and only the root unit mixes both (a frozen backbone's
patch embedding, next to trainable heads: their gradient slots are allocated, unused).

**On a CPU** (``--trainer.accelerator cpu``, gloo) it runs as on GPUs: Lightning refuses its own
``fsdp`` strategy without a GPU and passes FSDP no device on a CPU, which torch then refuses; this
strategy passes ``device_id=cpu``. The tests train a recipe with 2 CPU processes this way.

**Gradient clipping** (``gradient_clip_val``, every paper recipe): Lightning's FSDP plugin refuses
to clip by norm; here the norm is that of the full gradient (``FullyShardedDataParallel.clip_grad_norm_``
over the shards of every rank), as one process would clip it.

**Checkpoints**: ``state_dict_type: full`` (the default): rank 0 writes one ordinary Lightning
checkpoint, which ``vqa test/export --ckpt_path`` reads in one process. ``sharded`` writes a folder
of one file per rank (faster for T5-3B); ``python -m lightning.pytorch.utilities.consolidate_checkpoint
FOLDER`` turns it into one file.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from lightning.fabric.strategies.registry import _StrategyRegistry
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision.fsdp import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy, StrategyRegistry
from torch import nn

log = logging.getLogger(__name__)

STRATEGY_NAME = "vqa_fsdp"
# FSDP keeps BatchNorm in fp32 as units of their own: its design, said on every rank at every start
warnings.filterwarnings("ignore", message=r"(?s).*will be wrapped as separate FSDP instances with mixed precision")
_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


# ------------------------------------------------------------------ which modules are units
def declared_blocks(module: nn.Module) -> tuple[str, ...] | None:
    """The block class names ``module`` declares (``fsdp_blocks``), or ``None`` when it declares nothing."""
    names = getattr(module, "fsdp_blocks", None)
    return None if names is None else tuple(names)


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """The fallback: the children of each outermost ``ModuleList``/``Sequential`` inside ``module``
    whose two or more children are all of one (non-container) class and hold parameters. Modules
    that declare ``fsdp_blocks`` are not looked into (they answer for themselves)."""
    found: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        kids = [k for k in m.children() if declared_blocks(k) is None]
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(kids) >= 2 and len(kids) == len(m):
            kinds = {type(k) for k in kids}
            if len(kinds) == 1 and not issubclass(kinds.pop(), _CONTAINERS) and all(map(_has_params, kids)):
                found.extend(kids)
                return
        for k in kids:
            visit(k)

    visit(module)
    return found


def _units(owner: nn.Module) -> list[nn.Module]:
    """The units inside ``owner`` (a part, or a module inside one that declares ``fsdp_blocks``)."""
    names = declared_blocks(owner)
    nested: list[nn.Module] = []
    own: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for k in m.children():
            if declared_blocks(k) is not None:
                nested.append(k)  # answers for itself
            elif names and type(k).__name__ in names:
                own.append(k)
            else:
                visit(k)

    visit(owner)
    if names is None or (names and not own):
        own = repeated_blocks(owner)
    return own + [u for n in nested for u in _units(n)]


def _parts(model: nn.Module) -> Iterator[nn.Module]:
    """The model's top-level parts: backbone, text encoder, ..., each objective."""
    for child in model.children():
        yield from child.values() if isinstance(child, nn.ModuleDict) else [child]


def fsdp_units(model: nn.Module) -> dict[str, nn.Module]:
    """``{path: module}`` of the modules that become FSDP units, in the model's order (see the module doc).

    A module that declares ``fsdp_blocks`` answers for everything inside it, nested declaring
    modules excepted (they answer for themselves); a part that declares nothing gets
    :func:`repeated_blocks`, and so does a declaration whose names match nothing in its module (a
    timm part built from an architecture it does not list).
    """
    chosen = {id(u) for part in _parts(model) if _has_params(part) for u in _units(part)}
    return {path: m for path, m in model.named_modules() if id(m) in chosen}


def auto_wrap_policy(model: nn.Module) -> Any:
    """The auto-wrap policy of ``model``: a ``CustomPolicy`` that wraps exactly :func:`fsdp_units`."""
    from torch.distributed.fsdp.wrap import CustomPolicy

    ids = {id(m) for m in fsdp_units(model).values()}
    return CustomPolicy(lambda module: id(module) in ids)


def describe_units(model: nn.Module) -> list[dict[str, Any]]:
    """One row per unit: ``path``, ``block`` (class name), ``params``, ``trainable`` (a plan, no FSDP needed)."""
    return [
        {"path": p, "block": type(m).__name__, "params": sum(x.numel() for x in m.parameters()),
         "trainable": sum(x.numel() for x in m.parameters() if x.requires_grad)}
        for p, m in fsdp_units(model).items()
    ]


# ------------------------------------------------------------------ the strategy
class _ShardedNormClipping(FSDPPrecision):
    """Lightning's FSDP precision plugin, with clipping by the norm of the full gradient, autocasting
    on the strategy's device (a CPU too)."""

    def __init__(self, precision: Any, scaler: Any = None) -> None:
        super().__init__(precision, scaler)
        self.root: Any = None  # the root FullyShardedDataParallel module, set by the strategy
        self.device_type = "cuda"  # the strategy's device type (Lightning's plugin autocasts on "cuda" only)

    def forward_context(self) -> Any:
        if "mixed" in self.precision:
            return torch.autocast(self.device_type, dtype=torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16)
        return super().forward_context()

    def clip_grad_by_norm(self, optimizer: Any, clip_val: float) -> None:
        assert self.root is not None, "the strategy sets the root FSDP module before the first step"
        self.root.clip_grad_norm_(clip_val)


class _RootGathered(Callback):
    """The first (``opens``) and last of the trainer's callbacks at each evaluation batch end: between
    them the root unit's weights are gathered, for callbacks that run a part outside the model's
    forward (the answer metrics run ``text_decoder.generate``; its blocks gather themselves)."""

    def __init__(self, strategy: VQAFSDPStrategy, opens: bool) -> None:
        self.strategy, self.opens = strategy, opens

    def _batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        self.strategy._gather_root(self.opens)

    on_validation_batch_end = on_test_batch_end = on_predict_batch_end = _batch_end


class VQAFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with the parts' auto-wrap policy (:func:`auto_wrap_policy`), on
    GPUs and on a CPU (gloo), clipping by the full gradient's norm.

    Every ``FSDPStrategy`` argument is accepted (``sharding_strategy``, ``state_dict_type``,
    ``cpu_offload``, ...); an explicit ``auto_wrap_policy`` replaces the parts' policy.

    Args:
        activation_checkpointing_blocks: recompute each unit's activations in the backward
            (``torch.distributed.algorithms._checkpoint``): less activation memory, one more
            forward of every block.
    """

    strategy_name = STRATEGY_NAME
    _registered_strategies: ClassVar[list[str]] = []  # its own: Lightning's GPU-only check reads FSDPStrategy's

    def __init__(self, *args: Any, activation_checkpointing_blocks: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.activation_checkpointing_blocks = activation_checkpointing_blocks

    @property
    def precision_plugin(self) -> FSDPPrecision:
        return FSDPStrategy.precision_plugin.fget(self)

    @precision_plugin.setter
    def precision_plugin(self, plugin: Any) -> None:
        if isinstance(plugin, FSDPPrecision) and not isinstance(plugin, _ShardedNormClipping):
            plugin = _ShardedNormClipping(plugin.precision, plugin.scaler)
        FSDPStrategy.precision_plugin.fset(self, plugin)

    def setup(self, trainer: Any) -> None:
        super().setup(trainer)
        self._gathered: contextlib.ExitStack | None = None
        trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, _RootGathered)]
        trainer.callbacks[:] = [_RootGathered(self, True), *trainer.callbacks, _RootGathered(self, False)]

    def _gather_root(self, gather: bool) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self._gathered is not None:
            self._gathered.close()
            self._gathered = None
        if gather and isinstance(self.model, FullyShardedDataParallel):
            self._gathered = contextlib.ExitStack()
            self._gathered.enter_context(FullyShardedDataParallel.summon_full_params(self.model, recurse=False, writeback=False))

    def _device_id(self) -> Any:
        """What FSDP is given as ``device_id``: the GPU's index, or the CPU device itself."""
        device = self.root_device
        return device if device.type == "cpu" else device.index

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from lightning.pytorch.strategies.fsdp import (
            _move_torchmetrics_to_device,
            _setup_activation_checkpointing,
        )
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return super()._setup_model(model)  # wrapped by the user's configure_model
        if "auto_wrap_policy" not in self.kwargs:
            self.kwargs["auto_wrap_policy"] = auto_wrap_policy(self.lightning_module)
            rows = describe_units(self.lightning_module)
            log.info("vqa_fsdp: %d FSDP units (%s)", len(rows), ", ".join(sorted({r["block"] for r in rows})) or "none")
        if self.activation_checkpointing_blocks and not self._activation_checkpointing_kwargs:
            self._activation_checkpointing_kwargs = {"auto_wrap_policy": auto_wrap_policy(self.lightning_module)}
        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self._device_id(),
            **self.kwargs,
        )
        _move_torchmetrics_to_device(wrapped, self.root_device)
        _setup_activation_checkpointing(wrapped, self._activation_checkpointing_kwargs)
        plugin = self.precision_plugin
        if isinstance(plugin, _ShardedNormClipping):
            plugin.root, plugin.device_type = wrapped, self.root_device.type
        return wrapped

    @classmethod
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        if STRATEGY_NAME in strategy_registry:
            return
        strategy_registry.register(
            STRATEGY_NAME, cls, description="FSDP with an auto-wrap policy from the model's parts (vqa_components.fsdp)"
        )
        cls._registered_strategies.append(STRATEGY_NAME)


def register() -> None:
    """Make ``--trainer.strategy vqa_fsdp`` known to Lightning (idempotent; done at import)."""
    if torch.distributed.is_available():
        VQAFSDPStrategy.register_strategies(StrategyRegistry)


register()
