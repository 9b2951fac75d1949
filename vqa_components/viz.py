"""Interpretability figures: which frames a sampler chose and where the LA-Gates looked.

``vqa explain --config RECIPE --ckpt_path best --index 3 --out explain.png`` runs the model
on one sample and saves a PNG with

* the dense frames the sampler saw, the chosen ones framed in red (with their slot number),
* for every chosen frame, the per-patch gate values of the vision-refinement blocks
  (LA-Gate importances, mean over heads and blocks) as a heat map over the frame.

Needs ``matplotlib`` (the ``viz`` or ``test`` extra).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vqa_components.interfaces import ModelOutput
from vqa_components.model import pixels_to_float


def patch_gate_map(gates: list[Tensor] | Tensor, num_frames: int, grid: tuple[int, int]) -> Tensor:
    """Per-patch gate values ``(k, gh, gw)`` of one sample.

    Args:
        gates: the refinement blocks' gates for one sample, each ``(heads, 1 + k*n)``
            (the first token is the video CLS) or ``(1 + k*n,)``.
        num_frames: ``k``, the selected frames.
        grid: ``(gh, gw)`` with ``gh * gw = n``.
    """
    if isinstance(gates, Tensor):
        gates = [gates]
    maps = []
    for g in gates:
        g = g.detach().float()
        if g.ndim == 2:
            g = g.mean(0)
        patches = g[-num_frames * grid[0] * grid[1] :]  # drop the CLS token(s)
        maps.append(patches.reshape(num_frames, *grid))
    return torch.stack(maps).mean(0)


def _grid_of(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"cannot arrange {n} tokens per frame as a square grid")
    return side, side


def plot_explanation(
    frames: Tensor,
    selected: list[int],
    gate_map: Tensor | None,
    title: str,
    path: str | Path,
) -> Path:
    """Save the figure. ``frames``: ``(t, 3, h, w)`` in ``[0, 1]``; ``gate_map``: ``(k, gh, gw)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    t = frames.shape[0]
    k = len(selected)
    cols = min(t, 16)
    rows_dense = math.ceil(t / cols)
    rows = rows_dense + (math.ceil(k / cols) if gate_map is not None else 0)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.25 + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    chosen = {}
    for slot, idx in enumerate(selected):
        chosen.setdefault(idx, []).append(slot)
    for i in range(t):
        ax = axes[i // cols][i % cols]
        ax.imshow(frames[i].permute(1, 2, 0).clamp(0, 1).numpy())
        if i in chosen:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_edgecolor("red")
                side.set_linewidth(2.5)
            ax.set_title("slot " + ",".join(map(str, chosen[i])), fontsize=6, color="red")
        else:
            ax.set_title(str(i), fontsize=6)
    if gate_map is not None:
        h, w = frames.shape[-2:]
        up = F.interpolate(gate_map[:, None], size=(h, w), mode="nearest")[:, 0]
        lo, hi = float(gate_map.min()), float(gate_map.max())
        for slot, idx in enumerate(selected):
            r, c = rows_dense + slot // cols, slot % cols
            ax = axes[r][c]
            ax.imshow(frames[idx].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.imshow(up[slot].numpy(), cmap="inferno", alpha=0.55, vmin=lo, vmax=hi)
            ax.set_title(f"gates, frame {idx}", fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def explain(model: Any, batch: dict[str, Any], path: str | Path, index: int = 0) -> dict[str, Any]:
    """Run ``model`` on ``batch`` (eval mode) and save the figure of sample ``index``.

    Returns what was plotted: ``frames`` (``(t, 3, h, w)`` floats in ``[0, 1]``; ``uint8`` pixels,
    as datasets emit them, are scaled), ``selected`` frame indices, ``prediction``, ``answer``,
    and ``gates`` (``(k, gh, gw)`` or ``None`` when the fusion has no gates).
    """
    was_training = model.training
    model.eval()
    try:
        out: ModelOutput = model(batch)
    finally:
        model.train(was_training)
    video = batch["video"][0] if isinstance(batch["video"], (tuple, list)) else batch["video"]
    frames = pixels_to_float(video[index].detach().cpu())
    t = frames.shape[0]
    if out.sampled is not None:
        selected = [int(i) for i in out.sampled.indices[index].tolist()]
    else:
        selected = list(range(t))
    k = len(selected)
    gates = out.fused.extras.get("gates") if out.fused.extras else None
    gate_map = None
    if gates:
        per_sample = [g[index] for g in gates]
        fused_video = out.sampled.video if out.sampled is not None else out.video
        tokens_per_frame = fused_video.tokens.shape[2]  # gates end with the k * n patch tokens
        gate_map = patch_gate_map(per_sample, k, _grid_of(tokens_per_frame)).cpu()
    vocab = getattr(model, "answer_vocab", []) or []
    pred_idx = int(out.logits[index].argmax())
    prediction = vocab[pred_idx] if pred_idx < len(vocab) else str(pred_idx)
    answer = batch.get("answer", [None] * (index + 1))[index]
    title = f"Q: {batch['question'][index]}   predicted: {prediction}" + (f"   answer: {answer}" if answer else "")
    plot_explanation(frames, selected, gate_map, title, path)
    return {"frames": frames, "selected": selected, "prediction": prediction, "answer": answer, "gates": gate_map}
