"""Training steps of a recipe in this process, for ``step_flops.py``, ``data_pipeline.py`` and
``gpu_paper_scale.py``: the recipe's model and data module built as ``vqa fit`` builds them (random
weights: ``init_from``/``init_parts`` dropped, frozen parts allowed to stay random), one real batch,
and the optimizer step the trainer would take (gradient clipping included).

The tiny recipes are ``recipes/quickstart.yaml`` and ``recipes/**/tiny/*.yaml``. E-ViLM's read the
``bert`` encoder's vocabulary from ``runs/evilm/tiny/vocab.txt``; it is written once per process with
``vqa vocab`` into a temporary folder.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: one recipe of each distinct model of the tiny recipes (the others change a width, a count or a flag
#: of one of these): what ``--recipes representative`` times
REPRESENTATIVE = [
    "recipes/quickstart.yaml",
    "recipes/videodistill/tiny/a_baseline.yaml",
    "recipes/videodistill/tiny/f_full.yaml",
    "recipes/videodistill/tiny/pretrain.yaml",
    "recipes/cotok/tiny/three_streams.yaml",
    "recipes/cotok/tiny/concat.yaml",
    "recipes/evilm/tiny/tokenizer.yaml",
    "recipes/evilm/tiny/pretrain.yaml",
    "recipes/evilm/tiny/finetune.yaml",
]
_VOCAB: dict[str, Path] = {}
_TMP = tempfile.TemporaryDirectory(prefix="vqa_bench_")


def tiny_recipes() -> list[str]:
    """The quickstart and every tiny recipe, as paths relative to the repository."""
    found = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("tiny/*.yaml"))
    return ["recipes/quickstart.yaml", *found]


def pick_recipes(names: list[str]) -> list[str]:
    """``all``, ``representative`` or recipe paths."""
    out: list[str] = []
    for name in names:
        out += {"all": tiny_recipes(), "representative": REPRESENTATIVE}.get(name, [name])
    return list(dict.fromkeys(out))


def short_name(recipe: str) -> str:
    parts = Path(recipe).with_suffix("").parts
    return "quickstart" if parts[-1] == "quickstart" else "/".join(p for p in parts[1:] if p != "tiny")


def recipe_yaml(recipe: str) -> dict[str, Any]:
    from vqa_components.packaged_recipes import load_recipe

    return load_recipe(ROOT / recipe)


def _vocab_args(recipe: str) -> list[str]:
    text = (recipe_yaml(recipe).get("model") or {}).get("text_encoder") or {}
    if not isinstance(text, dict) or text.get("name") != "bert":
        return []
    if "bert" not in _VOCAB:
        import contextlib
        import io

        from vqa_components.cli import main as vqa

        out = Path(_TMP.name) / "vocab.txt"
        with contextlib.redirect_stdout(io.StringIO()):
            code = vqa(["vocab", "--config", str(ROOT / "recipes/evilm/tiny/tokenizer.yaml"), "--out", str(out),
                        "--keep_fraction", "1.0"])
        if code:
            raise RuntimeError("vqa vocab failed")
        _VOCAB["bert"] = out
    return [f"--model.text_encoder.init_args.vocab_file={_VOCAB['bert']}"]


def build(recipe: str, *extra: str) -> tuple[Any, Any]:
    """The recipe's model (random weights, training mode) and data module (``num_workers`` as written)."""
    from vqa_components.cli import NO_INIT, release, run_cli

    args = ["--config", str(ROOT / recipe), *NO_INIT, "--model.allow_random_frozen=true", *_vocab_args(recipe),
            *extra]
    cli = run_cli(args, run=False)
    model, dm = cli.model, cli.datamodule
    release(cli)
    model.log = lambda *a, **k: None  # no trainer: what training_step logs goes nowhere
    model.train()
    return model, dm


def first_batch(dm: Any) -> dict[str, Any]:
    """One training batch, read in this process (``num_workers`` 0 for this read)."""
    workers = dm.num_workers
    dm.num_workers = 0
    try:
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))
    finally:
        dm.num_workers = workers


def to_device(batch: Any, device: Any) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Stepper:
    """``step(batch)``: forward, loss, backward, clipping and the optimizer's step, as ``vqa fit`` does."""

    def __init__(self, model: Any, recipe: str, precision: str = "32-true", device: str = "cpu") -> None:
        import torch

        self.model, self.device = model, device
        opt = model.configure_optimizers()
        opt = opt["optimizer"] if isinstance(opt, dict) else opt
        self.opt = opt[0] if isinstance(opt, (list, tuple)) else opt
        self.clip = (recipe_yaml(recipe).get("trainer") or {}).get("gradient_clip_val")
        self.params = [p for p in model.parameters() if p.requires_grad]
        bf16 = precision.startswith("bf16")
        self.autocast: Callable[[], Any] = (
            (lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)) if bf16 else nullcontext
        )

    def step(self, batch: dict[str, Any]) -> None:
        import torch

        with self.autocast():
            loss = self.model.training_step(batch, 0)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def time_steps(stepper: Stepper, batch: dict[str, Any], steps: int, warmup: int,
               sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median and mean seconds per training step on one batch (the data is not part of it)."""
    for _ in range(warmup):
        stepper.step(batch)
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        stepper.step(batch)
        sync()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times),
            "min_s": min(times), "steps": steps, "warmup": warmup}


def profiler_macs(model: Any, dm: Any) -> dict[str, Any] | None:
    """``vqa profile``'s forward MACs of one sample (``None`` where the model has no forward to profile)."""
    from vqa_components.profiler import profile_model

    try:
        report = profile_model(model, dm.example_batch(batch_size=1))
    except Exception as exc:  # noqa: BLE001  (a model without a forward: E-ViLM's tokenizer stage)
        return {"macs": None, "why": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    return {"macs": report.macs, "per_part": {k: v["macs"] for k, v in report.per_part.items()},
            "method": report.method}


def _attention_formulas() -> dict[Any, Any]:
    """FLOP formulas for the CPU attention kernels that ``FlopCounterMode`` does not count (forward and
    backward of the fused CPU kernel)."""
    import torch
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    def forward(q, k, v, *args, out_shape=None, **kw):
        return sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *args, out_shape=None, **kw):
        return sdpa_backward_flop_count(grad_out, q, k, v)

    aten = torch.ops.aten
    table: dict[Any, Any] = {}
    for name, fn in (("_scaled_dot_product_flash_attention_for_cpu", forward),
                     ("_scaled_dot_product_flash_attention_for_cpu_backward", backward)):
        op = getattr(aten, name, None)
        if op is not None:
            table[op] = fn
    return table


def counted_flops(stepper: Stepper, batch: dict[str, Any]) -> dict[str, Any]:
    """The FLOPs of one real training step (forward and backward; the optimizer's element-wise update
    is not counted), by ``torch.utils.flop_counter``, and by kind of op."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_attention_formulas())
    with counter:
        stepper.step(batch)
    by_op: dict[str, int] = {}
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        name = str(getattr(op, "__name__", op)).split(".")[0]
        kind = "conv" if "conv" in name else "attention" if "attention" in name else "matmul"
        by_op[kind] = by_op.get(kind, 0) + int(flops)
    return {"flops": int(counter.get_total_flops()), "by_kind": by_op}


def batch_size(batch: dict[str, Any]) -> int:
    return int(batch["batch_size"])
