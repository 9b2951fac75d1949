"""Interpretability figures: which frames a sampler chose, where the LA-Gates looked, and what the
co-tokenizer selected from each stream.

``vqa explain --config RECIPE --ckpt_path best --index 3 --out explain.png`` runs the model
on one sample and saves a PNG. For a sampler and gating fusion (VideoDistill) it shows

* the dense frames the sampler saw, the chosen ones framed in red (with their slot number),
* for every chosen frame, the per-patch gate values of the vision-refinement blocks
  (LA-Gate importances, mean over heads and blocks) as a heat map over the frame.

For a ``co_tokenizer`` fusion (its ``extras["selection_maps"]``) it shows, as the co-tokenization
blog's figure of per-layer maps, one block of rows per iteration and stream: every frame of the
stream with its selection mass as a heat map over the frame's positions,
``sum_k A_i[k, position]`` (how much of the ``K`` tokens' weight the position takes; summed over
all streams and positions it is ``K``), and the stream's share of that mass in the row title.
One colour scale per iteration, shared by its streams, so the streams compare.

Needs ``matplotlib`` (the ``viz`` or ``test`` extra).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vqa_components.interfaces import ModelOutput
from vqa_components.layers.pixels import pixels_to_float


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


def _save(fig: Any, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (110 dpi; missing folders made), close it; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    return _save(fig, path)


@torch.no_grad()
def explain(model: Any, batch: dict[str, Any], path: str | Path, index: int = 0) -> dict[str, Any]:
    """Run ``model`` on ``batch`` (eval mode) and save the figure of sample ``index``.

    Returns what was plotted: ``frames`` (``(t, 3, h, w)`` floats in ``[0, 1]``; ``uint8`` pixels,
    as datasets emit them, are scaled), ``selected`` frame indices, ``prediction``, ``answer``,
    and ``gates`` (``(k, gh, gw)`` or ``None`` when the fusion has no gates). A fusion with
    selection maps (``co_tokenizer``) gets the figure of :func:`explain_co_tokens` and returns its
    dict instead.
    """
    was_training = model.training
    model.eval()
    try:
        out: ModelOutput = model(batch)
        prediction = _prediction(model, out, index)  # in eval mode: a generating head decodes without dropout
    finally:
        model.train(was_training)
    if out.fused.extras and "selection_maps" in out.fused.extras:
        return explain_co_tokens(batch, out, path, index, prediction)
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
    answer = batch.get("answer", [None] * (index + 1))[index]
    title = f"Q: {batch['question'][index]}   predicted: {prediction}" + (f"   answer: {answer}" if answer else "")
    plot_explanation(frames, selected, gate_map, title, path)
    return {"frames": frames, "selected": selected, "prediction": prediction, "answer": answer, "gates": gate_map}


def _prediction(model: Any, out: ModelOutput, index: int) -> str:
    """The head's answer for sample ``index``: generated text, or the answer vocabulary's entry."""
    answers = model.head.answers(out)
    if isinstance(answers, list):
        return str(answers[index])
    vocab = getattr(model, "answer_vocab", []) or []
    pred_idx = int(answers[index])
    return vocab[pred_idx] if 0 <= pred_idx < len(vocab) else str(pred_idx)


# ------------------------------------------------------------------ co-tokenizer selection maps


def position_grid(n: int) -> tuple[int, int]:
    """How ``n`` positions of a frame lie: a square grid (row-major, as ``x3d`` and ``frame_cnn``
    emit them), else one row."""
    side = math.isqrt(n)
    return (side, side) if side * side == n else (1, n)


def stream_selection_maps(selection_maps: list[list[Tensor]], index: int) -> list[list[Tensor]]:
    """Per iteration, per stream: the selection mass ``(t_s, gh, gw)`` of sample ``index``.

    Args:
        selection_maps: ``co_tokenizer``'s ``extras["selection_maps"]``: one list per iteration of
            one ``(b, K, t_s, n_s)`` map per stream.
        index: the sample.

    Returns ``sum_k A[index, k]`` reshaped over each frame's position grid (:func:`position_grid`).
    """
    out = []
    for per_stream in selection_maps:
        row = []
        for m in per_stream:
            mass = m[index].detach().float().sum(0).cpu()  # (t_s, n_s)
            row.append(mass.reshape(mass.shape[0], *position_grid(mass.shape[1])))
        out.append(row)
    return out


def plot_selection_maps(
    frames: list[Tensor], maps: list[list[Tensor]], title: str, path: str | Path, max_cols: int = 16
) -> Path:
    """Save the co-tokenizer figure.

    Args:
        frames: per stream ``(t_s, 3, h_s, w_s)`` floats in ``[0, 1]``.
        maps: per iteration, per stream ``(t_s, gh, gw)`` selection mass (:func:`stream_selection_maps`).
        title: the figure's title (question, prediction, answer).
        max_cols: frames per row; a longer stream wraps onto more rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    cols = min(max_cols, max(f.shape[0] for f in frames))
    rows_of = [math.ceil(f.shape[0] / cols) for f in frames]
    rows = len(maps) * sum(rows_of)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.0 + 0.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    r = 0
    for i, per_stream in enumerate(maps):
        total = sum(float(m.sum()) for m in per_stream) or 1.0
        hi = max(float(m.max()) for m in per_stream) or 1.0
        for s, (m, f) in enumerate(zip(per_stream, frames)):
            t, _, h, w = f.shape
            up = F.interpolate(m[:, None], size=(h, w), mode="nearest")[:, 0]
            for j in range(t):
                ax = axes[r + j // cols][j % cols]
                ax.imshow(f[j].permute(1, 2, 0).clamp(0, 1).numpy())
                ax.imshow(up[j].numpy(), cmap="inferno", alpha=0.6, vmin=0.0, vmax=hi)
                if j == 0:
                    share = 100 * float(m.sum()) / total
                    ax.set_title(f"iteration {i + 1}, stream {s} ({t}x{h}x{w}): {share:.0f} %", fontsize=6,
                                 loc="left")
            r += rows_of[s]
    fig.suptitle(f"{title}\ncolour: selection mass of each position (sum over the K tokens' maps), from 0 (dark) "
                 f"to the iteration's largest (bright); % = the stream's share", fontsize=8)
    return _save(fig, path)


def explain_co_tokens(
    batch: dict[str, Any], out: ModelOutput, path: str | Path, index: int = 0, prediction: str = ""
) -> dict[str, Any]:
    """The co-tokenizer figure of sample ``index`` from a forward's output ``out`` (see the module docstring).

    Returns ``frames`` (per stream, floats in ``[0, 1]``), ``selection`` (per iteration, per stream
    ``(t_s, gh, gw)``), ``stream_share`` (per iteration, per stream: the fraction of the ``K``
    tokens' weight on that stream), ``prediction`` (as given) and ``answer``.
    """
    video = batch["video"] if isinstance(batch["video"], (tuple, list)) else (batch["video"],)
    frames = [pixels_to_float(v[index].detach().cpu()) for v in video]
    if out.sampled is not None and len(frames) == 1:  # a sampler chose the frames the co-tokenizer saw
        frames = [frames[0][out.sampled.indices[index].cpu()]]
    maps = stream_selection_maps(out.fused.extras["selection_maps"], index)
    if [m.shape[0] for m in maps[0]] != [f.shape[0] for f in frames]:
        raise ValueError(f"explain: the co-tokenizer's maps cover {[m.shape[0] for m in maps[0]]} frames per stream, "
                         f"the batch's streams have {[f.shape[0] for f in frames]}")
    share = [[float(m.sum()) / (sum(float(x.sum()) for x in row) or 1.0) for m in row] for row in maps]
    answer = batch.get("answer", [None] * (index + 1))[index]
    title = f"Q: {batch['question'][index]}   predicted: {prediction}" + (f"   answer: {answer}" if answer else "")
    plot_selection_maps(frames, maps, title, path)
    return {"frames": frames, "selection": maps, "stream_share": share, "prediction": prediction, "answer": answer}
