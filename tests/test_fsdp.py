"""FSDP (``--trainer.strategy vqa_fsdp``, :mod:`vqa_components.fsdp`): which modules become units, the
strategy on a CPU, and (slow) a 2-process sharded fit whose checkpoint one process reads back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import D, tiny_model
from lightning.pytorch.callbacks import Callback
from torch import nn

from vqa_components import create
from vqa_components.interfaces import Fusion, FusionOutput

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------ the policy (fast, no process group)
def test_units_are_the_blocks_each_part_declares():
    from vqa_components.fsdp import fsdp_units

    model = tiny_model(text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=2, num_heads=2))
    units = fsdp_units(model)
    assert {p: type(m).__name__ for p, m in units.items()} == {
        "text_encoder.blocks.0": "TransformerBlock", "text_encoder.blocks.1": "TransformerBlock",
        "fusion.cross.0": "CrossAttentionBlock", "fusion.self_attn.0": "TransformerBlock",
    }  # fmt: skip
    # everything else (embeddings, projections, the backbone's convolutions, the classifier) stays in the root unit
    in_units = {id(p) for m in units.values() for p in m.parameters()}
    assert {n.split(".")[0] for n, p in model.named_parameters() if id(p) not in in_units} >= {"backbone", "head"}


def test_blocks_of_a_frozen_part_are_frozen_units():
    from vqa_components.fsdp import describe_units

    model = tiny_model(freeze=["text_encoder"])
    rows = {r["path"]: r for r in describe_units(model)}
    assert rows["text_encoder.blocks.0"]["params"] > 0 and rows["text_encoder.blocks.0"]["trainable"] == 0
    assert rows["fusion.cross.0"]["trainable"] == rows["fusion.cross.0"]["params"] > 0


class _PluginBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D)


class _Declared(nn.Module):
    fsdp_blocks = ("_PluginBlock",)

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_PluginBlock(), nn.Linear(D, D), _PluginBlock()])  # not one repeated class


class _NoBlocks(nn.Module):
    fsdp_blocks = ()

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_PluginBlock() for _ in range(2))


class _PluginFusion(Fusion):
    """A plugin's fusion that declares nothing: repeated blocks inside containers, a module inside it
    that declares its own blocks, one that declares it has none, and containers that are not blocks
    (mixed classes, one child)."""

    def __init__(self) -> None:
        super().__init__()
        self.out_dim = D
        self.stack = nn.Sequential(_PluginBlock(), _PluginBlock(), _PluginBlock())
        self.mixed = nn.ModuleList([nn.Linear(D, D), nn.LayerNorm(D)])
        self.single = nn.ModuleList([_PluginBlock()])
        self.inner = _Declared()
        self.none = _NoBlocks()

    def forward(self, video, text) -> FusionOutput:  # pragma: no cover - not run
        raise NotImplementedError


def test_parts_that_declare_nothing_get_their_repeated_blocks():
    from vqa_components.fsdp import fsdp_units

    model = tiny_model(fusion=_PluginFusion())
    fusion_units = sorted(p for p in fsdp_units(model) if p.startswith("fusion."))
    assert fusion_units == ["fusion.inner.layers.0", "fusion.inner.layers.2", *(f"fusion.stack.{i}" for i in range(3))]


def test_t5_parts_shard_by_t5_block():
    """T5's encoder (text encoder) and decoder (text_decoder head): one unit per ``T5Block``, nothing
    else; their shared embeddings and the LM head stay in the root unit."""
    from vqa_components.fsdp import fsdp_units

    t5 = {"d_model": D, "num_layers": 2, "num_heads": 2, "d_kv": 16, "d_ff": 64}
    model = tiny_model(
        text_encoder=create("text_encoder", "t5", config=t5, tokenizer_path="clip_bpe", max_length=8),
        head=create("head", "text_decoder", in_dim=D, config=t5, tokenizer_path="clip_bpe", max_answer_tokens=4),
    )
    units = {p: type(m).__name__ for p, m in fsdp_units(model).items() if not p.startswith("fusion.")}
    assert units == {
        "text_encoder.model.encoder.block.0": "T5Block", "text_encoder.model.encoder.block.1": "T5Block",
        "head.t5.decoder.block.0": "T5Block", "head.t5.decoder.block.1": "T5Block",
    }  # fmt: skip


def test_vqa_fsdp_is_a_strategy_name_on_a_cpu():
    """``Trainer(strategy="vqa_fsdp")`` on a CPU with 2 devices gets the strategy (Lightning's own
    ``fsdp`` refuses a CPU) with the precision plugin that clips by the full gradient's norm. (That
    the ``vqa`` command registers the name is what the slow test's ``vqa fit`` shows.)"""
    import lightning.pytorch as pl

    from vqa_components.fsdp import VQAFSDPStrategy, _ShardedNormClipping

    for precision in ("32-true", "bf16-mixed"):
        trainer = pl.Trainer(strategy="vqa_fsdp", accelerator="cpu", devices=2, precision=precision, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        assert type(trainer.strategy) is VQAFSDPStrategy
        assert type(trainer.precision_plugin) is _ShardedNormClipping
        assert trainer.precision_plugin.precision == precision


# ------------------------------------------------------------------ 2 CPU processes (slow)
class RecordFSDP(Callback):
    """``--trainer.callbacks+=test_fsdp.RecordFSDP`` (``tests/`` on ``PYTHONPATH``): writes
    ``<default_root_dir>/fsdp_<stage>_rank<R>.json`` with what the strategy wrapped (at fit start: each
    FSDP unit's path, block class, full and local parameter counts) and the weights the model holds
    (at the end of the fit and at test start: per parameter, the sum and the sum of squares of its
    full tensor, gathered from the shards under ``summon_full_params`` when the model is sharded)."""

    def _write(self, trainer, stage: str, record: dict) -> None:
        path = Path(trainer.default_root_dir) / f"fsdp_{stage}_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))

    def on_train_start(self, trainer, pl_module) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        units = []
        for path, m in trainer.strategy.model.named_modules():
            if isinstance(m, FSDP) and path:
                flat = m._handle.flat_param
                clean = path.replace("_fsdp_wrapped_module.", "").replace("._fsdp_wrapped_module", "")
                units.append({"path": clean, "block": type(m.module).__name__,
                              "full": flat._unpadded_unsharded_size.numel(), "local": flat.numel()})
        self._write(trainer, "fit", {"world_size": trainer.world_size, "units": units})

    def _weights(self, trainer, pl_module) -> tuple[bool, dict]:
        from contextlib import nullcontext

        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = trainer.strategy.model
        sharded = isinstance(root, FSDP)
        with FSDP.summon_full_params(root, writeback=False) if sharded else nullcontext(), torch.no_grad():
            sums = {n.replace("_fsdp_wrapped_module.", ""): [float(p.double().sum()), float(p.double().square().sum())]
                    for n, p in pl_module.named_parameters()}
        return sharded, sums

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, "fit_end", {"weights": self._weights(trainer, pl_module)[1]})

    def on_test_start(self, trainer, pl_module) -> None:
        sharded, sums = self._weights(trainer, pl_module)
        self._write(trainer, "test_sharded" if sharded else "test_single", {"weights": sums})


def _vqa(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    exe = Path(sys.executable).with_name("vqa")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=ROOT, timeout=600, check=False, env=env)


# the co-tokenization recipe at test size: T5 encoder and T5 decoder (T5Block), co-tokenizer
# (TransformerBlock), three frame CNNs (the fallback); 16 test clips split 8/8 over the ranks
RECIPE = "recipes/cotok/tiny/three_streams.yaml"
DATA = [
    "--data.dataset_args.num_train=16", "--data.dataset_args.num_val=16", "--data.dataset_args.num_test=16",
    "--data.batch_size=4", "--data.num_workers=0", "--trainer.enable_progress_bar=false",
    "--trainer.accelerator=cpu", "--trainer.callbacks+=test_fsdp.RecordFSDP",
]


@pytest.mark.slow
def test_fsdp_fit_on_two_cpu_processes_then_test_in_one(tmp_path):
    root = tmp_path / "run"
    common = ["--config", RECIPE, f"--trainer.default_root_dir={root}", *DATA]
    sharded = ["--trainer.strategy=vqa_fsdp", "--trainer.devices=2"]
    fit = _vqa("fit", *common, *sharded, "--trainer.max_epochs=1")
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in fit.stderr + fit.stdout

    # wrapped where the policy says, and sharded: each rank holds half of every unit
    ranks = [json.loads((root / f"fsdp_fit_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    units = [u for u in ranks[0]["units"] if u["block"] not in ("BatchNorm2d",)]  # FSDP's own: fp32 norms
    counts: dict[str, int] = {}
    for u in units:
        counts[u["block"]] = counts.get(u["block"], 0) + 1
    assert counts == {"T5Block": 4, "TransformerBlock": 3, "FrameCNN": 3}, counts
    assert {u["path"] for u in units} >= {"text_encoder.model.encoder.block.1", "head.t5.decoder.block.0",
                                          "fusion.blocks.2.0", "backbone.backbones.0"}
    for u0, u1 in zip(ranks[0]["units"], ranks[1]["units"], strict=True):
        assert u0["full"] == u1["full"] and 0 < u0["local"] < u0["full"], u0
        assert u0["local"] + u1["local"] - u0["full"] in (0, 1), (u0, u1)  # at most one element of padding

    # the checkpoint (one file, the full state dict) in one process, and the sharded model, test alike
    assert (root / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if "_fsdp" in k or "flat_param" in k]
    one = _vqa("test", *common, "--ckpt_path=last")
    assert one.returncode == 0, one.stderr[-3000:]
    single = json.loads((root / "test_metrics.json").read_text())
    (root / "test_metrics.json").unlink()
    two = _vqa("test", *common, *sharded, "--ckpt_path=last")
    assert two.returncode == 0, two.stderr[-3000:]
    shard = json.loads((root / "test_metrics.json").read_text())

    # the weights the sharded fit ended with, gathered: what one process and two processes test
    trained = json.loads((root / "fsdp_fit_end_rank0.json").read_text())["weights"]
    for stage in ("test_single", "test_sharded"):
        loaded = json.loads((root / f"fsdp_{stage}_rank0.json").read_text())["weights"]
        assert loaded.keys() == trained.keys() and len(trained) > 50, stage
        for name, value in trained.items():
            assert loaded[name] == pytest.approx(value, rel=1e-6, abs=1e-6), (stage, name)
    assert single["test/num_samples"] == shard["test/num_samples"] == 16
    for key, value in single.items():
        if key.startswith(("test/acc", "test/num_samples")):
            assert shard[key] == value, key
        elif isinstance(value, float):  # losses: the mean of two ranks' means over 8 samples each
            assert shard[key] == pytest.approx(value, rel=1e-4), key
