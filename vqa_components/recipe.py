"""Recipe normalisation: registry names -> ``class_path``/``init_args``.

A recipe (LightningCLI YAML) may give each model part in any of three forms::

    fusion: cross_attention                      # registry name, default arguments
    fusion: {name: cross_attention, dim: 128}    # registry name with arguments
    fusion:                                      # jsonargparse's own form
      class_path: vqa_components.fusion.cross_attention.CrossAttentionFusion
      init_args: {dim: 128}

The first two are rewritten into the third before jsonargparse sees them, so
``--print_config`` always prints (re-parsable) ``class_path`` form. On the
command line, ``--model.fusion cross_attention`` works the same way, and so does
``--model.objectives '[vtm, {name: mlm}]'`` (a list of names or ``{name: ...}``
dicts; ``--model.objectives+=NAME`` appends one). An unknown name raises
:class:`~vqa_components.registry.UnknownPartError` with the closest matches; an
unknown argument of a part on the command line (``--model.fusion.num_layer 3``)
raises :class:`~vqa_components.interfaces.ConfigError` naming the closest ones
(:func:`check_part_arguments`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
from typing import Any

import yaml

from vqa_components.errors import ConfigError  # interfaces re-exports it; errors imports no torch
from vqa_components.registry import Registry, get_registry

#: model argument -> kind of part it holds
MODEL_PART_KINDS: dict[str, str] = {
    "backbone": "backbone",
    "text_encoder": "text_encoder",
    "sampler": "sampler",
    "fusion": "fusion",
    "head": "head",
    "objectives": "objective",
}


def _class_path(registry: Registry, name: str) -> str:
    obj = registry.get(name)
    return f"{obj.__module__}.{obj.__qualname__}"


def _looks_like_name(value: str) -> bool:
    return "." not in value and not value[:1].isupper()


def normalize_part(value: Any, kind: str) -> Any:
    """Rewrite one part spec (string or ``{name: ...}`` dict) to class_path form."""
    registry = get_registry(kind)
    if isinstance(value, str) and _looks_like_name(value) and value.lower() not in {"null", "none"}:
        return {"class_path": _class_path(registry, value)}
    if isinstance(value, dict) and "name" in value and "class_path" not in value:
        args = {k: v for k, v in value.items() if k not in ("name", "init_args")}
        args.update(value.get("init_args") or {})
        spec: dict[str, Any] = {"class_path": _class_path(registry, value["name"])}
        if args:
            spec["init_args"] = args
        return spec
    return value


def normalize_model_config(model_cfg: Any) -> Any:
    """Normalise every part of a recipe's ``model:`` section (in place and returned)."""
    if not isinstance(model_cfg, dict):
        return model_cfg
    target = model_cfg.get("init_args", model_cfg) if "class_path" in model_cfg else model_cfg
    for key, kind in MODEL_PART_KINDS.items():
        if key not in target or target[key] is None:
            continue
        if key == "objectives" and isinstance(target[key], list):
            target[key] = [normalize_part(v, kind) for v in target[key]]
        else:
            target[key] = normalize_part(target[key], kind)
    return model_cfg


def normalize_config(cfg: Any) -> Any:
    """Normalise a whole recipe (the dict loaded from YAML), for any subcommand layout."""
    if not isinstance(cfg, dict):
        return cfg
    if "model" in cfg:
        normalize_model_config(cfg["model"])
    for sub in ("fit", "validate", "test", "predict"):
        if isinstance(cfg.get(sub), dict):
            normalize_config(cfg[sub])
    return cfg


def normalize_cli_args(args: list[str]) -> list[str]:
    """Rewrite ``--model.<part> NAME`` / ``--model.<part>=NAME`` command-line values."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, val = arg.partition("=")
        part = key[len("--model.") :] if key.startswith("--model.") else None
        given = eq or (i + 1 < len(args) and not args[i + 1].startswith("--"))
        if part in ("objectives", "objectives+") and given:
            if not eq:
                val, i = args[i + 1], i + 1
            out.append(f"{key}={_rewrite_objectives(val, append=part.endswith('+'))}")
        elif part in MODEL_PART_KINDS and part != "objectives":
            kind = MODEL_PART_KINDS[part]
            if eq:
                out.append(f"{key}={_rewrite_value(val, kind)}")
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out.extend([key, _rewrite_value(args[i + 1], kind)])
                i += 1
            else:
                out.append(arg)
        else:
            out.append(arg)
        i += 1
    return out


def _rewrite_value(value: str, kind: str) -> str:
    if _looks_like_name(value) and value.lower() not in {"null", "none"} and not value.startswith("{"):
        return _class_path(get_registry(kind), value)
    return value


def _rewrite_objectives(value: str, append: bool) -> str:
    """``--model.objectives`` (a list of names or ``{name: ...}`` dicts, or one of them) or
    ``--model.objectives+`` (one) in class_path form; anything else (a file, class paths) unchanged."""
    try:
        spec = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    named = isinstance(spec, dict) and "name" in spec or isinstance(spec, str) and _looks_like_name(spec)
    if append:
        return json.dumps(normalize_part(spec, "objective")) if named else value
    if named:
        spec = [spec]
    if not isinstance(spec, list):
        return value
    return json.dumps([normalize_part(v, "objective") for v in spec])


# ------------------------------------------------------------------ arguments of parts


def check_part_arguments(args: list[str]) -> None:
    """Stop at an argument that the part it is given to does not take (``--model.fusion.init_args.num_layer
    3`` or ``--model.fusion.num_layer 3``), in one line naming the part and its closest arguments, where
    jsonargparse would list each type of the part's ``Union``. The part's class is the one the recipe
    (``--config``, in class_path form) or an earlier ``--model.<part>`` argument gives; a part whose
    class takes ``**kwargs`` is left to jsonargparse."""
    classes: dict[str, Any] = {}
    for i, arg in enumerate(args):
        key, eq, val = arg.partition("=")
        value = val if eq else (args[i + 1] if i + 1 < len(args) else "")
        if key == "--config":
            classes.update(_config_classes(value))
            continue
        path = key[len("--model.") :].split(".") if key.startswith("--model.") else []
        if not path or path[0] not in MODEL_PART_KINDS or path[0] == "objectives":
            continue
        if len(path) == 1:
            classes[path[0]] = _class_path_of(value)
            continue
        name = path[2] if path[1] == "init_args" and len(path) > 2 else path[1]
        if name not in ("init_args", "class_path", "help", "dict_kwargs"):
            _check_argument(path[0], classes.get(path[0]), name)


def _class_path_of(value: Any) -> str | None:
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            return None
    if isinstance(value, dict):
        value = value.get("class_path")
    return value if isinstance(value, str) and "." in value else None


def _config_classes(text: str) -> dict[str, str | None]:
    """``{part: class_path}`` of the model section of a recipe (YAML text, in class_path form)."""
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(cfg, dict):
        return {}
    sections = [
        cfg,
        *(cfg[s] for s in ("fit", "validate", "test", "predict") if isinstance(cfg.get(s), dict)),
    ]
    model = next((section["model"] for section in sections if section.get("model")), None)
    if isinstance(model, dict) and "class_path" in model:
        model = model.get("init_args") or {}
    if not isinstance(model, dict):
        return {}
    return {part: _class_path_of(model[part]) for part in MODEL_PART_KINDS if part in model}


def _check_argument(part: str, class_path: str | None, name: str) -> None:
    if class_path is None:
        return
    module, _, attr = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
        params = inspect.signature(cls).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return  # jsonargparse reports a class it cannot find
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if n != "self" and p.kind is not p.VAR_POSITIONAL]
    if name in valid:
        return
    label = getattr(cls, "registry_name", None) or attr
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"--model.{part}: unknown argument {name!r} of {MODEL_PART_KINDS[part]} {label}.{hint} "
        f"Valid arguments of {label}: {', '.join(valid)}"
    )
