"""Recipe normalisation: registry names -> ``class_path``/``init_args``.

A recipe (LightningCLI YAML) may give each model part in any of three forms::

    fusion: cross_attention                      # registry name, default arguments
    fusion: {name: cross_attention, dim: 128}    # registry name with arguments
    fusion:                                      # jsonargparse's own form
      class_path: vqa_components.fusion.cross_attention.CrossAttentionFusion
      init_args: {dim: 128}

The first two are rewritten into the third before jsonargparse sees them, so
``--print_config`` always prints (re-parsable) ``class_path`` form. On the
command line, ``--model.fusion cross_attention`` works the same way. An unknown
name raises :class:`~vqa_components.registry.UnknownPartError` with the closest
matches.
"""

from __future__ import annotations

from typing import Any

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
        if part in MODEL_PART_KINDS and part != "objectives":
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
