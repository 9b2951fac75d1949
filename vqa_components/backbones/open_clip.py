"""CLIP image tower from ``open_clip`` as a per-frame video backbone.

VideoDistill (section 3.1, appendix B) encodes densely sampled frames with a
frozen CLIP ViT-B/16 and reads two things per frame: the patch embeddings
``v_patch (N, n*n, D)`` and the CLS token ``v_cls (N, D)``, both of width ``D``::

    video (b, t, 3, h, w) in [0, 1]
      │ resize (shorter side -> image_size, centre crop) if needed, normalise
      ▼
    conv1 patchify ─► [CLS; patches] + pos ─► ln_pre ─► transformer ─► ln_post
      │                                                                │
      │                                 CLS ─► proj ─► cls (b, t, D)  ◄┤
      │                             patches ─► proj ─► tokens (b, t, n, D)

Choices the paper leaves open:

* **Projection.** With ``project=True`` (default) both the CLS and the patch
  tokens go through the tower's ``proj`` so that frames, patches and the text
  encoder's outputs (:mod:`vqa_components.text.open_clip`) share CLIP's joint
  space (512-d for ViT-B/16) and ``cls`` equals ``model.encode_image`` exactly.
  ``project=False`` keeps the transformer width (768 for ViT-B/16).
* **Patch-token norm.** Patch tokens are taken after ``ln_post`` (the same norm
  CLIP applies to its CLS) for every supported config.
* **Patch dropout** of the config is not applied: the tower is used as a
  deterministic feature extractor (``cacheable``).

Weights: random init by default (nothing is downloaded). ``pretrained`` names open_clip's
pretrained weights of ``model_name`` by tag (``openai``, ``laion2b_s34b_b88k``, ...:
``open_clip.list_pretrained()``), and ``model_name: hf-hub:ORG/NAME`` names a hub repository
holding ``open_clip_config.json`` and the weights; both are found as ``open_clip.create_model(
model_name, pretrained=tag)`` finds them, through the Hugging Face hub cache (``HF_HUB_CACHE``;
``HF_HUB_OFFLINE=1`` reads only the cache; missing: one line naming the id, the cache and
``hf download ...``; :func:`vqa_components.weights.open_clip_pretrained`), then read like a
``checkpoint`` (``weights_source``: ``hf-hub:REPO/FILE``). A tag trained with QuickGELU
(``openai``) builds the model with it. ``checkpoint`` loads a
local file (or a folder holding one) and wins over the tag's file (the tag still sets QuickGELU
and preprocessing; the hub is not read): a full open_clip/OpenAI CLIP state dict, a
visual-only one, a training checkpoint ``{"state_dict": ...}`` (a DDP
``module.`` prefix is stripped), ``.safetensors``, or an OpenAI TorchScript
archive. Loading is strict; see ``docs/parts/feature_cache.md``. A frozen tower
without a ``checkpoint`` keeps random weights: ``VideoQAModel`` refuses to train
with it unless ``allow_random_frozen`` is set.

Files are read by :mod:`vqa_components.weights` (torch files always with ``weights_only=True``,
so no file can run code when it is loaded); the CLIP model is built by
:func:`~vqa_components.layers.open_clip.build_open_clip_model`, which the text encoder shares.

Supported family: open_clip's own ``VisionTransformer`` towers (``ViT-*``
configs without an attentional pooler). ResNet (``RN50``...), timm and ConvNeXt
towers raise ``ValueError``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vqa_components.backbones.multi_stream import one_stream
from vqa_components.interfaces import Backbone, VideoFeatures
from vqa_components.layers.open_clip import build_open_clip_model, load_and_freeze
from vqa_components.registry import BACKBONES
from vqa_components.weights import load_weights, open_clip_pretrained

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------- helpers


def _resize_grid_pos_embed(pe: Tensor, grid: tuple[int, int]) -> Tensor:
    """Bicubic resize of a ``(1 + g*g, d)`` ViT position embedding to ``grid``."""
    cls, patches = pe[:1], pe[1:]
    old = math.isqrt(patches.shape[0])
    if old * old != patches.shape[0]:
        return pe
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False, antialias=True)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pe.dtype)
    return torch.cat([cls, patches], 0)


# ------------------------------------------------------------------- backbone


@BACKBONES.register("open_clip")
class OpenClipBackbone(Backbone):
    """Per-frame patch tokens and CLS of an open_clip ViT image tower (VideoDistill's frame encoder).

    Args:
        model_name: an open_clip architecture (``open_clip.list_models()``), e.g.
            ``"ViT-B-16"`` (VideoDistill), ``"ViT-B-32"``, or ``"hf-hub:ORG/NAME"``. ViT family only.
        checkpoint: local weights file or folder (full CLIP or visual-only state
            dict); wins over ``pretrained``. Neither: the random init.
        pretrained: an open_clip pretrained tag of ``model_name`` (``"openai"``), read through
            the Hugging Face hub cache.
        frozen: no gradients, and the tower stays in eval mode under ``train()``.
        image_size: input resolution; default the model's own. A checkpoint made
            for another resolution has its position embedding resized (bicubic).
        project: apply the tower's ``proj`` to CLS and patch tokens (joint
            CLIP space, ``out_dim = embed_dim``); ``False`` keeps ``width``.
        chunk_size: frames per forward pass (bounds memory).
        model_config: a custom open_clip config dict (``embed_dim``,
            ``vision_cfg``, ``text_cfg``) instead of a named one.

    ``forward(video (b, t, 3, h, w) in [0, 1]) -> VideoFeatures(tokens (b, t, n, D), cls (b, t, D))``
    with ``n = (image_size / patch)^2``. ``D = out_dim``: ``embed_dim`` (512 for ViT-B/16) with
    ``project=True``, where ``cls`` is post-projection (``ln_post(CLS) @ proj`` = ``encode_image``)
    and the patch tokens are projected the same way; ``width`` (768) with ``project=False``
    (both taken after ``ln_post``, before ``proj``).
    """

    fsdp_blocks = ("ResidualAttentionBlock",)  # its repeated blocks: FSDP units (vqa_components.fsdp)

    cacheable = True

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        checkpoint: str | None = None,
        frozen: bool = True,
        image_size: int | None = None,
        project: bool = True,
        chunk_size: int = 64,
        model_config: dict[str, Any] | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        from open_clip.transformer import VisionTransformer

        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        hub = open_clip_pretrained(model_name, pretrained, "open_clip backbone", model_config, checkpoint)
        model = build_open_clip_model(
            hub.model_name if hub else model_name, hub.model_config if hub else model_config, image_size=image_size,
            quick_gelu=bool(hub and hub.quick_gelu), preprocess=hub.preprocess if hub else None,
        )
        visual = model.visual
        if not isinstance(visual, VisionTransformer):
            raise ValueError(  # noqa: TRY004 - a wrong model_name value, not a wrong argument type
                f"open_clip backbone supports ViT image towers (open_clip VisionTransformer, the ViT-* "
                f"configs); {model_name!r} has a {type(visual).__name__} image tower"
            )
        if visual.attn_pool is not None:
            raise ValueError(f"open_clip backbone: {model_name!r} uses an attentional pooler, not supported")
        del model  # the text tower is not kept
        self.visual = visual
        self.model_name = model_name
        self.project = project
        self.chunk_size = chunk_size
        self.frozen = frozen
        self.image_size = tuple(int(s) for s in visual.image_size)
        width = visual.conv1.out_channels
        self.out_dim = int(visual.proj.shape[1]) if project and visual.proj is not None else width
        pcfg = getattr(visual, "preprocess_cfg", None) or {}
        self.interpolation = str(pcfg.get("interpolation", "bicubic"))
        mean, std = [float(v) for v in pcfg.get("mean", OPENAI_MEAN)], [float(v) for v in pcfg.get("std", OPENAI_STD)]
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)
        #: what determines the outputs besides the weights (read by FeatureCache)
        self.config = {
            "model_name": model_name,
            "model_config": model_config,
            "image_size": list(self.image_size),
            "project": project,
            "mean": mean,  # read from the lists: the buffers may be on the meta device
            "std": std,
            "interpolation": self.interpolation,
        }
        if hub and hub.quick_gelu:
            self.config["quick_gelu"] = True
        self.pretrained = pretrained
        load_and_freeze(self, checkpoint, frozen, hub.file if hub else None, hub.source if hub else None)

    # ---------------------------------------------------------------- weights
    def load_checkpoint(self, checkpoint: str | Path) -> None:
        """Load image-tower weights from a local full-CLIP or visual-only state dict (strict)."""

        def adapt(state: dict[str, Tensor]) -> dict[str, Tensor]:
            if any(k.startswith("visual.") for k in state):
                state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
            pe = state.get("positional_embedding")
            own_pe = self.visual.positional_embedding
            if pe is not None and pe.ndim == 2 and pe.shape != own_pe.shape and pe.shape[1] == own_pe.shape[1]:
                log.info("resizing position embedding %s -> %s", tuple(pe.shape), tuple(own_pe.shape))
                state = {**state, "positional_embedding": _resize_grid_pos_embed(pe, self.visual.grid_size)}
            return state

        path = load_weights(self.visual, checkpoint, f"open_clip {self.model_name} image tower", adapt=adapt)
        self.weights_source = str(path)

    def train(self, mode: bool = True) -> OpenClipBackbone:
        return super().train(mode and not self.frozen)

    # --------------------------------------------------------------- forward
    def preprocess(self, frames: Tensor) -> Tensor:
        """``(f, 3, h, w)`` in [0, 1] -> normalised ``(f, 3, H, W)`` at ``image_size``.

        Frames of another size get CLIP's eval transform: shorter side resized to
        the target, then a centre crop.
        """
        th, tw = self.image_size
        h, w = frames.shape[-2:]
        if (h, w) != (th, tw):
            scale = max(th / h, tw / w)
            nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
            mode = self.interpolation if self.interpolation in ("bilinear", "bicubic") else "bilinear"
            frames = F.interpolate(frames, size=(nh, nw), mode=mode, align_corners=False, antialias=True)
            top, left = (nh - th) // 2, (nw - tw) // 2
            frames = frames[..., top : top + th, left : left + tw]
        return (frames - self.mean.to(frames.dtype)) / self.std.to(frames.dtype)

    def encode_frames(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised ``(f, 3, H, W)`` -> ``tokens (f, n, D)``, ``cls (f, D)``."""
        v = self.visual
        x = v.conv1(frames.to(v.conv1.weight.dtype))  # (f, width, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (f, n, width)
        cls_tok = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_tok, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        if getattr(v.transformer, "batch_first", True):
            x = v.transformer(x)
        else:  # older open_clip: sequence-first transformer
            x = v.transformer(x.transpose(0, 1)).transpose(0, 1)
        patches = v.ln_post(x[:, 1:])
        if v.pool_type == "avg":
            pooled = v.ln_post(x[:, 1:].mean(1)) if v.final_ln_after_pool else patches.mean(1)
        else:  # "tok": the CLS token
            pooled = v.ln_post(x[:, 0])
        if self.project and v.proj is not None:
            patches = patches @ v.proj
            pooled = pooled @ v.proj
        return patches, pooled

    def forward(self, video: Tensor | tuple[Tensor, ...]) -> VideoFeatures:
        video = one_stream(video, "open_clip")
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"open_clip backbone expects video (b, t, 3, h, w), got {tuple(video.shape)}")
        b, t = video.shape[:2]
        frames = video.reshape(b * t, *video.shape[2:])
        grad = torch.is_grad_enabled() and (not self.frozen or video.requires_grad)
        tokens, cls = [], []
        with torch.set_grad_enabled(grad):
            for chunk in frames.split(self.chunk_size):
                tok, c = self.encode_frames(self.preprocess(chunk.float()))
                tokens.append(tok)
                cls.append(c)
        tok = torch.cat(tokens).reshape(b, t, -1, self.out_dim)
        return VideoFeatures(tokens=tok, cls=torch.cat(cls).reshape(b, t, self.out_dim))

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, out_dim={self.out_dim}, image_size={self.image_size}, frozen={self.frozen}"
