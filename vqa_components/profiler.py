"""Parameters and forward MACs of a VideoQA model, without running it for real.

``vqa profile --config RECIPE`` calls :func:`profile_model` on the recipe's
model and a batch of one sample (``datamodule.example_batch(1)``)::

    report = profile_model(model, batch)
    print(report.table())       # aligned per-part table
    print(report.to_json())     # one-line JSON object

How it works
------------
The model's parameters and buffers, and the batch's tensors, are replaced by
*fake tensors* (:class:`torch._subclasses.fake_tensor.FakeTensorMode`): tensors
that carry a shape, dtype and device but no storage. The model's own
``forward(batch)`` then runs under :class:`torch.utils.flop_counter.FlopCounterMode`,
which reads the shapes of every matmul, convolution and attention call. No
arithmetic is done and no activation memory is allocated, so a paper-scale
model (CLIP ViT-B/16 over 100 frames of 224x224) profiles in seconds.

* The model runs in eval mode (dropout off, batch norm on running statistics)
  with the ``nn.MultiheadAttention`` fast path off (so attention goes through
  ``scaled_dot_product_attention``, which is counted); train/eval flags are
  restored afterwards and no weight or buffer of the model is touched.
* **Tokenization is real.** Text encoders turn strings into ids inside
  ``model.forward`` (``TextEncoder.tokenize``), and tokenizers read their own
  results (``int(ids.max())`` to trim padding): under fake mode the tensors a
  tokenizer creates would be fake too and that read raises
  ``DataDependentOutputException``. So every :class:`~vqa_components.interfaces.TextEncoder`'s
  ``tokenize`` runs with fake mode suspended; its (small, real) id tensors then
  enter the fake forward as ordinary inputs.
* Batch tensors (and parameters) on the ``meta`` device are accepted: they are
  profiled as if they lived on the CPU (or on the model's device). Use them for
  inputs too large to create, e.g. ``torch.empty(1, 512, 3, 512, 512, device="meta")``.
* If the fake forward fails (an op without a fake/meta kernel, or a part that
  reads tensor *values* outside ``tokenize``), the profiler falls back to a
  real forward under ``torch.no_grad`` with the same counter, and says so in
  :attr:`ProfileReport.method` (``"real_forward"``) and :attr:`ProfileReport.notes`.

What is counted
---------------
Multiply-accumulates (MACs) of

* matrix products: ``nn.Linear`` (``addmm``/``mm``), ``matmul``/``bmm``/``einsum``
  that lower to them; a linear ``(n, d_in) -> (n, d_out)`` is ``n*d_in*d_out``;
* convolutions: ``Conv1d/2d/3d`` (``c_out * c_in/groups * prod(kernel)`` per output position);
* attention through ``F.scaled_dot_product_attention`` (``nn.MultiheadAttention``
  included): ``q @ k^T`` and ``attn @ v``, ``heads * l_q * l_k * (d_head_qk + d_head_v)``
  per sample. A causal mask is not discounted.

Not counted: element-wise ops (activations, additions, residuals, scaling,
masking), normalisations (LayerNorm, BatchNorm), softmax, pooling, embedding
look-ups, bias additions, and index/reshape ops. A convolution written by hand
as shifted element-wise multiply-adds (the depthwise temporal convolution of
the ``frame_cnn`` backbone) is element-wise and therefore not counted either;
for ``frame_cnn`` it is ``temporal_kernel * t * c * h * w`` MACs per stage, well
under 1 % of the backbone.

MACs vs FLOPs
-------------
FlopCounterMode counts FLOPs as ``2 x MACs`` (a multiply and an add). The
video-QA papers' "FLOPs"/"GFLOPs" columns are, by the usual convention of
fvcore/thop, MACs: compare their numbers with :attr:`ProfileReport.gmacs`.
``gflops`` is ``2 * gmacs``.

Streams
-------
A backbone that holds one backbone per video stream (``multi_stream``: an ``nn.ModuleList``
``backbones`` of ``num_streams`` parts) is also reported stream by stream, in
:attr:`ProfileReport.per_stream` and as indented rows under ``backbone`` in the table
(``backbone.stream0 (x3d)``, ...). The ``backbone`` row and every total stay what they are
without that breakdown: the stream rows split the backbone row, they do not add to it.

Parameters: ``params`` counts each distinct parameter once (tied weights
once); buffers are not parameters. ``trainable_params`` counts those with
``requires_grad`` that are not in a part listed in the model's ``freeze``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ProfileReport", "profile_model"]

#: The parts of a VideoQAModel reported in ``per_part``, in this order.
PART_ORDER = ("backbone", "text_encoder", "sampler", "fusion", "head", "objectives")

METHOD_FAKE = "fake_tensor"
METHOD_REAL = "real_forward"


# ---------------------------------------------------------------- the report


@dataclass
class ProfileReport:
    """Parameter counts and forward cost of one batch (pass a batch of one sample).

    Attributes:
        params: distinct parameters of the model.
        trainable_params: those that train (``requires_grad``, not in a frozen part).
        gmacs: forward multiply-accumulates of the batch, in units of 10^9.
        gflops: ``2 * gmacs`` (FLOPs as FlopCounterMode counts them).
        per_part: ``{part: {"params", "trainable_params", "macs", "gmacs"}}`` for
            each top-level part (``backbone``, ``text_encoder``, ``sampler`` when
            present, ``fusion``, ``head``; ``objectives`` when they hold
            parameters), plus ``"other"`` for MACs outside every part, if any.
        method: ``"fake_tensor"`` (no real compute) or ``"real_forward"`` (fallback).
        macs: exact forward MACs (``gmacs * 1e9``, as an integer).
        per_op: ``{kind: gmacs}`` by kind of op: ``conv``, ``matmul`` (linear layers,
            ``mm``/``addmm``/``bmm``), ``attention`` (SDPA kernels).
        batch_size: samples in the profiled batch.
        input_shapes: shapes of the batch's tensors, by key.
        text_tokens: the token count (padded length) of each text batch the text
            encoder(s) tokenized during the forward.
        notes: anything the reader should know (e.g. why fake mode was not used).
        per_stream: for a multi-stream backbone, ``{"backbone.stream<s>": {"part", "params",
            "trainable_params", "macs", "gmacs"}}`` per stream (``part``: the stream backbone's
            registry name); a breakdown of ``per_part["backbone"]``, not more parts. Empty otherwise.
    """

    params: int
    trainable_params: int
    gmacs: float
    gflops: float
    per_part: dict[str, dict[str, Any]]
    method: str
    macs: int = 0
    per_op: dict[str, float] = field(default_factory=dict)
    batch_size: int | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    text_tokens: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_stream: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "trainable_params": self.trainable_params,
            "gmacs": self.gmacs,
            "gflops": self.gflops,
            "macs": self.macs,
            "per_part": {k: dict(v) for k, v in self.per_part.items()},
            "per_stream": {k: dict(v) for k, v in self.per_stream.items()},
            "per_op": dict(self.per_op),
            "method": self.method,
            "batch_size": self.batch_size,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "text_tokens": list(self.text_tokens),
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        """The report as a one-line JSON object."""
        return json.dumps(self.to_dict(), separators=(", ", ": "))

    def table(self) -> str:
        """An aligned, human-readable table: part, params (M), trainable (M), GMACs."""
        header = ("part", "params (M)", "trainable (M)", "GMACs")
        dec = 4 if self.gmacs >= 0.1 else 6  # small models: more digits

        def _g(x: float) -> str:
            return _fmt_g(x, dec)

        rows = []
        for name, p in self.per_part.items():
            rows.append((name, _m(p["params"]), _m(p["trainable_params"]), _g(p["gmacs"])))
            rows += [
                (f"  {key} ({s['part']})", _m(s["params"]), _m(s["trainable_params"]), _g(s["gmacs"]))
                for key, s in self.per_stream.items()
                if key.startswith(f"{name}.")
            ]
        total = ("total", _m(self.params), _m(self.trainable_params), _g(self.gmacs))
        widths = [max(len(r[i]) for r in (header, *rows, total)) for i in range(4)]

        def line(r: tuple[str, ...]) -> str:
            return "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))])

        rule = "-" * len(line(header))
        inputs = [f"{k} {tuple(v)}" for k, v in self.input_shapes.items() if k.startswith("video")]
        inputs += [f"{n} text tokens" for n in self.text_tokens]
        by_op = ", ".join(f"{k} {_g(v)}" for k, v in sorted(self.per_op.items(), key=lambda kv: -kv[1]))
        out = [
            f"forward of {self.batch_size if self.batch_size is not None else '?'} sample(s)"
            + (f": {', '.join(inputs)}" if inputs else ""),
            f"method: {self.method}"
            + (" (fake tensors: shapes only, no real compute)" if self.method == METHOD_FAKE else ""),
            line(header),
            rule,
            *(line(r) for r in rows),
            rule,
            line(total),
            *([f"GMACs by op: {by_op}"] if by_op else []),
            f"GMACs = multiply-accumulates / 1e9 (the papers' \"FLOPs\"); GFLOPs = 2 x GMACs = {_g(self.gflops)}",
        ]
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)


def _m(n: int) -> str:
    return f"{n / 1e6:,.3f}"


def _fmt_g(x: float, decimals: int) -> str:
    return f"{x:,.{decimals}f}"


# ---------------------------------------------------------------- parameters


def _parts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level parts: a VideoQAModel's parts in their usual order, else the module's children."""
    children = dict(model.named_children())
    ordered = [(n, children.pop(n)) for n in PART_ORDER if n in children]
    return ordered + list(children.items())


def _stream_parts(part: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[("backbones.0", module), ...]`` of a backbone holding one backbone per stream, else ``[]``."""
    subs = getattr(part, "backbones", None)
    if not isinstance(subs, nn.ModuleList) or getattr(part, "num_streams", None) != len(subs):
        return []
    return [(f"backbones.{i}", sub) for i, sub in enumerate(subs)]


def _frozen_param_ids(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for name in getattr(model, "frozen_parts", ()) or ():
        part = getattr(model, name, None)
        if isinstance(part, nn.Module):
            ids.update(id(p) for p in part.parameters())
    return ids


def _count(params: Iterator[nn.Parameter], frozen: set[int]) -> tuple[int, int]:
    total = trainable = 0
    for p in params:  # Module.parameters() already yields a shared parameter once
        total += p.numel()
        if p.requires_grad and id(p) not in frozen:
            trainable += p.numel()
    return total, trainable


# ---------------------------------------------------------------- fake forward


def _sdpa_macs_formula() -> dict[Any, Any]:
    """FLOP formulas for the attention kernels FlopCounterMode's registry lacks (the CPU flash kernel)."""
    from torch.utils.flop_counter import sdpa_flop_count

    def flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping: dict[Any, Any] = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = flops
    return mapping


def _map_tensors(obj: Any, fn: Any) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_map_tensors(v, fn) for v in obj)
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    return obj


def _has_meta(obj: Any) -> bool:
    found = False

    def visit(t: Tensor) -> Tensor:
        nonlocal found
        found = found or t.is_meta
        return t

    _map_tensors(obj, visit)
    return found


def _profile_device(model: nn.Module) -> torch.device:
    for t in itertools.chain(model.parameters(), model.buffers()):
        if not t.is_meta:
            return t.device
    return torch.device("cpu")


class _Faker:
    """Turns real and meta tensors into fake ones (memoised, so tied weights stay tied)."""

    def __init__(self, mode: Any, device: torch.device) -> None:
        self.mode = mode
        self.device = device
        self.memo: dict[int, Tensor] = {}

    def __call__(self, t: Tensor) -> Tensor:
        key = id(t)
        if key not in self.memo:
            if t.is_meta:
                with self.mode:
                    fake = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=self.device)
            else:
                fake = self.mode.from_tensor(t)
            if t.requires_grad and fake.dtype.is_floating_point:
                fake.requires_grad_(True)
            self.memo[key] = fake
        return self.memo[key]


@contextlib.contextmanager
def _profiling_state(model: nn.Module) -> Iterator[None]:
    """Eval mode and no MHA fast path during profiling; both restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, training in modes.items():
            m.training = training


@contextlib.contextmanager
def _real_tokenization(model: nn.Module, lengths: list[int]) -> Iterator[None]:
    """Run every text encoder's ``tokenize`` outside fake mode (it reads its own tensors' values).

    Appends the padded length of each tokenized batch to ``lengths``.
    """
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from vqa_components.interfaces import TextEncoder

    def real(fn: Any) -> Any:
        def tokenize(texts: list[str]) -> dict[str, Tensor]:
            with unset_fake_temporarily():
                out = fn(texts)
            ids = out.get("input_ids") if isinstance(out, Mapping) else None
            if isinstance(ids, Tensor) and ids.ndim == 2:
                lengths.append(int(ids.shape[1]))
            return out

        return tokenize

    missing = object()
    patched: list[tuple[TextEncoder, Any]] = []
    for m in model.modules():
        if isinstance(m, TextEncoder):
            patched.append((m, vars(m).get("tokenize", missing)))
            m.tokenize = real(m.tokenize)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m, old in patched:
            if old is missing:
                del m.tokenize
            else:
                m.tokenize = old  # type: ignore[method-assign]


def _fake_forward(model: nn.Module, batch: Any, lengths: list[int]) -> Any:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    faker = _Faker(mode, _profile_device(model))
    state = {
        name: faker(t)
        for name, t in itertools.chain(
            model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)
        )
    }
    fake_batch = _map_tensors(batch, faker)
    counter = FlopCounterMode(display=False, custom_mapping=_sdpa_macs_formula())
    with _real_tokenization(model, lengths), torch.no_grad(), mode, counter:
        functional_call(model, state, (fake_batch,), tie_weights=True, strict=False)
    return counter


def _real_forward(model: nn.Module, batch: Any, lengths: list[int]) -> Any:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_sdpa_macs_formula())
    with _real_tokenization(model, lengths), torch.no_grad(), counter:
        model(batch)
    return counter


# ---------------------------------------------------------------- entry point


def _batch_size(batch: Any) -> int | None:
    if isinstance(batch, Mapping):
        if "batch_size" in batch:
            return int(batch["batch_size"])
        video = batch.get("video")
        if isinstance(video, (tuple, list)) and video:
            video = video[0]
        if isinstance(video, Tensor) and video.ndim:
            return int(video.shape[0])
    return None


def _input_shapes(batch: Any) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    if isinstance(batch, Mapping):
        for k, v in batch.items():
            if isinstance(v, Tensor):
                shapes[str(k)] = list(v.shape)
            elif isinstance(v, (tuple, list)):
                for i, t in enumerate(v):
                    if isinstance(t, Tensor):
                        shapes[f"{k}[{i}]"] = list(t.shape)
    return shapes


def profile_model(model: nn.Module, batch: Any) -> ProfileReport:
    """Count the parameters and the forward MACs of ``model(batch)`` without real compute.

    Args:
        model: a :class:`~vqa_components.model.VideoQAModel` (any ``nn.Module``
            whose ``forward`` takes ``batch`` works; its children are the parts).
        batch: what ``model.forward`` takes, e.g. ``datamodule.example_batch(1)``.
            Give one sample to get the per-sample cost. Tensors may live on the
            ``meta`` device (shape only).

    Returns:
        A :class:`ProfileReport`. The model is left as it was (weights, buffers,
        train/eval flags).
    """
    frozen = _frozen_param_ids(model)
    params, trainable = _count(model.parameters(), frozen)
    notes: list[str] = []

    with _profiling_state(model):
        try:
            text_tokens: list[int] = []
            counter = _fake_forward(model, batch, text_tokens)
            method = METHOD_FAKE
        except Exception as exc:  # an op without a fake kernel, a value read outside tokenize, ...
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            if _has_meta(batch) or any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
                raise RuntimeError(
                    f"profile: the fake-tensor forward failed ({reason}) and the fallback real forward "
                    f"is impossible with meta tensors in the model or batch"
                ) from exc
            notes.append(f"fake-tensor forward failed ({reason}); counted a real forward under torch.no_grad")
            text_tokens = []
            counter = _real_forward(model, batch, text_tokens)
            method = METHOD_REAL

    counts = counter.get_flop_counts()
    total_flops = int(counter.get_total_flops())
    root = type(model).__name__
    per_part: dict[str, dict[str, Any]] = {}
    per_stream: dict[str, dict[str, Any]] = {}
    part_flops = 0
    for name, part in _parts(model):
        p_total, p_trainable = _count(part.parameters(), frozen)
        flops = int(sum(counts.get(f"{root}.{name}", {}).values()))
        if name == "objectives" and not p_total and not flops:
            continue  # losses without weights: not part of the forward's cost
        part_flops += flops
        per_part[name] = _part_entry(p_total, p_trainable, flops)
        if name == "backbone":
            for s, (path, sub) in enumerate(_stream_parts(part)):
                s_total, s_trainable = _count(sub.parameters(), frozen)
                s_flops = int(sum(counts.get(f"{root}.{name}.{path}", {}).values()))
                label = getattr(sub, "registry_name", "") or type(sub).__name__
                entry = _part_entry(s_total, s_trainable, s_flops)
                per_stream[f"{name}.stream{s}"] = {"part": label, **entry}
    other = total_flops - part_flops
    if other > 0:
        per_part["other"] = _part_entry(0, 0, other)

    per_op: dict[str, float] = {}
    for op, flops in counts.get("Global", {}).items():
        key = _op_kind(str(getattr(op, "__name__", op)))
        per_op[key] = per_op.get(key, 0.0) + flops / 2 / 1e9
    bs = _batch_size(batch)
    if bs is not None and bs != 1:
        notes.append(f"the batch holds {bs} samples: the MACs are of the whole batch, not per sample")
    macs = total_flops // 2
    gmacs = total_flops / 2 / 1e9
    return ProfileReport(
        params=params,
        trainable_params=trainable,
        gmacs=gmacs,
        gflops=2 * gmacs,
        per_part=per_part,
        method=method,
        macs=macs,
        per_op=per_op,
        batch_size=bs,
        input_shapes=_input_shapes(batch),
        text_tokens=text_tokens,
        notes=notes,
        per_stream=per_stream,
    )


def _op_kind(name: str) -> str:
    """``conv``, ``matmul`` (linear layers included) or ``attention`` (SDPA kernels); else the aten name."""
    name = name.split(".")[-1]
    if "conv" in name:
        return "conv"
    if "attention" in name:
        return "attention"
    if name in ("mm", "addmm", "bmm", "baddbmm", "_scaled_mm"):
        return "matmul"
    return name


def _part_entry(params: int, trainable: int, flops: int) -> dict[str, Any]:
    return {"params": params, "trainable_params": trainable, "macs": flops // 2, "gmacs": flops / 2 / 1e9}
