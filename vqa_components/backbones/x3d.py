"""X3D video backbone: spatio-temporal feature maps of a channel-separable 3D ResNet.

X3D (Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", CVPR 2020,
Table 1) expands a tiny 2D network along time, resolution, width and depth. Written here from the
paper and its two published implementations (SlowFast ``video_model_builder.X3D`` with
``resnet_helper.X3DTransform``, and PyTorchVideo ``models/x3d.py``); no code is taken from them::

    video (b, t, 3, h, w) in [0, 1] ─► normalise (mean 0.45, std 0.225) ─► (b, 3, t, h, w)
      │
      ▼ stem: conv 1x3x3 /(1,2,2) 3->24 ─► depthwise conv 5x1x1 ─► BN ─► ReLU
      ▼ 4 stages of blocks, widths 24 48 96 192, depths [3 5 11 7] (XS/S/M) or [5 10 25 15] (L):
      │
      │   x ─► conv 1x1x1 (c -> 2.25c) ─► BN ─► ReLU
      │     ─► depthwise conv 3x3x3 (stride (1,2,2) in a stage's first block) ─► BN
      │     ─► [SE, ratio 1/16: blocks 1, 3, 5, ... of each stage] ─► Swish
      │     ─► conv 1x1x1 (2.25c -> c) ─► BN ──────────────────────┐
      │   x ─► identity, or conv 1x1x1 /(1,2,2) ─► BN (first block) ─► + ─► ReLU
      │
      ▼ conv5: conv 1x1x1 192 -> 432 ─► BN ─► ReLU                     (b, 432, t, h/32, w/32)
      ├─► tokens (b, t, (h/32)(w/32), 432) [─► Linear to ``dim``], cls = mean over positions
      └─► with ``num_classes``: global avg pool ─► conv 1x1x1 432 -> 2048 (no BN) ─► ReLU
                                ─► dropout 0.5 ─► Linear -> num_classes           (``classify``)

Time is never strided, so ``t' = t``; space is strided by 32.

Choices where the paper and the two implementations differ or say nothing
(``docs/parts/x3d.md`` has the full list):

* **Widths.** Stem and stage widths are ``round_width(base, width_factor)`` with bases 12, 12,
  24, 48, 96 (the code's ``DIM_C1 = 12``, doubled per stage, rounded to multiples of 8) and
  ``width_factor = 2.0`` for every preset here: 24, 24, 48, 96, 192.
* **Shortcut of a stage's first block.** SlowFast: strided 1x1x1 conv + BN whenever the width
  or the resolution changes. PyTorchVideo drops the BN when only the resolution changes (the
  first block of stage 1, 24 -> 24). We follow SlowFast (+48 parameters) unless built with
  ``layout="pytorchvideo"``, which a PyTorchVideo ``checkpoint`` selects by itself.
* **Weights.** ``checkpoint`` reads this module's own state dict or PyTorchVideo's published
  X3D-XS/S/M/L (:mod:`vqa_components.backbones.x3d_pytorchvideo` renames the keys and drops the
  Kinetics classifier unless ``num_classes`` is given); with the same weights the features equal
  PyTorchVideo's (tested block by block).
* **conv5** belongs to the head in both implementations (``X3DHead.conv_5``); here it ends the
  backbone, so the tokens are its 432-d output. Its width is the last stage's inner width,
  ``int(bottleneck_factor * 192)``.
* **Head pooling.** The sources average-pool with a kernel fixed to the training input and, at
  test time, average softmax scores over the remaining positions; we pool globally and return
  logits (the same at the training size, and no softmax).
* **Initialisation** (SlowFast's): convs Kaiming normal (fan-out, ReLU), biases 0, BN weight 1
  and bias 0 except the last BN of every block's residual branch at weight 0, classifier
  N(0, 0.01). The optional ``dim`` projection (not in the paper) keeps PyTorch's default init.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqa_components.backbones.multi_stream import one_stream
from vqa_components.backbones.x3d_pytorchvideo import (
    convert_pytorchvideo_x3d,
    is_pytorchvideo_x3d,
    read_x3d_checkpoint,
    stage_depths,
)
from vqa_components.interfaces import Backbone, ConfigError, VideoFeatures
from vqa_components.registry import BACKBONES
from vqa_components.weights import load_strict, state_mismatch

log = logging.getLogger(__name__)

#: Kinetics pixel statistics the published X3D models were trained with (inputs in [0, 1]).
X3D_MEAN = 0.45
X3D_STD = 0.225

#: Preset -> expansion factors and the input each was designed for (frames, crop side).
PRESETS: dict[str, dict[str, float | int]] = {
    "xs": {"width_factor": 2.0, "depth_factor": 2.2, "frames": 4, "crop": 160},
    "s": {"width_factor": 2.0, "depth_factor": 2.2, "frames": 13, "crop": 160},
    "m": {"width_factor": 2.0, "depth_factor": 2.2, "frames": 16, "crop": 224},
    "l": {"width_factor": 2.0, "depth_factor": 5.0, "frames": 16, "crop": 312},
}
STEM_BASE_WIDTH = 12
STAGE_BASE_WIDTHS = (12, 24, 48, 96)
STAGE_BASE_DEPTHS = (1, 2, 5, 3)
BOTTLENECK_FACTOR = 2.25
SE_RATIO = 1 / 16
HEAD_WIDTH = 2048
HEAD_DROPOUT = 0.5
#: Where a BN follows a projection shortcut: SlowFast (always) or PyTorchVideo (width changes only).
LAYOUTS = ("slowfast", "pytorchvideo")


def round_width(width: float, multiplier: float, divisor: int = 8, min_width: int = 8) -> int:
    """``width * multiplier`` to the nearest multiple of ``divisor`` (at least ``min_width``, never < 90%)."""
    scaled = width * multiplier
    out = max(min_width, int(scaled + divisor / 2) // divisor * divisor)
    return int(out + divisor if out < 0.9 * scaled else out)


def round_depth(depth: int, multiplier: float) -> int:
    """Blocks of a stage after depth expansion: ``ceil(depth * multiplier)``."""
    return math.ceil(depth * multiplier)


def file_layout(state: Mapping[str, Tensor]) -> str:
    """``"pytorchvideo"`` if a block of ``state`` (our names) has a projection shortcut without a BN."""
    convs = {k.removesuffix("branch1.weight") for k in state if k.endswith(".branch1.weight")}
    norms = {k.removesuffix("branch1_bn.weight") for k in state if k.endswith(".branch1_bn.weight")}
    return "pytorchvideo" if convs - norms else "slowfast"


def _in_our_names(state: dict[str, Tensor], path: Path, keep_head: bool) -> dict[str, Tensor]:
    """``state`` as read from ``path``, converted if it is PyTorchVideo's."""
    if is_pytorchvideo_x3d(state):
        log.info("x3d: %s holds PyTorchVideo's X3D layout: converting its keys", path)
        return convert_pytorchvideo_x3d(state, keep_head=keep_head, source=str(path))
    return state


def _bn(channels: int, zero: bool = False) -> nn.BatchNorm3d:
    bn = nn.BatchNorm3d(channels)
    nn.init.constant_(bn.weight, 0.0 if zero else 1.0)
    nn.init.zeros_(bn.bias)
    return bn


class SqueezeExcite(nn.Module):
    """Channel gating: ``x * sigmoid(fc2(relu(fc1(mean_thw(x)))))``, fc = 1x1x1 conv with bias."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(channels, reduced, 1)
        self.fc2 = nn.Conv3d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3, 4), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class X3DBlock(nn.Module):
    """One residual block (the module docstring draws it); ``x (b, dim_in, t, h, w)``.

    Args:
        dim_in, dim_inner, dim_out: input, expanded (depthwise) and output widths.
        stride: spatial stride of the depthwise conv and of the projection shortcut.
        se_ratio: squeeze-excitation width ``round_width(dim_inner, se_ratio)``; 0 = no SE.
        shortcut_bn: a BN after the projection shortcut (SlowFast: always; PyTorchVideo: only when
            the width changes). No effect on an identity shortcut.
    """

    def __init__(
        self,
        *,
        dim_in: int,
        dim_inner: int,
        dim_out: int,
        stride: int = 1,
        se_ratio: float = 0.0,
        shortcut_bn: bool = True,
    ) -> None:
        super().__init__()
        self.a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.a_bn = _bn(dim_inner)
        self.b = nn.Conv3d(
            dim_inner, dim_inner, 3, stride=(1, stride, stride), padding=1, groups=dim_inner, bias=False
        )
        self.b_bn = _bn(dim_inner)
        self.se = SqueezeExcite(dim_inner, round_width(dim_inner, se_ratio)) if se_ratio > 0 else None
        self.c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.c_bn = _bn(dim_out, zero=True)  # the branch starts at 0: the block starts as its shortcut
        self.branch1: nn.Conv3d | None = None
        self.branch1_bn: nn.BatchNorm3d | None = None
        if dim_in != dim_out or stride != 1:
            self.branch1 = nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False)
            self.branch1_bn = _bn(dim_out) if shortcut_bn else None

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.a_bn(self.a(x)))
        y = self.b_bn(self.b(y))
        if self.se is not None:
            y = self.se(y)
        y = self.c_bn(self.c(F.silu(y)))  # Swish = x * sigmoid(x) = SiLU
        shortcut = x if self.branch1 is None else self.branch1(x)
        if self.branch1_bn is not None:
            shortcut = self.branch1_bn(shortcut)
        return F.relu(shortcut + y)


class X3DStem(nn.Module):
    """Spatial 1x3x3 conv (stride 1,2,2), depthwise temporal 5x1x1 conv, BN, ReLU."""

    def __init__(self, dim_out: int, temporal_kernel: int = 5) -> None:
        super().__init__()
        self.conv_xy = nn.Conv3d(3, dim_out, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)
        self.conv_t = nn.Conv3d(
            dim_out,
            dim_out,
            (temporal_kernel, 1, 1),
            padding=(temporal_kernel // 2, 0, 0),
            groups=dim_out,
            bias=False,
        )
        self.bn = _bn(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv_t(self.conv_xy(x))))


class X3DHead(nn.Module):
    """The paper's classifier after conv5: global pool, 1x1x1 conv to 2048 (no BN), ReLU, dropout, linear."""

    def __init__(
        self, dim_in: int, num_classes: int, width: int = HEAD_WIDTH, dropout: float = HEAD_DROPOUT
    ) -> None:
        super().__init__()
        self.lin_5 = nn.Conv3d(dim_in, width, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # x: (b, c, t, h, w) after conv5
        pooled = x.mean(dim=(2, 3, 4), keepdim=True)
        z = F.relu(self.lin_5(pooled)).flatten(1)
        return self.projection(self.dropout(z))


@BACKBONES.register("x3d")
class X3D(Backbone):
    """X3D (XS/S/M/L) 3D CNN: per-frame grids of conv5 features, time kept at full rate.

    Args (keyword only):
        preset: ``"xs"``, ``"s"``, ``"m"`` or ``"l"``. XS, S and M are one network (width 2.0,
            depth 2.2) designed for different inputs (4x160², 13x160², 16x224²); L has depth 5.0
            (16x312²). The input size is not enforced: any ``t >= 1`` and ``h, w >= 1`` work.
        width_factor, depth_factor, bottleneck_factor: override the preset's expansion factors.
        dim: if given, a linear projection of the conv5 tokens (``feature_dim``, 432 by default)
            to ``dim`` (``out_dim = dim``).
        num_classes: if given, the paper's classification head exists (``self.head``,
            :meth:`classify`); ``forward`` never uses it. For parameter counts and loading
            classifier checkpoints.
        layout: ``"slowfast"`` (a BN after every projection shortcut, as SlowFast) or
            ``"pytorchvideo"`` (none after a projection that changes only the resolution, as
            PyTorchVideo: at the presets' widths, the first block of stage 1). ``None``: the layout
            of ``checkpoint``'s weights, ``"slowfast"`` without one.
        checkpoint: local weights file or folder: this module's own ``state_dict``, or PyTorchVideo's
            published X3D (``X3D_M.pyth``, its ``model_state``, or the hub model's ``state_dict``),
            converted by :func:`~vqa_components.backbones.x3d_pytorchvideo.convert_pytorchvideo_x3d`;
            ``None`` keeps the random initialisation. The classification head's weights are
            ignored when the model has no head.

    ``forward(video (b, t, 3, h, w) in [0, 1]) -> VideoFeatures(tokens (b, t, n, d), cls (b, t, d))``
    with ``n = ceil(h/32) * ceil(w/32)`` positions per frame, ``d = out_dim``, ``cls`` the mean of a
    frame's tokens; ``frame_mask`` is ``None`` (every output step is a real frame).
    """

    fsdp_blocks = ("X3DBlock",)  # its repeated blocks: FSDP units (vqa_components.fsdp)

    def __init__(
        self,
        *,
        preset: str = "xs",
        width_factor: float | None = None,
        depth_factor: float | None = None,
        bottleneck_factor: float | None = None,
        dim: int | None = None,
        num_classes: int | None = None,
        layout: str | None = None,
        checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        key = str(preset).lower()
        if key not in PRESETS:
            raise ValueError(
                f"x3d: unknown preset {preset!r}; choose one of {', '.join(repr(p) for p in PRESETS)}"
            )
        cfg = PRESETS[key]
        wf = float(cfg["width_factor"] if width_factor is None else width_factor)
        df = float(cfg["depth_factor"] if depth_factor is None else depth_factor)
        bf = BOTTLENECK_FACTOR if bottleneck_factor is None else float(bottleneck_factor)
        for name, value in (("width_factor", wf), ("depth_factor", df), ("bottleneck_factor", bf)):
            if not value > 0:
                raise ValueError(f"x3d: {name} must be > 0, got {value}")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"x3d: unknown layout {layout!r}; choose one of {', '.join(map(repr, LAYOUTS))}")
        self.preset = key
        self.input_frames, self.input_size = int(cfg["frames"]), int(cfg["crop"])
        what = f"x3d backbone (preset {key!r})"
        path, state = None, None
        if checkpoint is not None:  # read first: a PyTorchVideo file sets the layout
            path, state = read_x3d_checkpoint(checkpoint, what)
            state = _in_our_names(state, path, keep_head=num_classes is not None)
        self.layout = layout or (file_layout(state) if state is not None else "slowfast")

        stem_width = round_width(STEM_BASE_WIDTH, wf)
        self.stem = X3DStem(stem_width)
        self.depths = [round_depth(d, df) for d in STAGE_BASE_DEPTHS]
        self.widths = [round_width(w, wf) for w in STAGE_BASE_WIDTHS]
        stages, dim_in, dim_inner = [], stem_width, stem_width
        for depth, width in zip(self.depths, self.widths):
            dim_inner = int(bf * width)
            blocks = [
                X3DBlock(
                    dim_in=dim_in if j == 0 else width,
                    dim_inner=dim_inner,
                    dim_out=width,
                    stride=2 if j == 0 else 1,
                    se_ratio=SE_RATIO if j % 2 == 0 else 0.0,
                    shortcut_bn=self.layout == "slowfast" or (dim_in if j == 0 else width) != width,
                )
                for j in range(depth)
            ]
            stages.append(nn.Sequential(*blocks))
            dim_in = width
        self.stages = nn.ModuleList(stages)
        self.conv_5 = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.conv_5_bn = _bn(dim_inner)
        self.feature_dim = dim_inner
        self.head = X3DHead(dim_inner, num_classes) if num_classes is not None else None
        self.proj = nn.Linear(dim_inner, dim) if dim is not None else None
        self.out_dim = dim if dim is not None else dim_inner
        self._init_weights()

        self.config = {
            "preset": key,
            "width_factor": wf,
            "depth_factor": df,
            "bottleneck_factor": bf,
            "dim": dim,
            "num_classes": num_classes,
            "layout": self.layout,
            "mean": X3D_MEAN,
            "std": X3D_STD,
        }
        self.checkpoint = checkpoint
        if path is not None and state is not None:
            self._load_state(state, path)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.head is not None:
            nn.init.normal_(self.head.projection.weight, std=0.01)
            nn.init.zeros_(self.head.projection.bias)

    # ---------------------------------------------------------------- weights
    def load_checkpoint(self, checkpoint: str | Path) -> None:
        """Load a local ``state_dict`` of this module or a PyTorchVideo X3D file (strict; the
        classification head's weights are dropped if there is no head)."""
        path, state = read_x3d_checkpoint(checkpoint, f"x3d backbone (preset {self.preset!r})")
        self._load_state(_in_our_names(state, path, keep_head=self.head is not None), path)

    def _load_state(self, state: dict[str, Tensor], path: Path) -> None:
        what = f"x3d backbone (preset {self.preset!r})"
        if self.head is None and any(k.startswith("head.") for k in state):
            log.info("x3d: ignoring the checkpoint's classification head (num_classes is None)")
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        depths = stage_depths(state)
        if depths and depths != self.depths:
            ours = set(self.state_dict())
            key = next(iter(sorted(set(state) - ours) or sorted(ours - set(state))), "")
            fits = [
                p
                for p, c in PRESETS.items()
                if [round_depth(d, c["depth_factor"]) for d in STAGE_BASE_DEPTHS] == depths
            ]
            build = f"preset: {' / '.join(fits)}" if fits else "the depth_factor it was trained with"
            raise ConfigError(
                f"checkpoint {path} does not fit {what}: the file's stage depths are {depths}, the "
                f"model's {self.depths} (first differing key: {key}); build it with {build}"
            )
        mismatch = state_mismatch(self, state)
        theirs = file_layout(state)
        if mismatch and theirs != self.layout:
            raise ConfigError(
                f"checkpoint {path} does not fit {what}: {mismatch} (the file has {theirs}'s layout, "
                f"this model {self.layout}'s: build it with layout: {theirs}, or leave layout unset)"
            )
        load_strict(self, state, path, what)
        self.weights_source = str(path)

    # --------------------------------------------------------------- forward
    def feature_map(self, video: Tensor) -> Tensor:
        """``(b, t, 3, h, w)`` pixels in [0, 1] -> conv5 features ``(b, feature_dim, t, h', w')``."""
        video = one_stream(video, "x3d")
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"x3d backbone expects video (b, t, 3, h, w), got {tuple(video.shape)}")
        x = (video.to(self.conv_5.weight.dtype) - X3D_MEAN) / X3D_STD
        x = self.stem(rearrange(x, "b t c h w -> b c t h w"))
        for stage in self.stages:
            x = stage(x)
        return F.relu(self.conv_5_bn(self.conv_5(x)))

    def forward(self, video: Tensor | tuple[Tensor, ...]) -> VideoFeatures:
        tokens = rearrange(self.feature_map(video), "b d t h w -> b t (h w) d")
        if self.proj is not None:
            tokens = self.proj(tokens)
        return VideoFeatures(tokens=tokens, cls=tokens.mean(2))

    def classify(self, video: Tensor) -> Tensor:
        """Class logits ``(b, num_classes)`` of the paper's head (needs ``num_classes``)."""
        if self.head is None:
            raise RuntimeError("x3d: classify() needs the classification head; build with num_classes=...")
        return self.head(self.feature_map(video))

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, depths={self.depths}, widths={self.widths}, out_dim={self.out_dim}"
