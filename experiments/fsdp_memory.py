"""GPU memory per device of the paper-scale recipes, without and with FSDP (``--trainer.strategy vqa_fsdp``).

    python experiments/fsdp_memory.py --out experiments/results/fsdp_memory.md

Each recipe's model is built on the meta device (no weights, seconds; the Hugging Face names it reads,
``t5-base``/``t5-large``/``t5-3b``, are served from a temporary cache holding their published
``config.json`` and a tokenizer, as the tests do: ``tests/helpers.py``). Per device, with AdamW and
``bf16-mixed`` (fp32 weights, fp32 gradients, two fp32 AdamW moments per trainable parameter):

* **DDP** (every device holds everything): ``4 P + 4 T + 8 T`` bytes, plus DDP's gradient buckets
  (another ``4 T``), for ``P`` parameters of which ``T`` train.
* **FSDP on N devices** (``FULL_SHARD``, the parts' units, :mod:`vqa_components.fsdp`):
  ``(4 P + 12 T) / N`` sharded, plus what is gathered while the step runs: the root unit (every
  weight outside a block) in bf16 with its bf16 gradient for the whole step, and two blocks at a
  time (the one running and the one prefetched) with their bf16 gradients: ``2 x 2 x (root +
  2 x largest unit)`` bytes.
* **Activations**: what autograd saves for the backward in one training step at the recipe's
  per-device batch, under bf16 autocast, counted on fake tensors (``saved_tensors_hooks``; each
  saved tensor once): an estimate that leaves out the transient buffers of single kernels and the
  allocator's fragmentation. FSDP does not shard activations; ``activation_checkpointing_blocks``
  keeps only each block's input.

The figures are decimal GB (1e9 bytes). A device "fits" a configuration when the total is below
its memory with 10 % to spare (fragmentation, CUDA context, NCCL buffers).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

GB = 1e9
GPUS = {"A100/H100 80 GB": 80, "A100 40 GB": 40, "A10/L4 24 GB": 24}
T5_BASE_CFG = {"vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12,
               "feed_forward_proj": "relu", "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
T5_SIZES = {  # the hub's config.json of each (T5 v1.0)
    "t5-large": {**T5_BASE_CFG, "d_model": 1024, "num_layers": 24, "num_heads": 16, "d_ff": 4096},
    "t5-3b": {**T5_BASE_CFG, "d_model": 1024, "num_layers": 24, "num_heads": 32, "d_kv": 128, "d_ff": 16384},
}
T5_3B = ["--model.text_encoder.init_args.pretrained_path=t5-3b", "--model.head.init_args.pretrained_path=t5-3b"]
UNFROZEN = ["--model.freeze=[]", "--model.backbone.init_args.frozen=false"]


@dataclass
class Config:
    label: str
    recipe: str
    overrides: tuple[str, ...] = ()


CONFIGS = [
    Config("co-tokenization, T5-base (finetune_msrvtt_qa)", "recipes/cotok/finetune_msrvtt_qa.yaml"),
    Config("co-tokenization, T5-large (finetune_msrvtt_qa_67gmacs)", "recipes/cotok/finetune_msrvtt_qa_67gmacs.yaml"),
    Config("co-tokenization, T5-3B (67gmacs recipe, t5-3b)", "recipes/cotok/finetune_msrvtt_qa_67gmacs.yaml",
           tuple(T5_3B)),
    Config("VideoDistill finetune, backbone frozen (as written)", "recipes/videodistill/finetune_msrvtt_qa.yaml"),
    Config("VideoDistill finetune, backbone unfrozen", "recipes/videodistill/finetune_msrvtt_qa.yaml", tuple(UNFROZEN)),
    Config("VideoDistill pretrain, backbone unfrozen", "recipes/videodistill/pretrain.yaml", tuple(UNFROZEN)),
    Config("E-ViLM pretrain", "recipes/evilm/pretrain.yaml"),
    Config("E-ViLM finetune", "recipes/evilm/finetune_msrvtt_qa.yaml"),
]


@contextmanager
def paper_hub() -> object:
    """A temporary Hugging Face cache holding t5-base, t5-large and t5-3b's config and a tokenizer, offline."""
    from helpers import paper_hub_cache, sentencepiece_model, t5_repository
    from huggingface_hub import constants

    with tempfile.TemporaryDirectory() as tmp:
        cache = paper_hub_cache(Path(tmp) / "hub", "cotok", weights=False)
        spiece = sentencepiece_model(Path(tmp))
        for name, cfg in T5_SIZES.items():
            t5_repository(cache, name, spiece, cfg, weights=False)
        saved = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(cache), True
        try:
            yield Path(tmp)
        finally:
            constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved


def saved_activation_bytes(model: torch.nn.Module, batch: dict) -> int:
    """Bytes autograd saves for the backward of one training forward of ``model`` (built on the meta
    device) on ``batch``, under bf16 autocast, on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.utils.stateless import _reparametrize_module

    from vqa_components.profiler import _Faker, _map_tensors, _real_tokenization

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    faker = _Faker(mode, torch.device("cpu"))
    state = {n: faker(t) for n, t in itertools.chain(model.named_parameters(remove_duplicate=False),
                                                      model.named_buffers(remove_duplicate=False))}
    params = {id(t) for t in state.values()}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = id(t._base if t._base is not None else t)
        if key not in seen and key not in params and id(t) not in params:  # weights are not activations
            seen.add(key)
            base = t._base if t._base is not None else t
            total += base.numel() * base.element_size()
        return t

    model.train()
    with (_real_tokenization(model, []), mode, _reparametrize_module(model, state, tie_weights=True, strict=False),
          torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16)):
        model(_map_tensors(batch, faker))
    return total


def measure(config: Config, folder: Path) -> dict:
    from helpers import build_on_meta, vocab_args

    from vqa_components.fsdp import fsdp_units

    model, dm = build_on_meta(config.recipe, *vocab_args(config.recipe, folder), *config.overrides)
    params = list(model.parameters())
    p = sum(x.numel() for x in params)
    t = sum(x.numel() for x in params if x.requires_grad)
    units = fsdp_units(model)
    in_units = {id(x) for m in units.values() for x in m.parameters()}
    root = sum(x.numel() for x in params if id(x) not in in_units)
    largest = max((sum(x.numel() for x in m.parameters()) for m in units.values()), default=0)
    batch = int(dm.batch_size)
    act = saved_activation_bytes(model, dm.example_batch(batch))
    return {"params": p, "trainable": t, "units": len(units), "root": root, "largest_unit": largest,
            "batch": batch, "activations": act}


def ddp_bytes(r: dict) -> float:
    return 4 * r["params"] + 16 * r["trainable"]  # weights, gradients, AdamW moments, DDP's gradient buckets


def fsdp_bytes(r: dict, n: int) -> float:
    gathered = 2 * 2 * (r["root"] + 2 * r["largest_unit"])  # bf16 weights + bf16 gradients of what runs
    return (4 * r["params"] + 12 * r["trainable"]) / n + gathered


def smallest_fit(total_for_n, memory_gb: float, max_n: int = 64) -> str:
    for n in (1, 2, 4, 8, 16, 32, 64):
        if n <= max_n and total_for_n(n) < 0.9 * memory_gb * GB:
            return str(n)
    return f"> {max_n}"


def table(rows: list[tuple[Config, dict]]) -> str:
    lines = [
        "| configuration | params (M) | trainable (M) | units | batch / GPU | activations (GB) | DDP: states + activations (GB) "
        "| FSDP N=2 | N=4 | N=8 | " + " | ".join(f"GPUs for {g}" for g in GPUS) + " |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(GPUS),
    ]
    for config, r in rows:
        act = r["activations"]
        ddp = ddp_bytes(r) + act
        fsdp = [fsdp_bytes(r, n) + act for n in (2, 4, 8)]
        fits = []
        for memory in GPUS.values():
            if ddp < 0.9 * memory * GB:
                fits.append("1 (DDP)")
            else:
                fits.append(f"{smallest_fit(lambda n, r=r, act=act: fsdp_bytes(r, n) + act, memory)} (FSDP)")
        lines.append(
            f"| {config.label} | {r['params'] / 1e6:.0f} | {r['trainable'] / 1e6:.0f} | {r['units']} | {r['batch']} "
            f"| {act / GB:.1f} | {ddp / GB:.1f} | " + " | ".join(f"{x / GB:.1f}" for x in fsdp) + " | "
            + " | ".join(fits) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "fsdp_memory.md")
    parser.add_argument("--only", nargs="*", help="labels (substrings) of the configurations to measure")
    args = parser.parse_args()
    configs = [c for c in CONFIGS if not args.only or any(s in c.label for s in args.only)]
    rows = []
    with paper_hub() as folder:
        for config in configs:
            r = measure(config, folder)
            rows.append((config, r))
            print(config.label, r, flush=True)
    text = table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("<!-- written by experiments/fsdp_memory.py -->\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
