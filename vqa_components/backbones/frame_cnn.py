"""A small (2+1)D convolutional video encoder that trains from scratch on a CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqa_components.backbones.multi_stream import one_stream
from vqa_components.interfaces import Backbone, VideoFeatures
from vqa_components.layers.transformer import sinusoidal_positions
from vqa_components.registry import BACKBONES


class _TemporalConv(nn.Module):
    """Depthwise convolution over time at every spatial position, with a residual.

    Written as a weighted sum of time-shifted copies (``kernel`` of them), which
    on a CPU is several times faster than ``Conv1d(groups=channels)`` over
    ``(b h w)`` sequences.
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"temporal_kernel must be odd, got {kernel}")
        self.kernel = kernel
        self.weight = nn.Parameter(torch.zeros(kernel, channels))
        nn.init.trunc_normal_(self.weight, std=0.2)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor, t: int) -> Tensor:  # x: ((b t) c h w)
        y = rearrange(x, "(b t) c h w -> b t c h w", t=t)
        pad = self.kernel // 2
        padded = F.pad(y, (0, 0, 0, 0, 0, 0, pad, pad))
        mixed = sum(padded[:, k : k + t] * self.weight[k][:, None, None] for k in range(self.kernel))
        mixed = rearrange(mixed, "b t c h w -> (b t) c h w")
        return x + F.gelu(self.norm(mixed))


@BACKBONES.register("frame_cnn")
class FrameCNN(Backbone):
    """Small (2+1)D CNN: per-frame strided 3x3 convs, depthwise temporal convs, a token grid.

    ::

        (b t 3 h w) -> patchify conv (stem_patch x stem_patch, stride stem_patch) -> BN -> GELU
                    -> [conv3x3/2 -> BN -> GELU -> temporal conv] x (len(channels) - 1)
                    -> adaptive avg pool to (grid x grid) -> 1x1 proj to dim
                    -> + spatial and temporal position embeddings
                    -> tokens (b t grid² dim), cls = mean over the grid (b t dim)

    The temporal depthwise convolutions (kernel ``temporal_kernel``, 0 to disable)
    let the encoder see motion between neighbouring frames, which single-frame
    encoders cannot. Position embeddings: learned over the grid, fixed
    sinusoidal over time (so any number of frames works).

    Args:
        dim: output width ``d``.
        channels: width of the stem, then of each strided 3x3 stage (each halves h and w).
        stem_patch: stride (and kernel) of the patchify stem; 4 keeps a 64x64 frame
            cheap on a CPU (16x16 after the stem).
        grid: side of the output token grid (tokens per frame = grid²).
        temporal_kernel: kernel of the temporal convolutions (odd), 0 = none.
    """

    def __init__(
        self,
        dim: int = 128,
        channels: tuple[int, ...] = (32, 64, 128),
        stem_patch: int = 4,
        grid: int = 4,
        temporal_kernel: int = 3,
    ) -> None:
        super().__init__()
        self.out_dim = dim
        self.grid = grid
        self.config = {
            "dim": dim,
            "channels": list(channels),
            "stem_patch": stem_patch,
            "grid": grid,
            "temporal_kernel": temporal_kernel,
        }
        stages: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(3, channels[0], stem_patch, stride=stem_patch, bias=False),
                nn.BatchNorm2d(channels[0]),
                nn.GELU(),
            )
        ]
        temporal: list[nn.Module] = [nn.Identity()]
        c_in = channels[0]
        for c in channels[1:]:
            stages.append(
                nn.Sequential(nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.GELU())
            )
            temporal.append(_TemporalConv(c, temporal_kernel) if temporal_kernel else nn.Identity())
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.temporal = nn.ModuleList(temporal)
        self.proj = nn.Conv2d(c_in, dim, 1)
        self.pos = nn.Parameter(torch.zeros(grid * grid, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, video: Tensor | tuple[Tensor, ...]) -> VideoFeatures:
        video = one_stream(video, "frame_cnn")
        b, t = video.shape[:2]
        x = rearrange(video, "b t c h w -> (b t) c h w") * 2.0 - 1.0
        for stage, temp in zip(self.stages, self.temporal):
            x = stage(x)
            x = temp(x, t) if isinstance(temp, _TemporalConv) else x
        if x.shape[-2:] != (self.grid, self.grid):  # pooling a map to its own size copies it (6 % of a step)
            x = F.adaptive_avg_pool2d(x, self.grid)
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        tokens = rearrange(x, "(b t) d h w -> b t (h w) d", b=b, t=t)
        time = sinusoidal_positions(t, self.out_dim).to(tokens)
        tokens = tokens + self.pos + time[None, :, None, :]
        return VideoFeatures(tokens=tokens, cls=tokens.mean(2), grid=grid)
