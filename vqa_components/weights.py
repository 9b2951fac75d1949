"""Weight files: how they are named, found and read, and how they are loaded into a part.

Every kind of part (backbones, text encoders, heads, ...) and the model read weights through this
module, so that there is one reader and one error for a file that does not fit:

* **Naming**: the file names looked for in a checkpoint folder (:data:`CHECKPOINT_FILE_NAMES`,
  :data:`TIMM_WEIGHT_FILES`, :data:`HF_WEIGHT_FILES`).
* **Resolving**: a local file or folder to the one file to read (:func:`resolve_checkpoint_file`),
  a local model folder (:func:`local_path`). Nothing is ever downloaded.
* **Reading**: :func:`read_checkpoint` (a torch file, always with ``weights_only=True``: no file
  can run code when it is loaded) and :func:`read_state_dict` (also ``.safetensors``, training
  checkpoints holding ``state_dict``, OpenAI's TorchScript CLIP archives; a DDP ``module.``
  prefix is stripped).
* **Loading into a part**: :func:`state_mismatch`, :func:`load_strict` (one
  :class:`~vqa_components.interfaces.ConfigError` naming the file and every mismatch) and
  :func:`load_weights` (resolve, read, adapt the keys, load strictly).

* **The model's weights**: ``init_from`` / ``init_parts`` / ``init_rename`` (:func:`init_from`,
  :func:`load_parts`), :func:`freeze` and :func:`idle_parts`, the check that no frozen part keeps
  its random initialisation (:func:`check_frozen_parts_have_weights`), where a module's weights came
  from (:func:`weights_source`), checkpoints of older versions (:func:`migrate_objective_keys`) and
  what a checkpoint may hold to stay readable with ``weights_only=True`` (:func:`loadable_hparams`).
  Parts inside the model are named by dotted paths (:func:`module_at`: ``objectives.mvm.tagger``).

::

    name ──────────────> file ──────────────────> state dict ─────────> part ─────────────> frozen?
    checkpoint: PATH     resolve_checkpoint_file  read_state_dict       load_strict          freeze
    init_from: PATH      (a folder: the first of  (.safetensors, .ckpt, load_parts           check_frozen_parts_
                          CHECKPOINT_FILE_NAMES)  TorchScript, module.)  (init_parts, rename)  have_weights
"""

from __future__ import annotations

import inspect
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vqa_components.interfaces import ConfigError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------- naming

#: File names looked for, in this order, when ``checkpoint`` is a folder (open_clip's first).
CHECKPOINT_FILE_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
    "model.pt",
    "model.pth",
)
#: The same for a timm model's folder (what a timm Hugging Face repository holds).
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")
#: Weight files of a ``transformers`` ``save_pretrained`` folder that ``from_pretrained`` reads (one is enough).
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Non-parameter entries found in OpenAI CLIP archives (dropped without a note).
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


# ---------------------------------------------------------------- resolving


def local_path(path: str | Path, what: str, owner: str = "hf_transformer") -> Path:
    """``path`` as a local path that exists (``what`` names the argument in the error); hub ids are refused."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"{owner}: {what} {str(path)!r} is not a local path (hub ids are not supported: "
            f"nothing is downloaded; copy the model folder to disk and pass its path)"
        )
    return p


def resolve_checkpoint_file(
    checkpoint: str | Path, names: Iterable[str] = CHECKPOINT_FILE_NAMES, owner: str = ""
) -> Path:
    """The weights file ``checkpoint`` names: the file itself, or the first of ``names`` in a folder."""
    p = Path(checkpoint).expanduser()
    prefix = f"{owner}: " if owner else ""
    if p.is_dir():
        names = tuple(names)
        for name in names:
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(
            f"{prefix}checkpoint folder {p} holds none of the expected weight files: {', '.join(names)}"
        )
    if not p.is_file():
        raise FileNotFoundError(
            f"{prefix}checkpoint file not found: {p} (a local weights file or folder; nothing is downloaded)"
        )
    return p


# ------------------------------------------------------------------ reading


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load`` a local file with ``weights_only=True`` (tensors and plain values, no code).

    Reads ``torch.save`` state dicts and the Lightning checkpoints ``vqa fit`` writes. A file that
    needs arbitrary unpickling fails with one line naming it.
    """
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next(
            (line for line in lines if "Unsupported global" in line),
            lines[0] if lines else type(exc).__name__,
        )
        raise ConfigError(
            f"could not read {path} as a weights-only torch file ({reason}); load it in Python with "
            f"torch.load(weights_only=False) only if you trust it, and save its state_dict() (torch.save or safetensors)"
        ) from exc


def read_state_dict(checkpoint: str | Path, what: str = "") -> dict[str, Tensor]:
    """Read a state dict from a local file or folder, without executing pickled code.

    Accepts ``.safetensors``, ``torch.save`` files (read with ``weights_only=True``), training
    checkpoints holding ``state_dict``, and TorchScript archives (OpenAI's original CLIP files).
    A ``module.`` prefix on every key (DDP) is stripped; non-tensor entries are dropped, except a
    module's extra state (``*_extra_state``, e.g. the bert encoder's vocabulary). A file that
    cannot be read (a damaged ``.safetensors``, a truncated zip) raises
    :class:`~vqa_components.interfaces.ConfigError` naming it (and ``what`` it was read for).
    """
    path = resolve_checkpoint_file(checkpoint)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        elif _is_torchscript_archive(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = read_checkpoint(path)
    except (ConfigError, FileNotFoundError):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"could not read weights file {path}{f' for {what}' if what else ''}: {first}"
        ) from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise ConfigError(f"checkpoint {path} does not hold a state dict (got {type(state).__name__})")
    state = {str(k): v for k, v in state.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor) and not k.endswith("_extra_state")]
    if bad:
        state = {k: v for k, v in state.items() if k not in bad}
        unexpected = [k for k in bad if k not in _OPENAI_EXTRA_KEYS]
        if unexpected:
            log.debug("checkpoint %s: ignoring non-tensor entries %s", path, unexpected)
    return state


# ------------------------------------------------------------------ loading


def _preview(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def state_mismatch(module: nn.Module, state: Mapping[str, Tensor]) -> str | None:
    """Why ``state`` does not fit ``module`` exactly (missing, unexpected, other shapes), or ``None``."""
    own = module.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shapes = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in sorted(set(own) & set(state))
        # a module's extra state (``get_extra_state``, e.g. a vocabulary) is not a tensor: it has no shape
        if isinstance(state[k], Tensor) and isinstance(own[k], Tensor) and state[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_preview(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes[:8])}")
    return "; ".join(parts) or None


def load_strict(module: nn.Module, state: Mapping[str, Tensor], path: str | Path, what: str) -> None:
    """``module.load_state_dict(state)`` with one error naming the file and every mismatch."""
    mismatch = state_mismatch(module, state)
    if mismatch:
        raise ConfigError(f"checkpoint {path} does not fit {what}: {mismatch}")
    module.load_state_dict(dict(state), strict=True)


def load_weights(
    module: nn.Module,
    checkpoint: str | Path,
    what: str,
    *,
    names: Iterable[str] = CHECKPOINT_FILE_NAMES,
    owner: str = "",
    adapt: Callable[[dict[str, Tensor]], Mapping[str, Tensor]] | None = None,
) -> Path:
    """Load a local weights file (or a folder holding one of ``names``) into ``module``, strictly.

    ``adapt`` maps the file's state dict to ``module``'s keys (drop a prefix, resize a position
    table) before the strict load. Returns the file read (what the part records as ``weights_source``).
    """
    path = resolve_checkpoint_file(checkpoint, names, owner)
    state = read_state_dict(path, what)
    if adapt is not None:
        state = dict(adapt(state))
    load_strict(module, state, path, what)
    return path


# ------------------------------------------------------- the model's weights
#: the model's parts, in the order they are listed and loaded
PART_NAMES = ("backbone", "text_encoder", "sampler", "fusion", "head", "objectives")


def part_names(model: nn.Module) -> list[str]:
    """The parts ``model`` has (those that are not ``None``)."""
    return [name for name in PART_NAMES if getattr(model, name, None) is not None]


def module_at(model: nn.Module, path: str, what: str) -> nn.Module:
    """The part or the module inside a part at the dotted ``path`` (``objectives.mvm.tagger``);
    :class:`ConfigError` naming ``what`` (the argument) and what exists there otherwise."""
    top, _, rest = path.partition(".")
    part = getattr(model, top, None) if top in PART_NAMES else None
    if part is None:
        raise ConfigError(f"{what}: model has no part {top!r}; parts: {', '.join(part_names(model))}")
    if not rest:
        return part
    try:
        return part.get_submodule(rest)
    except AttributeError:
        parent, _, _ = rest.rpartition(".")
        try:
            holder = part.get_submodule(parent) if parent else part
            inside = ", ".join(f"{path.rsplit('.', 1)[0]}.{k}" for k, _ in holder.named_children()) or "nothing"
        except AttributeError:
            inside = ", ".join(f"{top}.{k}" for k, _ in part.named_children()) or "nothing"
        raise ConfigError(f"{what}: model has no module {path!r}; there are: {inside}") from None


def freeze(model: nn.Module, paths: Iterable[str]) -> None:
    """Fix the weights of the parts or modules at ``paths`` (``requires_grad=False``); the model
    keeps them in eval mode (``VideoQAModel.train``)."""
    for path in paths:
        module_at(model, path, "freeze").requires_grad_(False)


def set_weights_source(module: nn.Module, source: str) -> None:
    """Record where ``module``'s weights came from (each objective of an objective dict on its own)."""
    module.weights_source = source
    for m in module.values() if isinstance(module, nn.ModuleDict) else module if isinstance(module, nn.ModuleList) else ():
        m.weights_source = source


def weights_source(model: nn.Module, path: str) -> str | None:
    """Where the weights of the module at ``path`` came from: its own ``weights_source``, or that of
    the nearest module above it that was loaded whole; ``None`` if they are its random init."""
    parts = path.split(".")
    source = getattr(module_at(model, path, "freeze"), "weights_source", None)
    while source is None and len(parts) > 1:
        parts.pop()
        source = getattr(module_at(model, ".".join(parts), "freeze"), "weights_source", None)
    return source


def migrate_objective_keys(state: dict[str, Tensor], names: Sequence[str]) -> dict[str, Tensor]:
    """``state`` with objective weights saved by position (``objectives.0.*``, files written before
    objectives were kept by name) moved to the names of the model's objectives in recipe order."""
    old = [k for k in state if k.startswith("objectives.") and k.split(".")[1].isdigit()]
    if not old:
        return state
    out = {k: v for k, v in state.items() if k not in old}
    for k in old:
        _, index, rest = k.split(".", 2)
        out[f"objectives.{names[int(index)]}.{rest}" if int(index) < len(names) else k] = state[k]
    return out


def _label(path: str) -> str:
    """``part 'backbone'`` or ``module 'objectives.mvm.tagger'``, for messages."""
    return f"module {path!r}" if "." in path else f"part {path!r}"


def _preview_paths(paths: Sequence[str], near: str, n: int = 6) -> str:
    """Up to ``n`` of ``paths``, those sharing the longest prefix with ``near`` first."""
    ranked = sorted(paths, key=lambda p: (-len(os.path.commonprefix([p, near])), p))[:n]
    return ", ".join(ranked) + (", ..." if len(paths) > n else "")


def _why_not_loaded(part: nn.Module, sub: Mapping[str, Tensor]) -> str | None:
    """Why the default ``init_from`` leaves ``part`` as it is, given the file's weights ``sub`` for it."""
    if not part.state_dict():
        return "the model's part has no weights"
    if not sub:
        return "not in the file"
    mismatch = state_mismatch(part, sub)
    return f"does not fit: {mismatch}" if mismatch else None


def load_parts(
    model: nn.Module, path: str, parts: Sequence[str] | None = None, rename: Mapping[str, str] | None = None
) -> list[str]:
    """Load part weights into ``model`` from a Lightning checkpoint or a state dict (``init_from``);
    returns the parts loaded.

    ``parts`` named (parts or dotted paths to modules inside them): each must be in the file (under
    ``rename[path]`` if given) and fit exactly (else :class:`ConfigError`). ``parts`` empty or
    ``None``: every part (and every objective, by name) that both the model and the file have and
    whose weights fit; the others keep their weights, and why is logged at INFO.
    """
    if not Path(path).exists():
        raise ConfigError(f"init_from: no such checkpoint file: {path}")
    state = read_state_dict(path)
    objectives = list(model.objectives.keys())
    positions = {k.split(".")[1] for k in state if k.startswith("objectives.") and k.split(".")[1].isdigit()}
    if positions and max(int(i) for i in positions) < len(objectives):
        # a file written before objectives were kept by name: taken to be of the same recipe, in its order
        log.info("init_from %s: objectives by position, read as %s", path,
                 ", ".join(f"objectives.{i} -> objectives.{objectives[int(i)]}" for i in sorted(positions)))
        state = migrate_objective_keys(state, objectives)
    rename = dict(rename or {})
    named = list(parts or [])
    for name in rename:
        if name not in named:
            raise ConfigError(f"init_rename: {name!r} is not in init_parts {named}")
    in_file = {k.split(".", 1)[0] for k in state}
    present = part_names(model)
    modules = {name: module_at(model, name, "init_parts") for name in named}
    default = [n for n in present if n != "objectives"] + [f"objectives.{k}" for k in objectives]
    loaded: list[str] = []
    skipped: dict[str, str] = {}
    for name in named or default:
        part = modules[name] if named else module_at(model, name, "init_parts")
        source = rename.get(name, name)
        sub = {k[len(source) + 1 :]: v for k, v in state.items() if k.startswith(source + ".")}
        if named:
            if not sub and part.state_dict():
                top = source.split(".")[0]
                near = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith(top + ".")})
                hint = f"; under {top!r} it has: {_preview_paths(near, source)}" if near else ""
                raise ConfigError(
                    f"init_from: {path} holds no weights for {_label(source)} (it has parts: "
                    f"{', '.join(sorted(in_file & set(PART_NAMES))) or 'none'}{hint}); drop {name!r} from "
                    f"init_parts or map it with init_rename"
                )
            load_strict(part, sub, path, _label(name) + (f" (from {source!r})" if source != name else ""))
        else:
            why = _why_not_loaded(part, sub)
            if why:
                skipped[name] = why
                continue
            part.load_state_dict(sub)
        set_weights_source(part, f"{path} (init_from)")
        loaded.append(name if source == name else f"{name} (from {source})")
    for name in sorted(in_file & set(PART_NAMES) - set(present)):
        skipped[name] = "in the file, but the model has none"
    if not named:
        for key in sorted({k.split(".")[1] for k in state if k.startswith("objectives.")} - set(objectives)):
            skipped[f"objectives.{key}"] = "in the file, but the model has no such objective"
    log.info("init_from %s: loaded %s%s", path, ", ".join(loaded) or "no part",
             "; not loaded: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) if skipped else "")
    return loaded


def random_frozen_parts(model: nn.Module) -> list[str]:
    """Frozen parts (``freeze``, or built with ``frozen=True``) and frozen modules inside parts whose
    weights are still their random initialisation (no ``checkpoint``, ``pretrained_path`` or ``init_from``)."""
    found = []
    for name in part_names(model):
        if name in model.idle_parts:  # never run: its weights do not matter
            continue
        part = getattr(model, name)
        for m in part.values() if isinstance(part, nn.ModuleDict) else [part]:
            frozen = name in model.frozen_parts or bool(getattr(m, "frozen", False))
            if frozen and next(m.parameters(), None) is not None and getattr(m, "weights_source", None) is None:
                found.append(name)
                break
    for path in model.frozen_parts:  # modules inside parts (objectives.mvm.tagger)
        inside = "." in path and path.split(".")[0] not in found
        if inside and next(module_at(model, path, "freeze").parameters(), None) is not None and weights_source(model, path) is None:
            found.append(path)
    return found


def check_frozen_parts_have_weights(model: nn.Module) -> None:
    """:class:`ConfigError` if a frozen part would train with random weights (unless ``allow_random_frozen``)."""
    names = random_frozen_parts(model)
    if not names or model.allow_random_frozen:
        return
    first = module_at(model, names[0], "freeze")
    params = inspect.signature(type(first).__init__).parameters
    arg = next((a for a in ("checkpoint", "pretrained_path") if a in params), None)
    weights = "model_folder" if arg == "pretrained_path" else (
        "open_clip_pytorch_model.bin" if getattr(first, "registry_name", "") == "open_clip" else "weights.safetensors"
    )
    how = f"--model.{names[0]}.{arg} /path/to/{weights} or --model.init_from PATH" if arg else "--model.init_from PATH"
    raise ConfigError(
        f"frozen part(s) {', '.join(names)} still have their random initialisation: give them weights "
        f"({how}); --model.allow_random_frozen true trains anyway (timing runs, tests)"
    )


def idle_parts(model: nn.Module) -> tuple[str, ...]:
    """The parts ``model`` has but never runs (kept for what they hold, a text encoder's tokenizer;
    not trained): all of them when no objective runs the model's forward; the fusion when neither the
    head (``uses_fusion``) nor an objective (``reads_fused_tokens``) reads a fused value."""
    if not model.runs_forward:
        return tuple(n for n in PART_NAMES[:-1] if getattr(model, n, None) is not None)
    head_fuses = model.head is None or getattr(model.head, "uses_fusion", True)
    reads_fusion = any(getattr(o, "reads_fused_tokens", False) for o in model.objectives)
    return ("fusion",) if not head_fuses and not reads_fusion and model.fusion is not None else ()


def init_from(model: nn.Module, path: str | None, parts: Sequence[str] | None, rename: Mapping[str, str]) -> None:
    """The model's ``init_from`` / ``init_parts`` / ``init_rename`` arguments: checked, then
    :func:`load_parts` when a file is given."""
    if parts and not path:
        raise ConfigError(
            f"init_parts {list(parts)} is set but init_from is not: give the checkpoint to load "
            f"them from with --model.init_from PATH, or pass --model.init_parts null to train from scratch"
        )
    if rename and path and not parts:
        raise ConfigError(f"init_rename {dict(rename)} is set but init_parts is not: name the modules "
                          f"to load (--model.init_parts [{next(iter(rename))}])")
    if path:
        load_parts(model, path, parts, rename)


def _plain(value: Any) -> bool:
    """Whether ``value`` is made of what ``torch.load(weights_only=True)`` reads: no classes, no functions."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


def loadable_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyper-parameters without an optimizer or scheduler given from Python as a class
    or function (``optimizer=torch.optim.AdamW``), which would make the file unreadable with
    ``torch.load(weights_only=True)``, the way it is read to resume or test; LightningCLI records
    ``{class_path, init_args}`` instead, which is kept."""
    return {k: v for k, v in hparams.items() if k not in ("optimizer", "scheduler") or _plain(v)}
