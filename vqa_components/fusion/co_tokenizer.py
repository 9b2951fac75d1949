"""Iterative video-text co-tokenization (Piergiovanni et al., ECCV 2022) over one or more video streams.

Source: the Google Research blog post "Efficient Video-Text Learning with Iterative
Co-tokenization" (the paper, arXiv 2208.00934, was not available to us). The blog fixes the
structure: two learnable linear layers bring video and text to one width; both modalities
condition how a small set of tokens is learned from the (multi-stream) video features; a
transformer layer follows; the step repeats, each iteration's representation conditioning
the next tokenization of the video features. The token selection itself is TokenLearner
v1.1 (Ryoo et al., NeurIPS 2021, as maintained in ``scenic/projects/token_learner/model.py``
``TokenLearnerModuleV11``): LayerNorm, an MLP ``d -> 64 -> K`` (GELU) giving one logit per
output token and position, softmax over positions, weighted average of the input features.

Data flow (``S`` streams, stream ``s`` with ``t_s`` frames of ``n_s`` positions, width
``d_s``; ``P = sum_s t_s n_s``; ``K`` tokens; ``I`` iterations)::

    stream s (b t_s n_s d_s) ─► W_s ─► + time(tau) + e_s ─┐
                                                         ├─ concat ─► X (b P d) ──────────────┐
    text (b l d_t) ─► W_t + e_text ─► T_1 (b l d) ─► masked mean ─► c_1 (b d)                 │
                                          │                           │                       │
      ┌───────────────────────────────────┼───────────────────────────┘                       │
      ▼  iteration i = 1..I               ▼                                                   ▼
      c_i ──► logits_i = MLP_i(LN_i(X + c_i)) (b P K) ─► softmax over all P ─► A_i ─► Z_i = A_i^T X (b K d)
              (selection: joint: over [X; T_i], P + l positions; carry: residual: Z_i += Z'_{i-1})
                                                                                    │
              [Z_i ; T_i] ─► TransformerBlock(s)_i ─► [Z'_i ; T_{i+1}]  ◄───────────┘
              c_{i+1} = c_1 + W_c,i LN(mean_k Z'_i)
    tokens = LN(Z'_I) (b K d)   pooled = mean_k tokens (b d)

Choices the blog leaves open, and why they are made this way:

* **How text enters the maps.** The blog says the two linear layers "unify the visual and
  text feature dimensions before tokenization", so that "both video and text condition how
  video tokens are learned": features of one width can be summed. The question is summarised
  as ``c_1 = masked mean of T_1`` and added to every video position before TokenLearner's
  LayerNorm: ``logits = MLP(LN(X + c))``. Because the LayerNorm subtracts each position's own
  mean and divides by its own spread, ``c`` does not just shift all logits equally: it changes
  which positions score high (a position whose features align with ``c`` is normalised
  differently from one that does not). The *averaged* features are ``X`` without ``c``: a
  constant ``c`` would add the same vector to every token and carries nothing a token selects.
* **How each iteration conditions the next.** ``c_{i+1} = c_1 + W_c,i LN(mean_k Z'_i)``: the
  question stays in every round (it never fades) and the previous round's tokens, after their
  transformer layer, steer the next selection ("this new feature representation interacts with
  the video input features and produces another set of tokenized features"). One vector per
  sample conditions all ``K`` maps (per-token conditioning would multiply the map MLP's cost
  by ``K``).
* **Text in the transformer layer.** The text tokens join each iteration's transformer
  layer (``[Z_i; T_i]``, ``K + l`` positions, padding masked) and are carried from one
  iteration to the next: the blog's tokens "jointly represent both modalities", and a single
  mean vector ``c`` cannot carry word-level detail ("the *second* ingredient") that attention
  to the words can. The cost stays independent of the number of video positions.
* **What the tokens are made of** (``selection``). The blog tokenizes "the joint video-language
  inputs" into tokens that "jointly represent both modalities". Two readings are built:
  ``selection: video`` (the first one built) averages video positions only, text shaping the maps
  through ``c`` and joining as separate tokens in the transformer layer; ``selection: joint``
  selects from the joint sequence ``[X; T_i]`` (every video position and every current text
  token, padding masked), so that a token is a weighted average of video features *and* words,
  one map over both modalities. ``docs/results/cotok.md`` compares them.
* **Fresh or carried** (``carry``). With ``carry: fresh`` iteration ``i+1`` tokenizes afresh
  (blog: "another set of tokenized features, fed into the next transformer layer") and what
  earlier rounds found reaches it only through ``c_{i+1}`` and the carried text tokens. With
  ``carry: residual`` the new selection is added to the previous round's tokens after their
  transformer layer, ``Z_{i+1} <- Z_{i+1} + Z'_i``: each round refines the tokens it was given
  (the blog's "each round refines the next", read as a residual stream across rounds).
* **Selection is joint over every stream** (one softmax over all ``P`` positions), so a map
  can prefer the high-frame-rate or the high-resolution stream, as the blog's figures show.
  Padded frames (``frame_mask`` False) get weight exactly 0.
* **Positions.** Each video position gets a fixed sinusoidal embedding of its frame's
  *relative* time in the clip, ``tau = (j + 0.5) / t_s`` (``j``-th of ``t_s`` real frames),
  evaluated as position ``100 tau`` of the Transformer table: streams at different frame rates
  line up on one time axis (frame 3 of 8 and frames 6-7 of 16 get nearby codes), and frame
  counts never seen in training still work; a learned per-frame table could do neither. A
  learned per-stream embedding ``e_s`` tells the maps and the tokens which stream a feature
  came from. No spatial embedding: ``VideoFeatures`` does not say how ``n_s`` positions form a
  grid, and convolutional backbone features carry their own location cues.
* **One map MLP, LayerNorm and transformer layer per iteration**, not shared: ``X`` is the
  same in every round, so shared maps could differ only through ``c``; separate ones let an
  early round select globally and a later one specialise (the blog's per-layer maps differ).
  They are small (``d * 64 + 64 * K`` weights each).
* **TokenLearner v1.1 details kept**: the MLP is ``Linear(d, 64) -> GELU -> Dropout ->
  Linear(64, K) -> Dropout`` (scenic's ``MlpBlock``, dropout on the logits included),
  Xavier-uniform weights, zero biases (scenic: normal with std 1e-6), so the maps start
  nearly uniform; a weighted *average* (softmax), not v1.0's sigmoid-weighted sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vqa_components.interfaces import ConfigError, Fusion, FusionOutput, TextFeatures, VideoFeatures
from vqa_components.layers.transformer import MLP, TransformerBlock, masked_mean
from vqa_components.registry import FUSIONS

#: the clip spans this many positions of the sinusoidal table (see :func:`clip_time_embedding`)
TIME_SCALE = 100.0


# ------------------------------------------------------------------ stream helpers (shared with concat)


def video_streams(video: VideoFeatures) -> tuple[VideoFeatures, ...]:
    """The streams of ``video``: ``video.streams``, or ``(video,)`` for a single-stream input."""
    return tuple(video.streams) if video.streams else (video,)


def stream_widths(video_dim: int | Sequence[int], num_streams: int | None, owner: str) -> list[int]:
    """One input width per stream from ``video_dim`` (an int for all, or a list) and ``num_streams``."""
    if isinstance(video_dim, int):
        n = 1 if num_streams is None else num_streams
        if n < 1:
            raise ConfigError(f"{owner}: num_streams must be at least 1, got {n}")
        return [video_dim] * n
    dims = [int(d) for d in video_dim]
    if not dims:
        raise ConfigError(f"{owner}: video_dim is an empty list; give one width per stream")
    if num_streams is not None and num_streams != len(dims):
        raise ConfigError(f"{owner}: video_dim lists {len(dims)} widths but num_streams is {num_streams}")
    return dims


def check_streams(streams: Sequence[VideoFeatures], widths: Sequence[int], owner: str) -> None:
    """Raise :class:`ConfigError` unless there is one stream per width, each of that width."""
    if len(streams) != len(widths):
        raise ConfigError(
            f"{owner}: got {len(streams)} video stream(s) but was built for {len(widths)}; "
            f"set video_dim to a list of the {len(streams)} widths (or num_streams: {len(streams)})"
        )
    for s, (stream, width) in enumerate(zip(streams, widths)):
        if stream.tokens.shape[-1] != width:
            raise ConfigError(
                f"{owner}: stream {s} has width {stream.tokens.shape[-1]}, video_dim says {width}"
            )


def relative_frame_times(stream: VideoFeatures) -> Tensor:
    """``(b, t)`` each frame's centre as a fraction of the clip: ``(j + 0.5) / t_real``.

    ``j`` counts real frames only (``frame_mask``), so padding does not stretch the axis;
    frames are assumed evenly spaced over the whole clip. Padded frames get a value too (the
    callers mask them).
    """
    b, t = stream.tokens.shape[:2]
    device = stream.tokens.device
    if stream.frame_mask is None:
        return ((torch.arange(t, device=device, dtype=torch.float32) + 0.5) / t).expand(b, t)
    real = stream.frame_mask.to(torch.float32)
    rank = real.cumsum(1) - real  # index of each real frame among the real frames
    return (rank + 0.5) / real.sum(1, keepdim=True).clamp_min(1.0)


def clip_time_embedding(tau: Tensor, dim: int) -> Tensor:
    """``(..., dim)`` fixed sine/cosine code of relative time ``tau`` in ``[0, 1]``.

    The Transformer table (Vaswani et al., 2017) at the continuous position ``100 * tau``:
    ``sin``/``cos`` of ``100 tau / 10000^(2i/dim)`` in the even/odd channels.
    """
    pos = tau.to(torch.float32) * TIME_SCALE
    i = torch.arange(0, dim, 2, device=tau.device, dtype=torch.float32)
    angles = pos.unsqueeze(-1) / torch.pow(10000.0, i / dim)
    emb = torch.zeros(*tau.shape, dim, device=tau.device)
    emb[..., 0::2] = torch.sin(angles)
    emb[..., 1::2] = torch.cos(angles[..., : dim // 2])
    return emb


def stream_valid(stream: VideoFeatures) -> Tensor | None:
    """``(b, t*n)`` True at positions of real frames, or ``None`` when every frame is real."""
    if stream.frame_mask is None:
        return None
    return stream.frame_mask.repeat_interleave(stream.tokens.shape[2], dim=1)


# ------------------------------------------------------------------ the token selector


class ConditionedTokenLearner(nn.Module):
    """TokenLearner v1.1 whose maps are conditioned on a vector ``c`` (one per sample).

    For positions ``x_p`` (``p = 1..P``) and condition ``c``::

        logit_{p,k} = [W_2 Drop(GELU(W_1 LN(x_p + c) + b_1)) + b_2]_k      (MLP d -> bottleneck -> K)
        A_{k,p}     = exp(logit_{p,k}) / sum_{q real} exp(logit_{q,k})      (softmax over positions)
        z_k         = sum_p A_{k,p} x_p                                     (weighted average)

    Each map row sums to 1 over the real positions and is exactly 0 at padded ones; a sample
    without any real position gets all-zero maps and tokens.

    Args:
        dim: width ``d`` of the positions.
        num_tokens: ``K``.
        bottleneck_dim: hidden width of the MLP (64 in TokenLearner v1.1).
        dropout: dropout after the GELU and on the logits (as in v1.1).

    ``forward(x (b, P, d), c (b, d), valid (b, P) bool or None)`` returns
    ``tokens (b, K, d)`` and ``maps (b, K, P)``.
    """

    def __init__(self, dim: int, num_tokens: int, bottleneck_dim: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim, bottleneck_dim, num_tokens, dropout=dropout)
        self.logit_dropout = nn.Dropout(dropout)
        for layer in (self.mlp[0], self.mlp[3]):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def logits(self, x: Tensor, c: Tensor) -> Tensor:
        """``(b, P, K)`` selection logits."""
        return self.logit_dropout(self.mlp(self.norm(x + c.unsqueeze(1))))

    def forward(self, x: Tensor, c: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logits = self.logits(x, c).transpose(1, 2)  # (b, K, P)
        if valid is not None:
            logits = logits.masked_fill(~valid.unsqueeze(1), torch.finfo(logits.dtype).min)
        maps = logits.softmax(dim=-1)
        if valid is not None:
            maps = maps * valid.unsqueeze(1).to(maps.dtype)  # exact zeros, also when nothing is real
        return torch.einsum("bkp,bpd->bkd", maps.to(x.dtype), x), maps


# ------------------------------------------------------------------ the fusion


@FUSIONS.register("co_tokenizer")
class CoTokenizerFusion(Fusion):
    """Iterative video-text co-tokenization: text-conditioned TokenLearner maps over all streams + transformer.

    With ``X`` the embedded video positions of every stream (``b, P, d``), ``T_1`` the projected
    text tokens and ``c_1`` their masked mean (see the module docstring for the diagram and
    the reasons)::

        X   = concat_s [W_s v_s + time(tau_s) + e_s]                    (1) visual linear layers
        T_1 = W_t t + e_text,   c_1 = masked_mean(T_1)                  (2) text linear layer
        A_i = softmax_P(MLP_i(LN_i(X + c_i)))      (b, K, P)            (3) text-conditioned maps
        Z_i = A_i X                                (b, K, d)            (4) weighted average
              (joint: A_i over [X; T_i] and Z_i = A_i [X; T_i];  residual: Z_i + Z'_{i-1})
        [Z'_i; T_{i+1}] = Transformer_i([Z_i; T_i])                      (5) joint layer
        c_{i+1} = c_1 + W_c,i LN(mean_k Z'_i)                           (6) next round's condition
        tokens = LN(Z'_I),  pooled = mean_k tokens

    The cost grows linearly with the number of video positions ``P``: (1), (3) and (4) are
    per-position, and the transformer sees only ``K + l`` positions.

    Args:
        video_dim: width of the video tokens: one int for every stream, or a list with one width
            per stream (the stream count is its length).
        text_dim: width of the text encoder's tokens.
        dim: common width ``d`` (``out_dim``).
        num_tokens: ``K`` tokens selected per iteration (the blog gives no value; recipes use 8).
        num_iterations: ``I`` rounds of selection + transformer layer.
        num_streams: number of streams when ``video_dim`` is one int (default 1).
        num_heads: attention heads of the transformer layers.
        bottleneck_dim: hidden width of the map MLPs (64 in TokenLearner v1.1).
        layers_per_iteration: transformer blocks after each selection (the blog: one).
        mlp_ratio: MLP width of the transformer blocks, as a multiple of ``d``.
        dropout: dropout in the map MLPs and the transformer blocks.
        selection: ``video`` (tokens average video positions; text conditions the maps) or
            ``joint`` (tokens average the joint sequence of video positions and text tokens).
        carry: ``fresh`` (each round selects anew) or ``residual`` (each round's selection is
            added to the previous round's tokens).
        append_text: also output the final text tokens after the ``K`` video tokens
            (``tokens (b, K + l, d)`` with ``mask``), for a decoder that should read the question
            words as well; ``pooled`` stays the mean of the ``K`` co-tokens.

    ``forward(video, text)``: ``video.streams`` is a tuple of per-stream ``VideoFeatures``
    (``tokens (b, t_s, n_s, d_s)``, optional ``frame_mask (b, t_s)``), or ``None`` for one
    stream (``video.tokens``). Returns ``FusionOutput`` with ``tokens (b, K, d)`` (mask
    ``None``; see ``append_text``), ``pooled (b, d)`` and ``extras``:

    * ``"selection_maps"``: one list per iteration of one ``(b, K, t_s, n_s)`` map per stream;
      summed over every stream's positions each token's map is 1, and 0 at padded frames
      (``selection: joint``: summed with the text's share, ``"text_maps"``, it is 1).
    * ``"text_maps"`` (``selection: joint``): one ``(b, K, l)`` map per iteration over the text tokens.
    * ``"stream_bounds"``: ``[(start, stop)]`` per stream, its slice of the ``P`` positions.
    * ``"stream_shapes"``: ``[(t_s, n_s)]`` per stream.
    """

    fsdp_blocks = ("TransformerBlock",)  # its repeated blocks: FSDP units (vqa_components.fsdp)

    def __init__(
        self,
        video_dim: int | list[int],
        text_dim: int,
        dim: int = 128,
        num_tokens: int = 8,
        num_iterations: int = 3,
        num_streams: int | None = None,
        num_heads: int = 4,
        bottleneck_dim: int = 64,
        layers_per_iteration: int = 1,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        append_text: bool = False,
        selection: str = "video",
        carry: str = "fresh",
    ) -> None:
        super().__init__()
        owner = "co_tokenizer"
        if selection not in ("video", "joint"):
            raise ConfigError(f"{owner}: selection must be 'video' or 'joint', got {selection!r}")
        if carry not in ("fresh", "residual"):
            raise ConfigError(f"{owner}: carry must be 'fresh' or 'residual', got {carry!r}")
        self.selection, self.carry = selection, carry
        widths = stream_widths(video_dim, num_streams, owner)
        for name, value in (
            ("num_tokens", num_tokens),
            ("num_iterations", num_iterations),
            ("layers_per_iteration", layers_per_iteration),
            ("bottleneck_dim", bottleneck_dim),
        ):
            if value < 1:
                raise ConfigError(f"{owner}: {name} must be at least 1, got {value}")
        if dim % num_heads:
            raise ConfigError(f"{owner}: dim {dim} is not divisible by num_heads {num_heads}")
        self.out_dim = dim
        self.video_dims = widths
        self.num_tokens = num_tokens
        self.num_iterations = num_iterations
        self.append_text = append_text
        self.video_proj = nn.ModuleList(nn.Linear(w, dim) for w in widths)
        self.text_proj = nn.Linear(text_dim, dim)
        self.stream_embed = nn.Parameter(torch.zeros(len(widths), dim))
        self.text_embed = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.stream_embed, std=0.02)
        nn.init.trunc_normal_(self.text_embed, std=0.02)
        self.selectors = nn.ModuleList(
            ConditionedTokenLearner(dim, num_tokens, bottleneck_dim, dropout) for _ in range(num_iterations)
        )
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                TransformerBlock(dim, num_heads, mlp_ratio, dropout) for _ in range(layers_per_iteration)
            )
            for _ in range(num_iterations)
        )
        self.condition = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(num_iterations - 1)
        )
        self.norm = nn.LayerNorm(dim)

    def embed_video(self, video: VideoFeatures) -> tuple[Tensor, Tensor | None, list[tuple[int, int]], list]:
        """``X (b, P, d)``, ``valid (b, P)`` or ``None``, the stream bounds and shapes (eq. 1)."""
        streams = video_streams(video)
        check_streams(streams, self.video_dims, "co_tokenizer")
        parts, valids, bounds, shapes, start = [], [], [], [], 0
        for s, (stream, proj) in enumerate(zip(streams, self.video_proj)):
            b, t, n, _ = stream.tokens.shape
            time = clip_time_embedding(relative_frame_times(stream), self.out_dim)  # (b, t, d)
            x = proj(stream.tokens) + time.unsqueeze(2).to(stream.tokens.dtype) + self.stream_embed[s]
            parts.append(x.reshape(b, t * n, -1))
            valid = stream_valid(stream)
            valids.append(torch.ones(b, t * n, dtype=torch.bool, device=x.device) if valid is None else valid)
            bounds.append((start, start + t * n))
            shapes.append((t, n))
            start += t * n
        any_pad = any(s.frame_mask is not None for s in streams)
        return torch.cat(parts, 1), (torch.cat(valids, 1) if any_pad else None), bounds, shapes

    def forward(self, video: VideoFeatures, text: TextFeatures) -> FusionOutput:
        x, valid, bounds, shapes = self.embed_video(video)
        t = self.text_proj(text.tokens) + self.text_embed
        c1 = masked_mean(t, text.mask)
        c = c1
        b, k = x.shape[0], self.num_tokens
        pad = torch.cat([torch.zeros(b, k, dtype=torch.bool, device=x.device), ~text.mask], dim=1)
        all_maps, text_maps = [], []
        if self.selection == "joint":
            video_valid = valid if valid is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            joint_valid = torch.cat([video_valid, text.mask], dim=1)
        z = None
        for i, (selector, blocks) in enumerate(zip(self.selectors, self.blocks)):
            previous = z
            if self.selection == "joint":
                z, maps = selector(torch.cat([x, t], dim=1), c, joint_valid)
                text_maps.append(maps[..., x.shape[1]:])
            else:
                z, maps = selector(x, c, valid)
            if self.carry == "residual" and previous is not None:
                z = z + previous
            all_maps.append([maps[..., a:e].reshape(b, k, *shape) for (a, e), shape in zip(bounds, shapes)])
            h = torch.cat([z, t], dim=1)
            for block in blocks:
                h = block(h, key_padding_mask=pad)
            z, t = h[:, :k], h[:, k:]
            if i + 1 < self.num_iterations:
                c = c1 + self.condition[i](z.mean(1))
        if self.append_text:
            tokens = self.norm(torch.cat([z, t], dim=1))
            pooled, mask = tokens[:, :k].mean(1), ~pad
        else:
            tokens = self.norm(z)
            pooled, mask = tokens.mean(1), None
        extras = {"selection_maps": all_maps, "stream_bounds": bounds, "stream_shapes": shapes}
        if text_maps:
            extras["text_maps"] = text_maps
        return FusionOutput(pooled=pooled, tokens=tokens, mask=mask, extras=extras)

    def extra_repr(self) -> str:
        return (
            f"streams={len(self.video_dims)}, num_tokens={self.num_tokens}, "
            f"num_iterations={self.num_iterations}, append_text={self.append_text}, "
            f"selection={self.selection}, carry={self.carry}"
        )
