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

Weights: random init by default (nothing is downloaded); ``checkpoint`` loads a
local file (or a folder holding one): a full open_clip/OpenAI CLIP state dict, a
visual-only one, a training checkpoint ``{"state_dict": ...}`` (a DDP
``module.`` prefix is stripped), ``.safetensors``, or an OpenAI TorchScript
archive. Loading is strict; see ``docs/parts/feature_cache.md``. A frozen tower
without a ``checkpoint`` keeps random weights: ``VideoQAModel`` refuses to train
with it unless ``allow_random_frozen`` is set.

This module is also where the library reads weight files (:func:`read_checkpoint`,
:func:`read_state_dict`, :func:`load_strict`): torch files are always read with
``weights_only=True``, so no file can run code when it is loaded.

Supported family: open_clip's own ``VisionTransformer`` towers (``ViT-*``
configs without an attentional pooler). ResNet (``RN50``...), timm and ConvNeXt
towers raise ``ValueError``.
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_components.backbones.multi_stream import one_stream
from vqa_components.interfaces import Backbone, ConfigError, VideoFeatures
from vqa_components.registry import BACKBONES

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: File names looked for, in this order, when ``checkpoint`` is a folder.
CHECKPOINT_FILE_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
    "model.pt",
    "model.pth",
)
#: Non-parameter entries found in OpenAI CLIP archives.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


# ------------------------------------------------------------- shared helpers


def build_open_clip_model(
    model_name: str,
    model_config: Mapping[str, Any] | None = None,
    image_size: int | None = None,
    context_length: int | None = None,
) -> nn.Module:
    """Build an open_clip model with random init; nothing is downloaded.

    ``model_config`` (``{"embed_dim", "vision_cfg", "text_cfg", ...}``, the
    format of open_clip's ``model_configs/*.json``) builds a custom architecture;
    ``model_name`` is then only a label.
    """
    import open_clip

    if model_config is None:
        if model_name not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip model {model_name!r}; pass model_config for a custom one. "
                f"Known ViT models: {', '.join(m for m in open_clip.list_models() if m.startswith('ViT-'))}"
            )
        kwargs: dict[str, Any] = {"pretrained": None, "pretrained_image": False, "pretrained_text": False}
        if image_size is not None:
            kwargs["force_image_size"] = image_size
        if context_length is not None:
            kwargs["force_context_length"] = context_length
        return open_clip.create_model(model_name, **kwargs)

    from open_clip.model import CLIP, CustomTextCLIP

    cfg = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in model_config.items()}
    for part in ("vision_cfg", "text_cfg"):
        if part not in cfg:
            raise ValueError(f"model_config for {model_name!r} needs {part!r} (open_clip config format)")
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = image_size
    if context_length is not None:
        cfg["text_cfg"]["context_length"] = context_length
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    cfg.pop("multimodal_cfg", None)
    cls = CustomTextCLIP if custom_text else CLIP
    return cls(**cfg)


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def resolve_checkpoint_file(checkpoint: str | Path, names: Iterable[str] = CHECKPOINT_FILE_NAMES) -> Path:
    """The weights file ``checkpoint`` names: the file itself, or the first known file in a folder."""
    p = Path(checkpoint).expanduser()
    if p.is_dir():
        for name in names:
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(
            f"checkpoint folder {p} holds none of the expected weight files: {', '.join(names)}"
        )
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {p}")
    return p


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
        reason = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else type(exc).__name__)
        raise ConfigError(
            f"could not read {path} as a weights-only torch file ({reason}); load it in Python with "
            f"torch.load(weights_only=False) only if you trust it, and save its state_dict() (torch.save or safetensors)"
        ) from exc


def read_state_dict(checkpoint: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a local file or folder, without executing pickled code.

    Accepts ``.safetensors``, ``torch.save`` files (read with
    ``weights_only=True``), training checkpoints holding ``state_dict``, and
    TorchScript archives (OpenAI's original CLIP files). A ``module.`` prefix
    on every key (DDP) is stripped.
    """
    path = resolve_checkpoint_file(checkpoint)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path), device="cpu")
    elif _is_torchscript_archive(path):
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = read_checkpoint(path)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise ConfigError(f"checkpoint {path} does not hold a state dict (got {type(state).__name__})")
    state = {str(k): v for k, v in state.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    # a module's extra state (``get_extra_state``: the bert encoder's vocabulary) is kept
    bad = [k for k, v in state.items() if not isinstance(v, Tensor) and not k.endswith("_extra_state")]
    if bad:
        state = {k: v for k, v in state.items() if k not in bad}
        unexpected = [k for k in bad if k not in _OPENAI_EXTRA_KEYS]
        if unexpected:
            log.debug("checkpoint %s: ignoring non-tensor entries %s", path, unexpected)
    return state


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
            ``"ViT-B-16"`` (VideoDistill), ``"ViT-B-32"``. ViT family only.
        checkpoint: local weights file or folder (full CLIP or visual-only state
            dict); ``None`` keeps the random init.
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
    ) -> None:
        super().__init__()
        from open_clip.transformer import VisionTransformer

        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        model = build_open_clip_model(model_name, model_config, image_size=image_size)
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
        self.register_buffer("mean", torch.tensor(pcfg.get("mean", OPENAI_MEAN)).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pcfg.get("std", OPENAI_STD)).view(3, 1, 1), persistent=False)
        #: what determines the outputs besides the weights (read by FeatureCache)
        self.config = {
            "model_name": model_name,
            "model_config": model_config,
            "image_size": list(self.image_size),
            "project": project,
            "mean": list(map(float, self.mean.flatten())),
            "std": list(map(float, self.std.flatten())),
            "interpolation": self.interpolation,
        }
        self.checkpoint = checkpoint
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        if frozen:
            self.requires_grad_(False)
            self.eval()

    # ---------------------------------------------------------------- weights
    def load_checkpoint(self, checkpoint: str | Path) -> None:
        """Load image-tower weights from a local full-CLIP or visual-only state dict (strict)."""
        state = read_state_dict(checkpoint)
        if any(k.startswith("visual.") for k in state):
            state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
        pe = state.get("positional_embedding")
        own_pe = self.visual.positional_embedding
        if pe is not None and pe.ndim == 2 and pe.shape != own_pe.shape and pe.shape[1] == own_pe.shape[1]:
            log.info("resizing position embedding %s -> %s", tuple(pe.shape), tuple(own_pe.shape))
            state = {**state, "positional_embedding": _resize_grid_pos_embed(pe, self.visual.grid_size)}
        path = resolve_checkpoint_file(checkpoint)
        load_strict(self.visual, state, path, f"open_clip {self.model_name} image tower")
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
