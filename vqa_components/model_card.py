"""The ``README.md`` of a model folder (:mod:`vqa_components.model_folder`): what the model is, what
it cost and how it scored, from the run's own records (the recipe, the profiler's report, the run's
``test_metrics.json``). Nothing in it is typed by hand."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

#: part arguments that say where a part's starting weights came from
_PROVENANCE = ("pretrained", "pretrained_path", "model_name")


def model_card(document: Mapping[str, Any], model: nn.Module, test_metrics: Mapping[str, Any] | None,
               profile: Any) -> str:
    """Markdown for ``document`` (the folder's ``config.yaml`` content) and the model it describes."""
    model_cfg, data_cfg = document["model"], document.get("data") or {}
    lines = ["---", "library_name: vqa-components", "tags: [video-question-answering]", "---", "",
             f"# {_title(document)}", ""]
    lines += [
        "A VideoQA model of [vqa-components](https://pypi.org/project/vqa-components/), exported by `vqa export`.",
        "", "```bash",
        "vqa ask --model THIS_FOLDER --video clip.mp4 --question \"what is the person doing?\"",
        "```", "", "```python", "from vqa_components import VideoQAModel",
        "model = VideoQAModel.from_pretrained(\"THIS_FOLDER\")", "```", "",
    ]
    if document.get("recipe"):
        lines += [f"Recipe: `{document['recipe']}`.", ""]
    lines += ["## Parts", "", "| part | class | parameters (M) | trainable (M) | GMACs per sample |", "|---|---|---|---|---|"]
    per_part = getattr(profile, "per_part", {}) or {}
    for name in ("backbone", "text_encoder", "sampler", "fusion", "head"):
        cfg = model_cfg.get(name)
        if not isinstance(cfg, Mapping):
            continue
        row = per_part.get(name, {})
        params = sum(p.numel() for p in getattr(model, name).parameters()) if getattr(model, name, None) else 0
        lines.append(
            f"| {name} | `{cfg.get('class_path', '?')}` | {params / 1e6:.3f} | "
            f"{row.get('trainable_params', 0) / 1e6:.3f} | {row.get('gmacs', float('nan')):.4g} |"
        )
    if profile is not None:
        total = (f"Total: {profile.params / 1e6:.3f} M parameters ({profile.trainable_params / 1e6:.3f} M "
                 f"trained), {profile.gmacs:.4g} GMACs per sample (multiply-accumulates, the papers' "
                 f"\"FLOPs\"; `vqa profile`).")
        lines += ["", total]
    objectives = [o.get("class_path", "?").rsplit(".", 1)[-1] for o in model_cfg.get("objectives") or []
                  if isinstance(o, Mapping)]
    if objectives:
        lines += ["", f"Trained with: {', '.join(objectives)}."]
    starts = [f"- {name}: " + ", ".join(f"{k} `{v}`" for k, v in args.items() if k in _PROVENANCE and v)
              for name, args in _part_args(model_cfg) if any(args.get(k) for k in ("pretrained", "pretrained_path"))]
    if starts:
        lines += ["", "Starting weights (before training; the folder's `model.safetensors` holds the trained ones):",
                  "", *starts]
    lines += ["", "## Data", "", f"Dataset: `{data_cfg.get('dataset', '?')}`"]
    args = data_cfg.get("dataset_args") or {}
    if args:
        lines += ["", "```yaml", *(f"{k}: {v}" for k, v in args.items()), "```"]
    video = document.get("video") or {}
    lines += ["", "Clips are read as at evaluation: " + ", ".join(
        f"{t} evenly spaced frames at {size if size is not None else 'the native size'}"
        for t, size in video.get("streams", [])
    ) + (f", shorter side resized to {video['resize_short']}" if video.get("resize_short") else "")
        + (f", centre crop {video['crop_size']}" if video.get("crop_size") else "") + "."]
    protocol = (test_metrics or {}).get("protocol")
    if isinstance(protocol, Mapping):
        lines += ["", "Protocol: " + "; ".join(f"{k}: {v}" for k, v in protocol.items()) + "."]
    lines += ["", "## Test metrics", ""]
    figures = {k: v for k, v in (test_metrics or {}).items() if isinstance(v, (int, float))}
    if figures:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k.removeprefix('test/')} | {_figure(k, v)} |" for k, v in sorted(figures.items())]
    else:
        lines.append("None recorded: the run had no `test_metrics.json` when it was exported (`vqa test` writes it).")
    return "\n".join(lines) + "\n"


def _title(document: Mapping[str, Any]) -> str:
    recipe = document.get("recipe") or ""
    return recipe.rsplit("/", 1)[-1].removesuffix(".yaml") or "vqa-components model"


def _part_args(model_cfg: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(name, cfg.get("init_args") or {}) for name, cfg in model_cfg.items()
            if isinstance(cfg, Mapping) and "class_path" in cfg]


def _figure(key: str, value: float) -> str:
    if "acc" in key or "_r" in key:
        return f"{100 * value:.2f} %"
    return f"{int(value)}" if float(value).is_integer() else f"{value:.4g}"
