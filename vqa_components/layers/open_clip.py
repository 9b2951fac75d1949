"""Building an ``open_clip`` CLIP model (random init, nothing downloaded) for the parts that keep one tower.

Pretrained names (open_clip tags, ``hf-hub:`` names) are resolved to a config and a weights file by
:func:`vqa_components.weights.open_clip_pretrained`; the model is still built here with random
weights (``quick_gelu`` and ``preprocess`` as the name says) and the file is then read into the
kept tower like a ``checkpoint``.

The ``open_clip`` image backbone (:mod:`vqa_components.backbones.open_clip`) and the ``open_clip``
text encoder (:mod:`vqa_components.text.open_clip`) both build the whole CLIP model from a config
name or dict and keep one of its towers. Building it is neither one kind of part nor weight
reading (the model is random-init; :mod:`vqa_components.weights` reads files into the tower
afterwards), so it lives here, with the blocks every kind of part may use; so does the end both
parts' constructors share (:func:`load_and_freeze`).

open_clip warns ``No pretrained weights loaded for model ...`` on the root logger for every model it
builds, also those whose weights are read afterwards: that line is filtered
(:class:`NoRandomInitWarning`), and a part that keeps its random weights says so once, on this
module's logger (which ``vqa`` shows).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class NoRandomInitWarning(logging.Filter):
    """Drops open_clip's ``No pretrained weights loaded for model ...`` (we build random, then load)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


def _quiet_open_clip() -> None:
    """Install :class:`NoRandomInitWarning` on the loggers open_clip writes to (once)."""
    for logger in (logging.getLogger(), logging.getLogger("open_clip")):
        if not any(isinstance(f, NoRandomInitWarning) for f in logger.filters):
            logger.addFilter(NoRandomInitWarning())


def build_open_clip_model(
    model_name: str,
    model_config: Mapping[str, Any] | None = None,
    image_size: int | None = None,
    context_length: int | None = None,
    quick_gelu: bool = False,
    preprocess: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build an open_clip model with random init; nothing is downloaded.

    ``model_config`` (``{"embed_dim", "vision_cfg", "text_cfg", ...}``, the
    format of open_clip's ``model_configs/*.json``) builds a custom architecture;
    ``model_name`` is then only a label. ``quick_gelu``: QuickGELU activations (what OpenAI's
    weights were trained with). ``preprocess`` (``mean``, ``std``, ``interpolation``, ...) is merged
    into the image tower's ``preprocess_cfg``.
    """
    model = _build(model_name, model_config, image_size, context_length, quick_gelu)
    visual = getattr(model, "visual", None)
    if preprocess and visual is not None:
        visual.preprocess_cfg = {**(getattr(visual, "preprocess_cfg", None) or {}), **dict(preprocess)}
    return model


def _build(
    model_name: str,
    model_config: Mapping[str, Any] | None,
    image_size: int | None,
    context_length: int | None,
    quick_gelu: bool,
) -> nn.Module:
    import open_clip

    _quiet_open_clip()
    if model_config is None:
        if model_name not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip model {model_name!r}; pass model_config for a custom one. "
                f"Known ViT models: {', '.join(m for m in open_clip.list_models() if m.startswith('ViT-'))}"
            )
        kwargs: dict[str, Any] = {
            "pretrained": None, "pretrained_image": False, "pretrained_text": False, "force_quick_gelu": quick_gelu,
        }
        if image_size is not None:
            kwargs["force_image_size"] = image_size
        if context_length is not None:
            kwargs["force_context_length"] = context_length
        # built where torch builds now: on the meta device too (vqa profile, the tests' wiring checks)
        return open_clip.create_model(model_name, device=torch.get_default_device(), **kwargs)

    from open_clip.model import CLIP, CustomTextCLIP

    cfg = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in model_config.items()}
    for part in ("vision_cfg", "text_cfg"):
        if part not in cfg:
            raise ValueError(f"model_config for {model_name!r} needs {part!r} (open_clip config format)")
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = image_size
    if context_length is not None:
        cfg["text_cfg"]["context_length"] = context_length
    if quick_gelu:
        cfg["quick_gelu"] = True
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    cfg.pop("multimodal_cfg", None)
    cls = CustomTextCLIP if custom_text else CLIP
    return cls(**cfg)


def load_and_freeze(
    part: nn.Module, checkpoint: str | None, frozen: bool, hub_file: Any = None, hub_source: str | None = None
) -> None:
    """The end of an open_clip part's constructor: ``part.checkpoint = checkpoint``, the file loaded
    by the part's ``load_checkpoint`` when given, else the pretrained name's file in the hub cache
    (``hub_file``; ``weights_source`` is then ``hub_source``, also when the file was not looked up:
    the meta device); neither: the random init, said once on this module's logger. Then, with ``frozen``,
    no gradients and eval mode."""
    part.checkpoint = checkpoint
    if checkpoint is not None:
        part.load_checkpoint(checkpoint)
    elif hub_source is not None:
        if hub_file is not None:
            part.load_checkpoint(hub_file)
        part.weights_source = hub_source
    else:
        what = "backbone" if hasattr(part, "visual") else "text encoder"  # the image tower kept, or the text's
        log.info("open_clip %s: %s starts from random weights (no pretrained, no checkpoint)", what,
                 getattr(part, "model_name", "the model"))
    if frozen:
        part.requires_grad_(False)
        part.eval()
