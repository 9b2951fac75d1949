"""E-ViLM's semantic vector-quantized video tokenizer and the video tagger it leaves (section 3.3).

::

    pixels (b t 3 H W) in [0, 1]
      │  per frame: (x - mean) / std -> ViT over the frame's gh x gw patches (timm, no class token)
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

Choices the paper leaves open:

* the encoder runs **per frame** (an image ViT over one frame's patches, attention within the
  frame, as the paper's BEiT v2 ViT does); a code describes one frame region, the frame count
  is free, and the decoder is where frames meet.
* patch size = the main backbone's stride, so that the tagger's per-frame grid matches the
  backbone's token grid (32 px patches at 256 px -> 8 x 8, the grid of EdgeNeXt's last stage).
* pixels are normalised with ImageNet's mean and std before the ViT (timm's default).
* the decoder's input gets a learned embedding per grid cell and a fixed sinusoidal one per
  frame (the paper does not say whether D sees positions); width ``decoder_dim`` (384 by
  default; the paper gives 8 blocks, not their width), then a final LayerNorm.
* HEAD^S is one linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from vqa_components.layers.transformer import sinusoidal_positions
from vqa_components.layers.vector_quantizer import QuantizerOutput, VectorQuantizer

#: timm's ImageNet statistics (timm.data.IMAGENET_DEFAULT_MEAN / _STD)
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


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

    ``forward(video (b, t, 3, H, W) floats in [0, 1])`` returns ``z (b, t, gh, gw, D)``.
    """

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int] = 256,
        patch_size: int = 32,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        code_dim: int = 32,
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer  # imported when built: timm is heavy

        self.img_size = _pair(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(
                f"PatchEncoder: img_size {self.img_size} is not a multiple of patch_size {patch_size}"
            )
        self.grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.vit = VisionTransformer(
            img_size=self.img_size,
            patch_size=patch_size,
            num_classes=0,
            global_pool="",
            class_token=False,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
        )
        self.proj = nn.Linear(embed_dim, code_dim)
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, video: Tensor) -> Tensor:
        if video.ndim != 5 or video.shape[2] != 3 or tuple(video.shape[-2:]) != self.img_size:
            raise ValueError(
                f"video tokenizer: expected frames (b, t, 3, {self.img_size[0]}, {self.img_size[1]}), got "
                f"{tuple(video.shape)}; set img_size to the frame size"
            )
        b, t = video.shape[:2]
        x = (rearrange(video, "b t c h w -> (b t) c h w") - self.mean) / self.std
        z = self.proj(self.vit.forward_features(x))
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
        embed_dim, depth, num_heads, mlp_ratio: the encoder ViT's.
        beta: weight of the commitment term (eq. 7 has none, i.e. 1); used while training.
        restart_every: dead-code restarts every this many training forwards, 0 never (not in the
            paper; see :class:`~vqa_components.layers.vector_quantizer.VectorQuantizer`); used while
            training, so stage 2's frozen copy ignores it.
    """

    num_codes: int = 9420
    code_dim: int = 32
    img_size: int | tuple[int, int] = 256
    patch_size: int = 32
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    beta: float = 1.0
    restart_every: int = 0

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
        b, t = quantized.shape[:2]
        x = self.in_proj(rearrange(quantized, "b t gh gw d -> b t (gh gw) d"))
        x = x + self.pos + sinusoidal_positions(t, self.dim).to(x)[None, :, None]
        return self.norm(self.blocks(rearrange(x, "b t n d -> b (t n) d")))


@dataclass
class TokenizerOutput:
    """What :class:`SemanticVideoTokenizer` computed.

    Attributes:
        logits: ``(b, K)`` word scores of HEAD^S; ``sigmoid(logits)`` is eq. 5's ``y^S``.
        vq: the quantizer's output (codes ``(b, t, gh, gw)``, the eq. 7 terms, utilisation, perplexity).
    """

    logits: Tensor
    vq: QuantizerOutput


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
        mlp_ratio = self.tagger.config.mlp_ratio
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
        vq = self.tagger.quantize(video)
        decoded = self.decoder(vq.quantized)
        return TokenizerOutput(logits=self.word_head(decoded.mean(1)), vq=vq)
