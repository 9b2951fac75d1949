"""Masked video modelling with a frozen semantic video tagger (E-ViLM, Fang et al., section 3.2, eq. 3)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_components.interfaces import ConfigError, FusionOutput, ModelOutput, Objective, VideoFeatures
from vqa_components.layers.masking import block_mask, mask_pixels
from vqa_components.layers.pixels import one_stream_pixels
from vqa_components.layers.semantic_tokenizer import TaggerConfig, VideoTagger
from vqa_components.objectives.masked_pass import MaskedVideo
from vqa_components.registry import OBJECTIVES


@OBJECTIVES.register("mvm")
class MaskedVideoModeling(Objective):
    """Predict the frozen tagger's code of every masked frame region from the fused video tokens (eq. 3).

    ::

        mask  = block masks of ratio 0.4 on each frame's gh x gw grid          (layers/masking.py)
        y_i   = tagger(unmasked pixels)_i                  (stage 1's encoder + quantizer, frozen)
        h^V   = fusion(backbone(pixels with masked cells set to 0), text).extras["video_tokens"]
        L_MVM = 1/N sum_{i masked} CE(HEAD^V(h^V_i), y_i)                                   (eq. 3)

    ``N`` is the number of masked regions in the batch (eq. 3 prints a minus before the sum of
    CE terms; CE is already a negative log-likelihood, so the loss is their plain mean).

    Per batch: the tagger labels the **unmasked** frames ``batch["video"]`` (:meth:`mask_video`).
    Which pass the masked frames take is the model's ``masked_pass``
    (:mod:`~vqa_components.objectives.masked_pass`): ``"single"`` (E-ViLM's Fig. 3, the E-ViLM
    pretraining recipes), the model's one forward on the masked frames and the masked text, whose
    ``h^V`` this objective reads from ``out``; ``"separate"``, a pass of its own: the masked pixels
    through ``model.encode_video(masked, batch, use_cache=False)`` (a feature cache would return
    the unmasked clip's features), the unmasked text ``batch[model.text_field]`` through
    ``model.encode_text``, and both through ``model.fuse``. The fusion must give one output token
    per video token, ``FusionOutput.extras["video_tokens"]`` ``(b, t*n, d)`` frame-major, and the
    backbone its token grid (``VideoFeatures.grid``), which must equal the tagger's code grid
    (``img_size / patch_size``), so that token ``i*gw + j`` of a frame is the region of code
    ``(i, j)``. E-ViLM has no frame sampler; with one, the positions would not match (an error).

    The tagger (``tagger``: ``encoder`` + ``quantizer``, the same submodules as stage 1's
    ``svq.tokenizer.tagger``, so that one prefix rename maps a stage-1 checkpoint onto it) is
    frozen: no gradients, no optimizer, and always in eval mode, also after ``model.train()``.
    It runs under the ambient precision (its distances in float32); it is the tagger "online".

    Choices the paper leaves open: HEAD^V is one linear layer from the fusion's width to the
    ``M`` codes; padded frames (``frame_mask`` False) are no targets; masks are drawn per frame
    (:func:`~vqa_components.layers.masking.block_mask`, ``min_block_cells`` = 4 cells); masked
    pixels are zero in ``[0, 1]`` pixel space (black), before any normalisation by the backbone.

    Returns ``{"loss", "acc"}`` (``acc``: code accuracy at the masked positions).

    Args:
        in_dim: width of ``video_tokens``; ``None`` (the usual) takes ``model.fusion.out_dim``
            when the model attaches the objective.
        mask_ratio: fraction of each frame's grid cells to mask (paper: 0.4).
        min_block_cells: smallest block area (see :func:`~vqa_components.layers.masking.frame_blocks`).
        weight: scale of this loss in the total.
        tagger: the tagger's shape, the ``tagger`` block given to stage 1's ``svq``
            (:class:`~vqa_components.layers.semantic_tokenizer.TaggerConfig` or a mapping; its
            training options ``beta`` and ``restart_every`` do nothing here: the tagger is frozen;
            nor does ``pretrained``: the tagger is built with ``model_name``'s architecture but no
            pretrained weights are read, stage 1's come through ``init_from``).
    """

    #: it reads the fusion's token outputs (a head that skips the fusion leaves it trainable for this)
    reads_fused_tokens = True

    def __init__(
        self,
        in_dim: int | None = None,
        *,
        mask_ratio: float = 0.4,
        min_block_cells: int = 4,
        weight: float = 1.0,
        tagger: TaggerConfig | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio <= 1.0:
            raise ConfigError(f"mvm: mask_ratio must be in (0, 1], got {mask_ratio}")
        self.mask_ratio = mask_ratio
        self.min_block_cells = min_block_cells
        self.weight = weight
        # stage 1's weights replace the whole tagger (init_from): its ViT's pretrained ones are not read
        self.tagger = VideoTagger(dataclasses.replace(TaggerConfig.of(tagger), pretrained=False))
        self.tagger.requires_grad_(False)
        self.tagger.eval()
        self.head: nn.Linear | None = None if in_dim is None else nn.Linear(in_dim, self.tagger.num_codes)
        #: random source of the masks (a CPU ``torch.Generator``); ``None``: torch's global one
        self.generator: torch.Generator | None = None

    def train(self, mode: bool = True) -> MaskedVideoModeling:
        super().train(mode)
        self.tagger.eval()
        return self

    def attach(self, model: nn.Module) -> None:
        fusion = getattr(model, "fusion", None)
        if fusion is None:
            raise ConfigError("mvm: the model needs a fusion: HEAD^V reads its video_tokens")
        if self.head is None:
            self.head = nn.Linear(fusion.out_dim, self.tagger.num_codes)
        elif self.head.in_features != fusion.out_dim:
            raise ConfigError(
                f"mvm: in_dim={self.head.in_features} but the fusion has out_dim={fusion.out_dim}; "
                f"drop in_dim (it is taken from the fusion)"
            )

    def mask_video(self, model: nn.Module, batch: dict[str, Any]) -> MaskedVideo:
        """Block masks of ``batch["video"]``, the masked pixels and the tagger's codes of the unmasked frames."""
        video = one_stream_pixels(batch["video"], "mvm: the tagger")
        b, t = video.shape[:2]
        self.tagger.eval()
        with torch.no_grad():
            codes = self.tagger(video)
        mask = block_mask(
            b, t, self.tagger.grid, self.mask_ratio, min_cells=self.min_block_cells, generator=self.generator,
            device=video.device,
        )
        return MaskedVideo(pixels=mask_pixels(video, mask), mask=mask, targets=codes)

    def forward(
        self, model: nn.Module, batch: dict[str, Any], out: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        if self.head is None:
            raise ConfigError(
                "mvm: HEAD^V is not built: give in_dim, or let a VideoQAModel attach the objective"
            )
        shared = getattr(out, "masked", None)
        if shared is not None and shared.video is not None:  # masked_pass single: the model's pass is ours
            masked, feats, sampled, fused = shared.video, out.video, out.sampled, out.fused
            self._check_grid(model, feats.grid, feats.tokens.shape, masked.mask.shape[1])
        else:
            masked = self.mask_video(model, batch)
            feats = model.encode_video(masked.pixels, batch, use_cache=False)
            self._check_grid(model, feats.grid, feats.tokens.shape, masked.mask.shape[1])
            sampled, fused = model.fuse(feats, model.encode_text(batch[model.text_field]))
        if sampled is not None:
            raise ConfigError(
                "mvm: the model has a frame sampler, so the fused video tokens are not the masked frames' "
                "positions; masked video modelling needs a model without a sampler (E-ViLM has none)"
            )
        return self._loss(model, masked, feats, fused)

    def _loss(
        self, model: nn.Module, masked: MaskedVideo, feats: VideoFeatures, fused: FusionOutput
    ) -> dict[str, Tensor]:
        b, t, gh, gw = masked.mask.shape
        n = gh * gw
        tokens = fused.extras.get("video_tokens")
        if tokens is None:
            raise ConfigError(
                f"mvm: fusion {type(model.fusion).__name__} gives no extras['video_tokens'] (one output "
                f"per video token); use a fusion that keeps them, such as E-ViLM's merged decoder"
            )
        if tuple(tokens.shape[:2]) != (b, t * n):
            raise ConfigError(
                f"mvm: extras['video_tokens'] has shape {tuple(tokens.shape)}, expected ({b}, {t * n}, d): "
                f"one per video token of {t} frames x {n} cells"
            )
        where = masked.mask.flatten(1)
        if feats.frame_mask is not None:
            where = where & feats.frame_mask.to(where.device).bool().repeat_interleave(n, dim=1)
        target = masked.targets.flatten(1)[where]
        if not where.any():  # only padded frames: no target, but every parameter in the graph (DDP)
            zero = (tokens.sum() + sum(p.sum() for p in self.head.parameters())) * 0.0
            return {"loss": zero, "acc": zero.detach()}
        logits = self.head(tokens[where]).float()
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        return {"loss": loss, "acc": acc.detach()}

    def _check_grid(
        self, model: nn.Module, grid: tuple[int, int] | None, shape: torch.Size, frames: int
    ) -> None:
        name = getattr(model.backbone, "registry_name", "") or type(model.backbone).__name__
        gh, gw = self.tagger.grid
        if grid is None:
            raise ConfigError(
                f"mvm: backbone {name} gives no token grid (VideoFeatures.grid is None); masked video "
                f"modelling needs a backbone whose tokens are a spatial grid matching the tagger's "
                f"{gh}x{gw} codes"
            )
        if tuple(grid) != (gh, gw):
            raise ConfigError(
                f"mvm: backbone {name} has a {grid[0]}x{grid[1]} token grid but the tagger codes a "
                f"{gh}x{gw} grid (img_size / patch_size); choose the tagger's patch_size (in stage 1 too) "
                f"so that they match"
            )
        if shape[1] != frames:
            raise ConfigError(
                f"mvm: backbone {name} gives {shape[1]} frames of tokens for {frames} frames of pixels"
            )
