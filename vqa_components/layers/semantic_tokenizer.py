"""E-ViLM's semantic vector-quantized video tokenizer and the video tagger it leaves (section 3.3).

::

    pixels (b t 3 H W) in [0, 1]
      │  per frame: (x - mean) / std -> ViT over the frame's gh x gw patches (timm; a class token dropped)
      ▼
    PatchEncoder E ──► (b t gh gw e) ──► Linear e -> D ──► z = E(x)  (b t gh gw D)
      │                                                   │
      │                         VectorQuantizer q: nearest l2-normalised code         (eq. 4)
      │                                                   ▼
      │                         codes (b t gh gw) long,   C_q (b t gh gw D)  ── L_codebook, L_commit (eq. 7)
      │  ─────────── VideoTagger (encoder + quantizer): kept, frozen, in stage 2 ───────────
      ▼
    CodeDecoder D: Linear D -> d, + positions, self-attention blocks over all t*gh*gw codes
      ▼  mean over the |X| = t*gh*gw positions
    HEAD^S: Linear d -> K  ──► word logits (b K)  (sigmoid: eq. 5's y^S)                   (eq. 5)

Submodule names (what a stage-1 checkpoint holds, and where a stage-2 tagger finds it):
``SemanticVideoTokenizer.tagger.{encoder,quantizer}``, ``.decoder``, ``.word_head``; a stand-alone
:class:`VideoTagger` has the same ``encoder`` and ``quantizer``, so one prefix rename
(``<...>.tokenizer.tagger.`` -> ``<...>.tagger.``) carries the weights over.

The encoder's ViT is either built here (no ``model_name``: timm's ``VisionTransformer`` without a
class token, random weights) or a timm ViT by name (``model_name``; the paper recipes name
``vit_base_patch32_clip_quickgelu_224.openai``, OpenAI CLIP's ViT-B/32, the paper's "ViT [16]
architecture pre-trained by [59]"), whose pretrained weights ``pretrained: true`` reads through the
Hugging Face hub cache (:meth:`PatchEncoder.load_pretrained`).

Choices the paper leaves open:

* the encoder runs **per frame** (an image ViT over one frame's patches, attention within the
  frame, as the paper's ViT pretrained by CLIP does); a code describes one frame region, the
  frame count is free, and the decoder is where frames meet.
* patch size = the main backbone's stride, so that the tagger's per-frame grid matches the
  backbone's token grid (32 px patches at 256 px -> 8 x 8, the grid of EdgeNeXt's last stage).
* a named ViT's class token (its ``num_prefix_tokens``) is dropped after the ViT's final norm: one
  code per patch; CLIP's position table (7 x 7 at 224 px) is resampled to the frame's grid (8 x 8 at
  256 px) as timm resamples it.
* pixels are normalised with the named ViT's pretrained mean and std (CLIP's), else ImageNet's
  (timm's default).
* the decoder's input gets a learned embedding per grid cell and a fixed sinusoidal one per
  frame (the paper does not say whether D sees positions); width ``decoder_dim`` (384 by
  default; the paper gives 8 blocks, not their width), then a final LayerNorm.
* HEAD^S is one linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from vqa_components.errors import ConfigError
from vqa_components.layers.transformer import sinusoidal_positions
from vqa_components.layers.vector_quantizer import QuantizerOutput, VectorQuantizer

#: timm's ImageNet statistics (timm.data.IMAGENET_DEFAULT_MEAN / _STD)
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)
#: the ViT built when no ``model_name`` is given (ViT-B/32, the paper's size); explicit values replace these
VIT_B32 = {"patch_size": 32, "embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0}
#: who names itself in the encoder's errors
OWNER = "tagger"


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _timm_vit(model_name: str, img_size: tuple[int, int]) -> nn.Module:
    """timm's ``model_name`` for frames of ``img_size``, without classifier or pooling; random weights."""
    import timm
    from timm.models import is_model_in_modules
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(model_name):
        clip = ", ".join(timm.list_pretrained("vit_base_patch*_clip_quickgelu_224.openai"))
        raise ConfigError(
            f"{OWNER}: unknown timm model {model_name!r}; CLIP's ViTs: {clip} (timm.list_models('vit_*'))"
        )
    vit = None
    if is_model_in_modules(model_name, "vision_transformer"):
        vit = timm.create_model(
            model_name, pretrained=False, img_size=img_size, num_classes=0, global_pool=""
        )
    if not isinstance(vit, VisionTransformer):
        raise ConfigError(
            f"{OWNER}: model_name {model_name!r} is not a timm VisionTransformer "
            f"(timm.models.vision_transformer: a vit_* name, timm.list_models('vit_*'))"
        )
    return vit


def _vit_shape(vit: nn.Module) -> dict[str, Any]:
    """The :data:`VIT_B32` fields of a timm ``VisionTransformer`` (``None`` where a block does not say)."""
    ph, pw = vit.patch_embed.patch_size
    block = vit.blocks[0]
    heads = getattr(getattr(block, "attn", None), "num_heads", None)
    fc1 = getattr(getattr(block, "mlp", None), "fc1", None)
    return {
        "patch_size": ph if ph == pw else (ph, pw),
        "embed_dim": int(vit.embed_dim),
        "depth": len(vit.blocks),
        "num_heads": heads,
        "mlp_ratio": fc1.out_features / vit.embed_dim if isinstance(fc1, nn.Linear) else None,
    }


def load_timm_vit(vit: nn.Module, path: str | Path, model_name: str) -> None:
    """Load timm's pretrained file ``path`` of ``model_name`` into ``vit`` as timm loads it, strictly.

    What ``timm.create_model(model_name, pretrained=True, num_classes=0, global_pool="", img_size=...)``
    does with the file, with the weights read by :func:`~vqa_components.weights.read_state_dict`
    (``weights_only``): timm's ``vision_transformer.checkpoint_filter_fn`` (OpenAI's and open_clip's
    layouts converted, the position table resampled to ``vit``'s grid, bicubic with antialiasing),
    then the pretrained config's classifier (CLIP's projection, ``head``) dropped. Unlike timm (which
    loads non-strictly once the classifier is dropped), anything else that does not fit is one
    :class:`ConfigError` naming the file and every mismatch.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    from vqa_components import weights

    what = f"the {OWNER}'s timm {model_name}"
    state = dict(checkpoint_filter_fn(weights.read_state_dict(path, what), vit))
    classifiers = vit.pretrained_cfg.get("classifier") or ()
    for name in (classifiers,) if isinstance(classifiers, str) else classifiers:
        state.pop(f"{name}.weight", None)
        state.pop(f"{name}.bias", None)
    weights.load_strict(vit, state, path, what)


class PatchEncoder(nn.Module):
    """The tokenizer's encoder ``E``: a timm ViT over each frame's patches, projected to the code width.

    Args:
        img_size: frame size ``H`` (or ``(H, W)``) the position table is built for.
        patch_size: side of a patch; the grid is ``(H / patch, W / patch)``.
        embed_dim: the ViT's width ``e``.
        depth: ViT blocks.
        num_heads: attention heads.
        mlp_ratio: hidden width of the ViT's MLPs over ``e``.
        code_dim: output width ``D`` (the codebook's).
        model_name: a timm ViT (``NAME`` or ``NAME.TAG``, e.g. ``vit_base_patch32_clip_quickgelu_224.openai``)
            built for ``img_size`` without classifier; it sets the ViT's shape, so ``patch_size``,
            ``embed_dim``, ``depth``, ``num_heads`` and ``mlp_ratio`` may be left out, and one that
            contradicts it is a :class:`ConfigError`. Its class token is dropped and its pretrained
            mean and std normalise the pixels. ``None``: a ``VisionTransformer`` without class token
            built here, :data:`VIT_B32` where a field is left out, ImageNet's mean and std.
        pretrained: read ``model_name``'s pretrained weights (:meth:`load_pretrained`).

    ``forward(video (b, t, 3, H, W) floats in [0, 1])`` returns ``z (b, t, gh, gw, D)``.
    """

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int] = 256,
        patch_size: int | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        code_dim: int = 32,
        model_name: str | None = None,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        given = {"patch_size": patch_size, "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
                 "mlp_ratio": mlp_ratio}  # fmt: skip
        self.img_size = _pair(img_size)
        self.model_name = model_name
        self.pretrained = pretrained
        if model_name is None:
            if pretrained:
                raise ConfigError(
                    f"{OWNER}: pretrained needs model_name, the timm ViT whose weights to read "
                    f"(vit_base_patch32_clip_quickgelu_224.openai: CLIP's ViT-B/32)"
                )
            shape = {k: VIT_B32[k] if v is None else v for k, v in given.items()}
            self.vit = self._own_vit(shape)
            mean, std = PIXEL_MEAN, PIXEL_STD
        else:
            self.vit = _timm_vit(model_name, self.img_size)
            shape = _vit_shape(self.vit)
            wrong = [f"{k} {v}" for k, v in given.items() if v is not None and shape[k] not in (None, v)]
            if wrong:
                has = ", ".join(f"{k} {shape[k]}" for k in given if shape[k] is not None)
                raise ConfigError(
                    f"{OWNER}: {', '.join(wrong)} contradict{'s' if len(wrong) == 1 else ''} model_name "
                    f"{model_name!r} ({has}); leave them out: the timm model sets the ViT's shape"
                )
            ph, pw = self.vit.patch_embed.patch_size
            if self.img_size[0] % ph or self.img_size[1] % pw:
                raise ValueError(
                    f"PatchEncoder: img_size {self.img_size} is not a multiple of {model_name}'s "
                    f"patch size {ph}"
                )
            cfg = self.vit.pretrained_cfg or {}
            mean, std = tuple(cfg.get("mean", PIXEL_MEAN)), tuple(cfg.get("std", PIXEL_STD))
        self.patch_size = shape["patch_size"]
        self.embed_dim = int(shape["embed_dim"])
        self.mlp_ratio = float(shape["mlp_ratio"] if shape["mlp_ratio"] is not None else VIT_B32["mlp_ratio"])
        self.grid = (int(self.vit.patch_embed.grid_size[0]), int(self.vit.patch_embed.grid_size[1]))
        #: tokens before the patches in the ViT's output (a class token), dropped
        self.num_prefix_tokens = int(getattr(self.vit, "num_prefix_tokens", 0))
        self.pixel_mean, self.pixel_std = tuple(map(float, mean)), tuple(map(float, std))
        self.proj = nn.Linear(self.embed_dim, code_dim)
        self.register_buffer("mean", torch.tensor(self.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.pixel_std).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            self.load_pretrained()

    def _own_vit(self, shape: dict[str, Any]) -> nn.Module:
        from timm.models.vision_transformer import VisionTransformer  # imported when built: timm is heavy

        patch_size = shape["patch_size"]
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(
                f"PatchEncoder: img_size {self.img_size} is not a multiple of patch_size {patch_size}"
            )
        return VisionTransformer(
            img_size=self.img_size,
            patch_size=patch_size,
            num_classes=0,
            global_pool="",
            class_token=False,
            embed_dim=shape["embed_dim"],
            depth=shape["depth"],
            num_heads=shape["num_heads"],
            mlp_ratio=shape["mlp_ratio"],
        )

    def load_pretrained(self) -> None:
        """Read ``model_name``'s pretrained weights into the ViT, from the file
        ``timm.create_model(model_name, pretrained=True)`` reads (the tag's ``hf_hub_id``,
        ``model.safetensors`` before ``pytorch_model.bin``) in the Hugging Face hub cache
        (:func:`~vqa_components.weights.timm_pretrained_file`; missing and offline: one
        :class:`ConfigError` line naming the id and the ``hf download`` command), loaded by
        :func:`load_timm_vit`. ``weights_source`` records ``hf-hub:REPO/FILE``. Not looked up on
        the meta device nor inside :func:`~vqa_components.weights.weights_loaded_later` (only
        the source is recorded there)."""
        from vqa_components import weights

        assert self.model_name is not None
        read = weights.reads_pretrained_weights()
        source, path = weights.timm_pretrained_file(self.model_name, OWNER, download=read)
        if path is not None:
            load_timm_vit(self.vit, path, self.model_name)
        self.weights_source = source

    def forward(self, video: Tensor) -> Tensor:
        if video.ndim != 5 or video.shape[2] != 3 or tuple(video.shape[-2:]) != self.img_size:
            raise ValueError(
                f"video tokenizer: expected frames (b, t, 3, {self.img_size[0]}, {self.img_size[1]}), got "
                f"{tuple(video.shape)}; set img_size to the frame size"
            )
        b, t = video.shape[:2]
        x = (rearrange(video, "b t c h w -> (b t) c h w") - self.mean) / self.std
        z = self.proj(self.vit.forward_features(x)[:, self.num_prefix_tokens :])
        return rearrange(z, "(b t) (gh gw) d -> b t gh gw d", b=b, t=t, gh=self.grid[0])


@dataclass
class TaggerConfig:
    """The video tagger's architecture and quantizer options, given once to ``svq`` and again to ``mvm``.

    Stage 1 (``svq``) trains a tagger of this shape; stage 2 (``mvm``) builds the same shape and
    loads stage 1's weights into it, so the two recipes carry the same ``tagger:`` block. Defaults
    are the paper's (section 4: a ViT-B/32-sized encoder at 256 px, 9,420 codes of 32).

    Attributes:
        num_codes: ``M``, codebook size (paper: 9,420).
        code_dim: ``D``, code width (paper: 32).
        img_size: frame size ``H`` (or ``(H, W)``).
        patch_size: patch side; the code grid is ``img_size / patch_size`` per frame.
        embed_dim, depth, num_heads, mlp_ratio: the encoder ViT's. Left out (``None``): those of
            ``model_name``, else ViT-B/32's (:data:`VIT_B32`: 32, 768, 12, 12, 4.0); given with
            ``model_name`` (``patch_size`` too), they must be the model's.
        model_name: a timm ViT by name (``vit_base_patch32_clip_quickgelu_224.openai``: OpenAI CLIP's
            ViT-B/32, the paper's); ``None``: a ViT without class token built here
            (:class:`PatchEncoder`).
        pretrained: start the encoder's ViT from ``model_name``'s pretrained weights, read through the
            Hugging Face hub cache as timm reads them (:meth:`PatchEncoder.load_pretrained`). Stage 1
            only: stage 2's ``mvm`` ignores it (its tagger takes stage 1's weights by ``init_from``).
        beta: weight of the commitment term (eq. 7 has none, i.e. 1); used while training.
        restart_every: dead-code restarts every this many training forwards, 0 never (not in the
            paper; see :class:`~vqa_components.layers.vector_quantizer.VectorQuantizer`); used while
            training, so stage 2's frozen copy ignores it.
    """

    num_codes: int = 9420
    code_dim: int = 32
    img_size: int | tuple[int, int] = 256
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    beta: float = 1.0
    restart_every: int = 0
    model_name: str | None = None
    pretrained: bool = False

    @classmethod
    def of(cls, config: TaggerConfig | dict | None) -> TaggerConfig:
        """``config`` as a :class:`TaggerConfig`: ``None`` gives the defaults, a mapping its fields."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            unknown = set(config) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(
                    f"tagger: unknown field(s) {', '.join(sorted(unknown))}; "
                    f"known: {', '.join(cls.__dataclass_fields__)}"
                )
            return cls(**config)
        raise TypeError(f"tagger: expected a TaggerConfig or a mapping, got {type(config).__name__}")


class VideoTagger(nn.Module):
    """Encoder ``E`` + vector quantizer ``q``: pixels -> one code per frame patch (eq. 4).

    What E-ViLM keeps of its tokenizer after stage 1 ("we retain only the encoder and the
    vector-quantized module as our tokenizer") and what labels the masked regions in stage 2.

    Args:
        config: a :class:`TaggerConfig` (or a mapping of its fields; ``None``: the paper's).

    ``forward(video (b, t, 3, H, W) floats in [0, 1])`` returns ``codes (b, t, gh, gw)`` long;
    :meth:`quantize` gives everything the quantizer computed; :attr:`grid` is ``(gh, gw)``.
    """

    def __init__(self, config: TaggerConfig | dict | None = None) -> None:
        super().__init__()
        self.config = c = TaggerConfig.of(config)
        self.encoder = PatchEncoder(
            img_size=c.img_size,
            patch_size=c.patch_size,
            embed_dim=c.embed_dim,
            depth=c.depth,
            num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio,
            code_dim=c.code_dim,
            model_name=c.model_name,
            pretrained=c.pretrained,
        )
        self.quantizer = VectorQuantizer(c.num_codes, c.code_dim, beta=c.beta, restart_every=c.restart_every)

    @property
    def grid(self) -> tuple[int, int]:
        """``(gh, gw)``: the code grid of one frame."""
        return self.encoder.grid

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    def quantize(self, video: Tensor) -> QuantizerOutput:
        """The quantizer's output for ``video``: codes ``(b, t, gh, gw)``, ``C_q (b, t, gh, gw, D)``, ..."""
        return self.quantizer(self.encoder(video))

    def forward(self, video: Tensor) -> Tensor:
        return self.quantizer.lookup(self.encoder(video))


class CodeDecoder(nn.Module):
    """The tokenizer's decoder ``D``: self-attention blocks (timm's ``Block``) over all of a clip's codes.

    Args:
        code_dim: width ``D`` of the quantised codes.
        grid: ``(gh, gw)`` of a frame (one learned position embedding per cell).
        dim: the decoder's width ``d``.
        depth: blocks (paper: 8).
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLPs over ``d``.

    ``forward(quantized (b, t, gh, gw, D))`` returns ``(b, t*gh*gw, d)``.
    """

    def __init__(
        self, code_dim: int, grid: tuple[int, int], dim: int = 384, depth: int = 8, num_heads: int = 6,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block  # imported when built: timm is heavy

        self.dim = dim
        self.in_proj = nn.Linear(code_dim, dim)
        self.pos = nn.Parameter(torch.zeros(grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        blocks = (Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(dim)

    def forward(self, quantized: Tensor) -> Tensor:
        t = quantized.shape[1]
        x = self.in_proj(rearrange(quantized, "b t gh gw d -> b t (gh gw) d"))
        x = x + self.pos + sinusoidal_positions(t, self.dim).to(x)[None, :, None]
        return self.norm(self.blocks(rearrange(x, "b t n d -> b (t n) d")))


@dataclass
class TokenizerOutput:
    """What :class:`SemanticVideoTokenizer` computed.

    Attributes:
        logits: ``(b, K)`` word scores of HEAD^S; ``sigmoid(logits)`` is eq. 5's ``y^S``.
        vq: the quantizer's output (codes ``(b, t, gh, gw)``, the eq. 7 terms, utilisation, perplexity).
        encoded: ``(b, t, gh, gw, D)`` the encoder's output ``E(X)``, before the quantizer normalises it
            (where ``svq`` measures each term's gradient).
    """

    logits: Tensor
    vq: QuantizerOutput
    encoded: Tensor | None = None


class SemanticVideoTokenizer(nn.Module):
    """Encoder + quantizer + decoder + word head, trained to name the caption's words (eqs. 4, 5, 7).

    ::

        y^S = sigmoid(HEAD^S(1/|X| sum_i D(C_q)_i)),   C_q = q(E(X))                     (eqs. 4, 5)

    See the module docstring for the diagram and the choices.

    Args:
        tagger: the encoder and quantizer (:class:`TaggerConfig`, or a mapping of its fields).
        vocab_size: ``K``, the word classes of HEAD^S (the text encoder's vocabulary); ``None``
            builds no head until :meth:`build_word_head` is called (the ``svq`` objective does so
            when it is attached to a model).
        decoder_dim: the decoder's width.
        decoder_depth: the decoder's blocks (paper: 8).
        decoder_heads: the decoder's attention heads.
    """

    def __init__(
        self,
        tagger: TaggerConfig | dict | None = None,
        *,
        vocab_size: int | None = None,
        decoder_dim: int = 384,
        decoder_depth: int = 8,
        decoder_heads: int = 6,
    ) -> None:
        super().__init__()
        self.tagger = VideoTagger(tagger)
        mlp_ratio = self.tagger.encoder.mlp_ratio
        code_dim = self.tagger.config.code_dim
        self.decoder = CodeDecoder(code_dim, self.tagger.grid, decoder_dim, decoder_depth, decoder_heads, mlp_ratio)
        self.word_head: nn.Linear | None = None
        if vocab_size is not None:
            self.build_word_head(vocab_size)

    @property
    def vocab_size(self) -> int | None:
        return None if self.word_head is None else self.word_head.out_features

    def build_word_head(self, vocab_size: int) -> None:
        """Build HEAD^S for ``vocab_size`` words (keeps an existing head of that size)."""
        if int(vocab_size) <= 0:
            raise ValueError(f"SemanticVideoTokenizer: vocab_size must be positive, got {vocab_size}")
        if self.word_head is None or self.word_head.out_features != int(vocab_size):
            self.word_head = nn.Linear(self.decoder.dim, int(vocab_size))

    def forward(self, video: Tensor) -> TokenizerOutput:
        if self.word_head is None:
            raise RuntimeError(
                "SemanticVideoTokenizer: no word head yet; give vocab_size or call build_word_head"
            )
        encoded = self.tagger.encoder(video)
        vq = self.tagger.quantizer(encoded)
        decoded = self.decoder(vq.quantized)
        return TokenizerOutput(logits=self.word_head(decoded.mean(1)), vq=vq, encoded=encoded)
