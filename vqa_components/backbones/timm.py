"""Any ``timm`` image model as a per-frame video backbone (E-ViLM's EdgeNeXt-small video encoder).

E-ViLM (section 3.1, "Video Encoder") encodes each of the ``T`` sparsely sampled frames with a
lightweight 2D network into a grid ``e_i^V`` of shape ``H/S x W/S x D`` (``S`` the network's
down-sampling), then "flatten[s] and concatenate[s] all embeddings, followed by a linear
transformation for dimension adjustment". Section 4 ("Architectural Details") names the network:
EdgeNeXt-small, "1.26G FLOPs for one 256x256 frame with 5.59M parameters" (timm counts 1.25 GMACs
and 5.59M parameters with its classifier, 5.28M without)::

    video (b, t, 3, h, w) in [0, 1]
      │ frames independently: (b*t, 3, h, w), in chunks of ``chunk_size``
      │ [resize shorter side -> image_size, centre crop]       (only with image_size / fixed-size models)
      │ normalise with the model's pretrained_cfg mean / std   (ImageNet's for edgenext_small)
      ▼
    timm model, pruned after feature level ``stage`` (forward_intermediates; classifier head removed)
      │ grid of level ``stage``: (b*t, C, h', w')              edgenext_small, last stage: C=304, /32
      ▼ flatten row-major: token i*w' + j is grid cell (i, j)
    tokens (b, t, h'*w', C) ─► [Linear C -> dim] ─► tokens (b, t, h'*w', out_dim)
                                                    cls (b, t, out_dim) = mean of a frame's tokens
    VideoFeatures(tokens, cls, grid=(h', w'))

Choices the paper leaves open:

* **Which grid.** The paper's ``S`` is the network's whole down-sampling; ``stage`` picks any of
  timm's feature levels (``model.feature_info``: EdgeNeXt's four stages at strides 4, 8, 16, 32;
  a ViT's blocks). Default ``-1``, the last: an ``8 x 8`` grid of 304-d cells for a 256x256 frame.
  Levels after ``stage`` and the classifier head are pruned (no parameters, no compute).
* **Final norm.** EdgeNeXt's last LayerNorm belongs to its classifier head, so the grid is the
  last stage's raw output (``forward_features``); ``norm=True`` applies what timm's
  ``forward_intermediates(norm=True)`` applies (a ViT's final LayerNorm; nothing for EdgeNeXt).
* **cls.** The paper has no per-frame global vector (its decoder adds a [CLS] of its own);
  ``cls`` is the mean of the frame's (projected) tokens.
* **Projection.** ``dim=None`` keeps the grid's width ``C``; ``dim`` adds the paper's linear
  transformation, applied to every token (PyTorch's default init). It is not part of any timm
  weights file, so ``frozen`` does not freeze it (a frozen random projection could never learn).
* **Input size.** Frames enter at their own size unless ``image_size`` is given (shorter side
  resized with the model's interpolation, then a centre crop); models with a fixed input size
  (ViTs) are built for ``image_size`` (default: their ``pretrained_cfg["input_size"]``).

Weights: random init by default; timm is always called with ``pretrained=False``. ``pretrained:
true`` reads timm's pretrained weights of ``model_name`` (``edgenext_small`` for its default tag,
or ``NAME.TAG``: ``edgenext_small.usi_in1k``, ``vit_base_patch16_clip_224.openai``) from the file
``timm.create_model(model_name, pretrained=True)`` would read: the pretrained config's
``hf_hub_id``, ``model.safetensors`` before ``pytorch_model.bin``, through the Hugging Face hub
cache (``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` reads only the cache; missing: one line naming the
id, the cache and ``hf download ...``; :func:`vqa_components.weights.timm_pretrained_file`); it
is loaded like a ``checkpoint`` and ``weights_source`` is ``hf-hub:REPO/FILE``. Nothing is
downloaded unless ``pretrained`` is set, and not on the meta device. ``checkpoint`` loads a local
file or folder through :func:`load_timm_weights` and wins over ``pretrained`` when both are given
(the hub is then not read): timm's own state dict (what timm's Hugging Face repositories hold,
classifier included) or this part's pruned ``model`` state dict; keys of pruned levels and of
the head are dropped, everything else must fit exactly. ``frozen``: no gradients for the timm
model, which stays in eval mode under ``train()`` (no dropout, drop-path or batch statistics), so
its output is a pure function of the pixels (``cacheable``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqa_components.backbones.multi_stream import one_stream
from vqa_components.interfaces import Backbone, VideoFeatures
from vqa_components.registry import BACKBONES
from vqa_components.weights import (
    TIMM_WEIGHT_FILES,
    load_weights,
    reads_pretrained_weights,
    timm_pretrained_cfg,
    timm_pretrained_file,
)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

def load_timm_weights(
    model: nn.Module, checkpoint: str | Path, model_name: str, dropped: Iterable[str] = ()
) -> Path:
    """Load a local weights file (or folder holding one) into the timm ``model``, strictly; returns the file.

    This is the one place the backbone reads timm weights (a local ``checkpoint``, or the file
    ``pretrained: true`` names in the hub cache). Files are found and read by
    :func:`~vqa_components.weights.load_weights`
    (a folder's :data:`~vqa_components.weights.TIMM_WEIGHT_FILES`; ``weights_only=True``;
    ``.safetensors``; a ``{"state_dict": ...}`` checkpoint; a DDP ``module.`` prefix is
    stripped). ``dropped``: keys of the full timm model that ``model`` no longer has (pruned levels
    and head); the file may hold them and they are ignored. A file in another layout (a model's
    original release) or with other shapes (a position table for another input size) goes through
    the model's timm ``checkpoint_filter_fn`` when it has one, as timm's own loader does.
    Anything else that does not fit raises :class:`~vqa_components.interfaces.ConfigError` naming
    the file and every mismatch.
    """
    dropped = set(dropped)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    own = set(shapes)

    def adapt(state: dict[str, Tensor]) -> dict[str, Tensor]:
        other_shapes = any(tuple(v.shape) != shapes[k] for k, v in state.items() if k in shapes and isinstance(v, Tensor))
        if set(state) - own - dropped or other_shapes:  # perhaps the original release's layout, another size
            filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
            if callable(filter_fn):
                try:
                    state = dict(filter_fn(dict(state), model))
                except Exception as exc:  # noqa: BLE001 - a filter that fails: the mismatch is reported below
                    log.debug("timm %s: checkpoint_filter_fn failed on %s: %s", model_name, checkpoint, exc)
        return {k: v for k, v in state.items() if k not in dropped or k in own}

    return load_weights(
        model, checkpoint, f"timm {model_name}", names=TIMM_WEIGHT_FILES, owner="timm backbone", adapt=adapt
    )


def _feature_levels(model: nn.Module, model_name: str) -> list[dict[str, Any]]:
    info = getattr(model, "feature_info", None)
    if not isinstance(info, (list, tuple)) or not info or not hasattr(model, "forward_intermediates"):
        raise ValueError(
            f"timm backbone: {model_name!r} has no forward_intermediates/feature_info in this timm "
            f"version, so its feature grid cannot be read; choose another timm model"
        )
    return [dict(level) for level in info]


@BACKBONES.register("timm")
class TimmBackbone(Backbone):
    """Per-frame feature grid of any timm image model, flattened to tokens (E-ViLM's EdgeNeXt encoder).

    Args (keyword only):
        model_name: a timm architecture (``timm.list_models()``), default ``"edgenext_small"``.
        dim: if given, a ``Linear`` from the grid's width to ``dim`` on every token
            (``out_dim = dim``); ``None`` keeps the width (304 for edgenext_small's last stage).
        stage: feature level whose grid becomes the tokens, an index into ``model.feature_info``
            (negative counts from the end; default ``-1``, the last, stride 32 for EdgeNeXt).
        norm: apply the model's final norm where timm's ``forward_intermediates(norm=True)`` does.
        image_size: resize frames (shorter side, then centre crop) to ``image_size`` square;
            ``None``: frames keep their size, except for fixed-size models (their input size).
        frozen: no gradients for the timm model, which stays in eval mode (not the projection).
        pretrained: timm's pretrained weights of ``model_name`` (its tag, or the default one) through
            the Hugging Face hub cache, as ``timm.create_model(model_name, pretrained=True)`` reads them.
        checkpoint: local weights file or folder (:func:`load_timm_weights`); wins over
            ``pretrained``. Neither: the random init.
        chunk_size: frames per forward pass (bounds memory).
        model_args: further ``timm.create_model`` arguments (e.g. ``drop_path_rate``).

    ``forward(video (b, t, 3, h, w) in [0, 1])`` -> ``VideoFeatures(tokens (b, t, h'*w', out_dim),
    cls (b, t, out_dim), grid=(h', w'))``; tokens row-major over the grid, ``cls`` their mean.
    """

    fsdp_blocks = ("Block", "ConvBlock", "SplitTransposeBlock")  # its repeated blocks: FSDP units (vqa_components.fsdp)

    def __init__(
        self,
        *,
        model_name: str = "edgenext_small",
        dim: int | None = None,
        stage: int = -1,
        norm: bool = False,
        image_size: int | None = None,
        frozen: bool = False,
        pretrained: bool = False,
        checkpoint: str | None = None,
        chunk_size: int = 64,
        model_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        if chunk_size < 1:
            raise ValueError(f"timm backbone: chunk_size must be >= 1, got {chunk_size}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"timm backbone: image_size must be >= 1, got {image_size}")
        extra = dict(model_args or {})
        if "pretrained" in extra or "features_only" in extra:
            raise ValueError(
                "timm backbone: model_args may not set pretrained or features_only (weights come "
                "from the pretrained or checkpoint argument; the grid from stage)"
            )
        if not timm.is_model(model_name):
            raise ValueError(
                f"timm backbone: unknown timm model {model_name!r}; see timm.list_models(), e.g. "
                f"{', '.join(timm.list_models('edgenext*')[:4])}"
            )
        cfg = dict(timm_pretrained_cfg(model_name).to_dict())
        fixed = bool(cfg.get("fixed_input_size", False))
        if fixed:
            image_size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
            extra.setdefault("img_size", image_size)
        model = timm.create_model(model_name, pretrained=False, **extra)
        levels = _feature_levels(model, model_name)
        index = stage + len(levels) if stage < 0 else stage
        if not 0 <= index < len(levels):
            choices = ", ".join(
                f"{i}: {lv.get('num_chs')} ch /{lv.get('reduction')}" for i, lv in enumerate(levels)
            )
            raise ValueError(
                f"timm backbone: stage {stage} is not a feature level of {model_name!r} ({choices})"
            )
        full_keys = set(model.state_dict())
        model.prune_intermediate_layers([index], prune_norm=not norm, prune_head=True)
        self.model = model
        self.pruned_keys = sorted(full_keys - set(model.state_dict()))
        self.model_name = model_name
        self.stage = index
        self.norm = norm
        self.frozen = frozen
        self.chunk_size = chunk_size
        self.image_size = image_size
        self.reduction = int(levels[index].get("reduction", 0)) or None
        self.feature_dim = int(levels[index]["num_chs"])
        self.proj = nn.Linear(self.feature_dim, dim) if dim is not None else None
        self.out_dim = int(dim) if dim is not None else self.feature_dim
        pcfg = getattr(model, "pretrained_cfg", None) or cfg
        self.interpolation = str(pcfg.get("interpolation", "bicubic"))
        mean, std = tuple(pcfg.get("mean", IMAGENET_MEAN)), tuple(pcfg.get("std", IMAGENET_STD))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        #: what determines the outputs besides the weights (read by FeatureCache)
        self.config = {
            "model_name": model_name,
            "stage": index,
            "norm": norm,
            "dim": dim,
            "image_size": image_size,
            "model_args": extra,
            "mean": list(map(float, mean)),
            "std": list(map(float, std)),
            "interpolation": self.interpolation,
        }
        #: eval mode is a pure function of pixels and weights; a frozen model stays in eval mode
        self.cacheable = frozen
        self.checkpoint = checkpoint
        self.pretrained = pretrained
        if checkpoint is not None:
            if pretrained:
                log.info("timm backbone: checkpoint %s replaces timm's pretrained weights of %s", checkpoint, model_name)
            self.load_checkpoint(checkpoint)
        elif pretrained:
            self.load_pretrained()
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    # ---------------------------------------------------------------- weights
    def load_checkpoint(self, checkpoint: str | Path) -> None:
        """Load timm weights from a local file or folder (:func:`load_timm_weights`)."""
        path = load_timm_weights(self.model, checkpoint, self.model_name, self.pruned_keys)
        self.weights_source = str(path)

    def load_pretrained(self) -> None:
        """Load timm's pretrained weights of ``model_name`` from the hub cache
        (:func:`~vqa_components.weights.timm_pretrained_file`; on the meta device only the source is recorded)."""
        source, path = timm_pretrained_file(self.model_name, download=reads_pretrained_weights())
        if path is not None:
            load_timm_weights(self.model, path, self.model_name, self.pruned_keys)
        self.weights_source = source

    def train(self, mode: bool = True) -> TimmBackbone:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    # --------------------------------------------------------------- forward
    def preprocess(self, frames: Tensor) -> Tensor:
        """``(f, 3, h, w)`` in [0, 1] -> normalised ``(f, 3, H, W)`` (resized and centre-cropped to
        ``image_size`` when it is set)."""
        if self.image_size is not None and tuple(frames.shape[-2:]) != (self.image_size, self.image_size):
            side = self.image_size
            h, w = frames.shape[-2:]
            scale = side / min(h, w)
            nh, nw = max(side, round(h * scale)), max(side, round(w * scale))
            mode = self.interpolation if self.interpolation in ("bilinear", "bicubic") else "bilinear"
            frames = F.interpolate(frames, size=(nh, nw), mode=mode, align_corners=False, antialias=True)
            top, left = (nh - side) // 2, (nw - side) // 2
            frames = frames[..., top : top + side, left : left + side]
        return (frames - self.mean.to(frames.dtype)) / self.std.to(frames.dtype)

    def feature_grid(self, frames: Tensor) -> Tensor:
        """Normalised ``(f, 3, H, W)`` -> the grid of level ``stage``, ``(f, C, h', w')``."""
        (grid,) = self.model.forward_intermediates(
            frames, indices=[self.stage], norm=self.norm, stop_early=True, intermediates_only=True
        )
        return grid

    def forward(self, video: Tensor | tuple[Tensor, ...]) -> VideoFeatures:
        video = one_stream(video, "timm")
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"timm backbone expects video (b, t, 3, h, w), got {tuple(video.shape)}")
        b, t = video.shape[:2]
        frames = video.reshape(b * t, *video.shape[2:])
        dtype = next(self.model.parameters()).dtype
        grad = torch.is_grad_enabled() and (not self.frozen or video.requires_grad)
        with torch.set_grad_enabled(grad):
            grids = [self.feature_grid(self.preprocess(c.to(dtype))) for c in frames.split(self.chunk_size)]
        grid = torch.cat(grids)
        h, w = grid.shape[-2:]
        tokens = rearrange(grid, "(b t) c h w -> b t (h w) c", b=b, t=t)
        if self.proj is not None:
            tokens = self.proj(tokens)
        return VideoFeatures(tokens=tokens, cls=tokens.mean(2), grid=(int(h), int(w)))

    def extra_repr(self) -> str:
        return (
            f"model_name={self.model_name!r}, stage={self.stage}, feature_dim={self.feature_dim}, "
            f"out_dim={self.out_dim}, image_size={self.image_size}, frozen={self.frozen}"
        )
