"""PyTorchVideo's published X3D weights -> the state dict of our :class:`~vqa_components.backbones.x3d.X3D`.

PyTorchVideo's model zoo publishes Kinetics-400 X3D-XS, S, M and L
(``https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/X3D_{XS,S,M,L}.pyth``): training
files holding the weights under ``model_state``. ``torch.hub.load("facebookresearch/pytorchvideo",
"x3d_m", pretrained=True)`` loads the same weights; its ``state_dict()`` saved with ``torch.save``
is a plain state dict with the same keys. Both are built by ``pytorchvideo.models.x3d.create_x3d``
(XS 4x160², S 13x160², M 16x224² with depth factor 2.2; L 16x312² with 5.0), a ``Net`` whose
``blocks`` are the stem, four stages and the head. The names map one to one::

    PyTorchVideo (create_x3d)                          ours (X3D)
    blocks.0.conv.conv_t       (1x3x3: the spatial conv) stem.conv_xy
    blocks.0.conv.conv_xy      (5x1x1: the temporal one) stem.conv_t
    blocks.0.norm                                        stem.bn
    blocks.S.res_blocks.J.branch1_conv / branch1_norm    stages.{S-1}.J.branch1 / branch1_bn
                         .branch2.conv_a / norm_a                   .a / a_bn
                         .branch2.conv_b / norm_b.0                 .b / b_bn
                         .branch2.norm_b.1.block.0 / .2             .se.fc1 / se.fc2
                         .branch2.conv_c / norm_c                   .c / c_bn
    blocks.H.pool.pre_conv / pre_norm                    conv_5 / conv_5_bn       (H = stages + 1)
    blocks.H.pool.post_conv                              head.lin_5               (``keep_head`` only)
    blocks.H.proj                                        head.projection          (``keep_head`` only)

PyTorchVideo's stem builder hands its spatial conv to ``Conv2plus1d`` as ``conv_t`` and its temporal
conv as ``conv_xy``, and ``Conv2plus1d`` runs ``conv_t`` first: the names are swapped, the order is
the paper's (spatial, then temporal). ``ProjectedPool``'s ``pre_conv``/``pre_norm`` (and its ReLU)
are X3D's conv5, which ends our backbone.

**Dropped by default: the classification head** (``pool.post_conv``, the 1x1x1 conv 432 -> 2048,
and ``proj``, the linear layer to the 400 Kinetics classes). Our backbone's ``forward`` returns the
conv5 features and never runs it, and a VideoQA model has its own head; with ``keep_head=True``
(what an :class:`X3D` built with ``num_classes`` asks for) it becomes ``head.lin_5`` and
``head.projection``, which at the training input size compute PyTorchVideo's logits (PyTorchVideo
returns their softmax).

**One layer PyTorchVideo does not have**: it puts no batch norm after a shortcut projection that
changes only the resolution (the first block of stage 1 at the presets' widths, 24 -> 24 with
stride 2); SlowFast does. Our X3D follows SlowFast unless built with ``layout="pytorchvideo"``,
which it picks by itself when its ``checkpoint`` is such a file. The converter maps what the file
has and invents nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from torch import Tensor

from vqa_components.interfaces import ConfigError
from vqa_components.weights import read_checkpoint, read_state_dict, resolve_checkpoint_file

log = logging.getLogger(__name__)

_STEM = {"conv.conv_t.": "stem.conv_xy.", "conv.conv_xy.": "stem.conv_t.", "norm.": "stem.bn."}
_BLOCK = {
    "branch1_conv.": "branch1.",
    "branch1_norm.": "branch1_bn.",
    "branch2.conv_a.": "a.",
    "branch2.norm_a.": "a_bn.",
    "branch2.conv_b.": "b.",
    "branch2.norm_b.0.": "b_bn.",
    "branch2.norm_b.1.block.0.": "se.fc1.",
    "branch2.norm_b.1.block.2.": "se.fc2.",
    "branch2.conv_c.": "c.",
    "branch2.norm_c.": "c_bn.",
}
_CONV5 = {"pool.pre_conv.": "conv_5.", "pool.pre_norm.": "conv_5_bn."}
_HEAD = {"pool.post_conv.": "head.lin_5.", "proj.": "head.projection."}
_TOP = re.compile(r"blocks\.(\d+)\.(.+)")
_RES = re.compile(r"res_blocks\.(\d+)\.(.+)")
_LEAF = re.compile(r"[A-Za-z_]+")  # weight, bias, running_mean, running_var, num_batches_tracked


def is_pytorchvideo_x3d(state: Mapping[str, object]) -> bool:
    """Whether ``state`` has PyTorchVideo's ``Net`` layout (``blocks.N.*``) rather than ours."""
    return any(str(k).startswith("blocks.") for k in state)


def _renamed(rest: str, table: Mapping[str, str], prefix: str = "") -> str | None:
    for theirs, ours in table.items():
        if rest.startswith(theirs) and _LEAF.fullmatch(rest[len(theirs) :]):
            return prefix + ours + rest[len(theirs) :]
    return None


def _key_map(keys: Iterable[str], keep_head: bool) -> dict[str, str | None]:
    """Each PyTorchVideo X3D key -> our key (the module docstring's table), ``None`` for a key of the
    classifier dropped (``keep_head=False``), ``""`` for a key with no counterpart."""
    keys = list(keys)
    # the head is the block holding ProjectedPool (``pool.*``) and the classifier (``proj.*``)
    heads = {m[1] for k in keys if (m := _TOP.fullmatch(k)) and m[2].startswith(("pool.", "proj."))}
    out: dict[str, str | None] = {}
    for key in keys:
        top = _TOP.fullmatch(key)
        ours: str | None = ""
        if top is None:
            pass
        elif top[1] == "0":
            ours = _renamed(top[2], _STEM) or ""
        elif top[1] in heads:
            if not (ours := _renamed(top[2], _CONV5) or ""):
                classifier = top[2].startswith(("pool.post_", "proj."))
                ours = None if classifier and not keep_head else _renamed(top[2], _HEAD) or ""
        elif res := _RES.fullmatch(top[2]):
            ours = _renamed(res[2], _BLOCK, f"stages.{int(top[1]) - 1}.{res[1]}.") or ""
        out[key] = ours
    return out


def convert_pytorchvideo_x3d(
    state: Mapping[str, Tensor], *, keep_head: bool = False, source: str = "state dict"
) -> dict[str, Tensor]:
    """A PyTorchVideo X3D state dict (``create_x3d``; the model zoo's ``model_state``) in our names.

    Args:
        state: PyTorchVideo's keys (``blocks.0.conv.conv_t.weight``, ...) -> tensors.
        keep_head: keep the Kinetics classifier (``head.lin_5``, ``head.projection``); by default it
            is dropped (the module docstring says why).
        source: what ``state`` was read from (a file), for the error.

    Shapes are not checked here (the strict load into an :class:`X3D` checks them, naming the file).
    Raises :class:`~vqa_components.interfaces.ConfigError` naming ``source`` and the keys that have no
    counterpart in our X3D.
    """
    names = _key_map(state, keep_head)
    unknown = [k for k, ours in names.items() if ours == ""]
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise ConfigError(
            f"x3d: {source}: PyTorchVideo X3D key(s) with no counterpart in our X3D: "
            f"{', '.join(unknown[:5])}{more} (expected pytorchvideo.models.x3d.create_x3d's layout)"
        )
    dropped = [k for k, ours in names.items() if ours is None]
    if dropped:
        log.info("x3d: %s: dropping PyTorchVideo's classification head (%s)", source, ", ".join(dropped))
    return {ours: state[k] for k, ours in names.items() if ours}


def read_x3d_checkpoint(checkpoint: str | Path, what: str) -> tuple[Path, dict[str, Tensor]]:
    """The file ``checkpoint`` names and its state dict, with PyTorchVideo's ``model_state`` unwrapped
    (keys as in the file). Torch files are read with ``weights_only=True`` (no code runs)."""
    path = resolve_checkpoint_file(checkpoint, owner="x3d")
    state = read_state_dict(path, what)
    if not state:  # only non-tensor entries: a training file (PyTorchVideo, SlowFast) keeps them nested
        raw = read_checkpoint(path)
        nested = raw.get("model_state") if isinstance(raw, Mapping) else None
        if not isinstance(nested, Mapping):
            top = ", ".join(map(str, raw)) if isinstance(raw, Mapping) else type(raw).__name__
            raise ConfigError(f"x3d: checkpoint {path} holds no weights (top-level entries: {top})")
        state = {str(k): v for k, v in nested.items() if isinstance(v, Tensor)}
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module.") :]: v for k, v in state.items()}
    return path, state


def stage_depths(state: Iterable[str]) -> list[int]:
    """Blocks per stage of a state dict in our names (``stages.S.J.*``)."""
    found: dict[int, int] = {}
    for key in state:
        parts = key.split(".")
        if parts[0] == "stages" and len(parts) > 2 and parts[1].isdigit() and parts[2].isdigit():
            found[int(parts[1])] = max(found.get(int(parts[1]), 0), int(parts[2]) + 1)
    return [found.get(s, 0) for s in range(max(found) + 1)] if found else []
