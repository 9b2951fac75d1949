"""Every recipe: parses, its --print_config output re-parses to the same config, and it trains.

Recipes that train on the embedded benchmark train one batch, validate one batch and save the
checkpoint of their monitored metric, as written (with a tiny dataset). Paper-scale recipes,
whose data adapters and pretrained weights are not available offline, run ``fast_dev_run`` on
tiny synthetic data with the frame encoder's input shrunk to 32x32 pixels (every part and width
is otherwise as in the recipe; the frozen CLIP tower keeps its random weights,
``allow_random_frozen``, and fine-tuning recipes start from scratch, ``init_parts: null``) and
are profiled (``vqa profile``) at full size.

The co-tokenization paper recipes (``recipes/cotok/``, three X3D streams and two T5-base stacks)
keep their streams, 8x fewer frames and 4x smaller, and run their T5 stacks and fusion at width 64
with one layer (:data:`SMALL_T5`). They are profiled at full size on the meta device (no weights
allocated). Models with X3D run on one thread (its depthwise 3D convolutions are up to 50x slower on
two contended threads).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml
from recipe_helpers import load_experiment, objectives_with_tagger_size, paper_sized_bert_vocab

from vqa_components.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.yaml"))


def is_paper_scale(recipe: str) -> bool:
    cfg = yaml.safe_load((ROOT / recipe).read_text())
    return cfg.get("data", {}).get("dataset") != "synthetic_vqa"


def needs_init_from(recipe: str) -> bool:
    """A fine-tuning recipe: it names the parts to load (init_parts) but not the file (init_from)."""
    model = yaml.safe_load((ROOT / recipe).read_text())["model"]
    return bool(model.get("init_parts")) and not model.get("init_from")


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(list(args))
        except SystemExit as exc:  # --print_config exits after printing
            code = exc.code or 0
    return code, out.getvalue()


#: recipes whose data are multiple-choice benchmarks (options per question; MSRVTT-MC has only a test split):
#: synthetic_vqa has no options, so they run on their miniature releases (tests/data/benchmarks/)
ON_MINIATURE_RELEASES = {
    "recipes/evilm/finetune_tgif_action.yaml": "tests/data/benchmarks/test_tgif_qa.py",
    "recipes/evilm/finetune_tgif_transition.yaml": "tests/data/benchmarks/test_tgif_qa.py",
    "recipes/evilm/msrvtt_mc.yaml": "tests/data/benchmarks/test_msrvtt_mc.py",
}


def skip_if_on_miniature(recipe: str) -> None:
    if recipe in ON_MINIATURE_RELEASES:
        pytest.skip(f"a multiple-choice recipe: runs on the miniature release in {ON_MINIATURE_RELEASES[recipe]}")


def uses_bert(recipe: str) -> bool:
    return "name: bert" in (ROOT / recipe).read_text()


_VOCAB: list[Path] = []


def vocab_args(recipe: str) -> list[str]:
    """E-ViLM recipes read the bert encoder's vocabulary from a file that ``vqa vocab`` writes: for the
    tests, one of the paper's size, written once."""
    if not uses_bert(recipe):
        return []
    if not _VOCAB:
        import tempfile

        _VOCAB.append(paper_sized_bert_vocab(Path(tempfile.mkdtemp())))
    return [f"--model.text_encoder.init_args.vocab_file={_VOCAB[0]}"]


def objectives_at(recipe: str, image_size: int) -> list[str]:
    """The recipe's objectives with the video tokenizer (svq) or tagger (mvm) built for ``image_size`` pixels."""
    return objectives_with_tagger_size(yaml.safe_load((ROOT / recipe).read_text())["model"]["objectives"], image_size)


def uses_x3d(recipe: str) -> bool:
    return "name: x3d" in (ROOT / recipe).read_text()


@pytest.fixture
def one_thread_for_x3d(request):
    """X3D's depthwise conv3d takes ~1 ms on one thread and 60-80 ms on two contended ones (docs/parts/x3d.md)."""
    import torch

    recipe = request.node.callspec.params.get("recipe", "")
    threads = torch.get_num_threads()
    if uses_x3d(recipe):
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_there_are_recipes():
    assert "recipes/quickstart.yaml" in RECIPES and len(RECIPES) >= 2


@pytest.mark.parametrize("recipe", RECIPES)
def test_print_config_reparses_to_the_same_config(recipe, tmp_path):
    code, printed = run("fit", "--config", str(ROOT / recipe), "--print_config")
    assert code == 0
    first = tmp_path / "printed.yaml"
    first.write_text(printed)
    code, again = run("fit", "--config", str(first), "--print_config")
    assert code == 0
    assert yaml.safe_load(again) == yaml.safe_load(printed)


SHRINK_PAPER = [
    "--data.dataset=synthetic_vqa",
    "--data.dataset_args={num_train: 32, num_val: 16, num_test: 16, clip_frames: 32, num_frames: 16, frame_size: 32}",
    "--data.batch_size=2",
    "--data.num_workers=0",
    "--trainer.precision=32-true",  # bf16-mixed: tests/test_mixed_precision.py, on the tiny recipes'
]  # parts (the full-width towers take minutes per step in bf16 on a CPU without bf16 instructions)


#: Multi-stream paper recipes (co-tokenization) in ``fast_dev_run``: their T5 stacks (text encoder,
#: text_decoder head) and the fusion shrink to this width and one layer. At full width building the
#: model alone takes 15-30 s on a loaded 2-core CPU, much of it the random init of two 49,409 x 768
#: embeddings; the full-size model is checked by test_cotok_paper_recipes_profile_at_full_size
#: (every part and width, on the meta device).
SMALL_T5 = {"d_model": 64, "num_layers": 1, "num_heads": 2, "d_kv": 32, "d_ff": 128}


def shrink_streams(streams: list[dict]) -> str:
    """The streams of a multi-stream recipe, 8x fewer frames and 4x smaller, as a dataset_args value."""
    small = ", ".join(f"{{num_frames: {max(1, s['num_frames'] // 8)}, frame_size: {s['frame_size'] // 4}}}"
                      for s in streams)
    return f"--data.dataset_args={{num_train: 32, num_val: 16, num_test: 16, clip_frames: 32, streams: [{small}]}}"


def shrink_t5(model: dict) -> list[str]:
    """Overrides that give a T5-based recipe's text encoder, fusion and head the width of SMALL_T5."""
    config = "{" + ", ".join(f"{k}: {v}" for k, v in SMALL_T5.items()) + "}"
    d = SMALL_T5["d_model"]
    args = []
    if model["text_encoder"].get("name") == "t5":
        args += [f"--model.text_encoder.init_args.config={config}", f"--model.fusion.init_args.text_dim={d}"]
    if model["head"].get("name") == "text_decoder":
        args += [f"--model.head.init_args.config={config}", f"--model.head.init_args.in_dim={d}"]
    if args:
        args += [f"--model.fusion.init_args.dim={d}", f"--model.fusion.init_args.num_heads={SMALL_T5['num_heads']}"]
    return args


def paper_args(recipe: str) -> list[str]:
    """A paper-scale recipe on tiny synthetic data, offline: no CLIP weights, no pretraining checkpoint.

    Multi-stream recipes (co-tokenization) keep their streams, shrunk by :func:`shrink_streams`,
    and their T5 parts shrink to :data:`SMALL_T5` (:func:`shrink_t5`)."""
    cfg = yaml.safe_load((ROOT / recipe).read_text())
    model = cfg["model"]
    streams = (cfg["data"].get("dataset_args") or {}).get("streams")
    if streams:
        args = [*SHRINK_PAPER[:1], shrink_streams(streams), *SHRINK_PAPER[2:], "--model.allow_random_frozen=true",
                *shrink_t5(model)]
    else:
        args = [*SHRINK_PAPER, "--model.allow_random_frozen=true"]
        if "backbone" in model:
            args.append("--model.backbone.init_args.image_size=32")
    if model.get("head", {}).get("name") == "answer_classifier":
        args.append("--model.head.init_args.num_answers=16")
    if needs_init_from(recipe):
        args.append("--model.init_parts=null")
    return args + vocab_args(recipe) + objectives_at(recipe, 32)


def tiny_args(recipe: str, tiny_data: list[str]) -> list[str]:
    """A recipe on the embedded benchmark with a tiny dataset; a later stage starts from scratch (its
    frozen modules keep their random weights)."""
    args = [*tiny_data, *vocab_args(recipe)]
    if needs_init_from(recipe):
        args += ["--model.init_parts=null", "--model.allow_random_frozen=true"]
    return args


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains(recipe, tmp_path, tiny_data, one_thread_for_x3d):
    """Recipes on the embedded benchmark: one training batch, one validation batch and the
    checkpoint of the monitored metric (a recipe whose model does not log that metric fails).
    Paper-scale recipes: ``fast_dev_run`` (no checkpoint: it would be a full-size model on disk)."""
    skip_if_on_miniature(recipe)
    args = ["fit", "--config", str(ROOT / recipe), f"--trainer.default_root_dir={tmp_path}",
            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
    paper = is_paper_scale(recipe)
    if paper:
        args += [*paper_args(recipe), "--trainer.fast_dev_run=1"]
    else:
        args += tiny_args(recipe, tiny_data) + ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                                                "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1"]
    code, _ = run(*args)
    assert code == 0
    if not paper:
        assert list((tmp_path / "checkpoints").glob("best-*.ckpt")), "no checkpoint of the monitored metric"


PAPER = [r for r in RECIPES if is_paper_scale(r)]


@pytest.mark.parametrize("recipe", PAPER)
def test_paper_recipes_show_where_weights_and_the_earlier_stage_go(recipe):
    """The frozen CLIP tower has a checkpoint key to fill in; a recipe that loads parts of an earlier
    stage says in its header how to give that stage, and how to train from scratch instead."""
    text = (ROOT / recipe).read_text()
    model = yaml.safe_load(text)["model"]
    if model.get("backbone", {}).get("name") == "open_clip" and model["backbone"].get("frozen"):
        assert "checkpoint" in model["backbone"] and "open_clip_pytorch_model.bin" in text
    if needs_init_from(recipe):
        header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
        assert "--model.init_from" in header and "--model.init_parts null" in header


@pytest.mark.slow
def test_paper_recipe_without_its_weights_stops_before_training(tmp_path, capsys):
    """What a user who runs a fine-tuning recipe as shipped sees: first the missing pretraining
    checkpoint, then (training from scratch) the frozen CLIP tower's missing weights; one line each."""
    recipe = "recipes/videodistill/finetune_msvd_qa.yaml"
    args = ["fit", "--config", str(ROOT / recipe), f"--trainer.default_root_dir={tmp_path}",
            *[a for a in paper_args(recipe) if a not in ("--model.allow_random_frozen=true", "--model.init_parts=null")]]
    capsys.readouterr()
    assert run(*args)[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vqa: error: init_parts ['text_encoder', 'sampler', 'fusion'] is set but init_from")
    assert run(*args, "--model.init_parts=null")[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vqa: error: frozen part(s) backbone still have their random initialisation")
    assert "--model.backbone.checkpoint /path/to/open_clip_pytorch_model.bin" in err[-1]
    assert not list(tmp_path.rglob("*.ckpt"))


COTOK_PAPER = [r for r in RECIPES if r.startswith("recipes/cotok/") and is_paper_scale(r)]


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.startswith("recipes/videodistill/") or r == "recipes/quickstart.yaml"
                                    or (r.startswith("recipes/cotok/") and r not in COTOK_PAPER)])
def test_recipe_profiles(recipe):
    """``vqa profile``; the co-tokenization paper recipes: test_cotok_paper_recipes_profile_at_full_size."""
    code, out = run("profile", "--config", str(ROOT / recipe))
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert report["params"] >= report["trainable_params"] > 0
    assert report["gmacs"] == pytest.approx(sum(p["gmacs"] for p in report["per_part"].values()), rel=1e-9)
    assert all(p["params"] >= p["trainable_params"] >= 0 for p in report["per_part"].values())


def profile_on_meta(recipe: str, *extra: str):
    """What ``vqa profile`` reports, with the model built on the meta device (no weights allocated):
    seconds instead of half a minute for two random-init T5-base stacks (experiments/cotok_profile.py)."""
    import torch

    from vqa_components.cli import NO_INIT, release, run_cli
    from vqa_components.profiler import profile_model

    def meta(value):
        if isinstance(value, torch.Tensor):
            return value.to("meta")
        return tuple(meta(v) for v in value) if isinstance(value, tuple) else value

    with torch.device("meta"):
        cli = run_cli(["--config", str(ROOT / recipe), *NO_INIT, *extra], run=False)
    model, batch = cli.model, {k: meta(v) for k, v in cli.datamodule.example_batch(1).items()}
    release(cli)
    return profile_model(model, batch)


#: GMACs per sample that docs/parts/cotok.md quotes (written by experiments/cotok_profile.py): the paper
#: configuration (3 X3D streams, T5-base encoder and decoder, K = 8, I = 3), shared by these recipes
COTOK_PAPER_GMACS = 6.169


@pytest.mark.parametrize("recipe", COTOK_PAPER)
def test_cotok_paper_recipes_profile_at_full_size(recipe):
    report = profile_on_meta(recipe)
    cfg = yaml.safe_load((ROOT / recipe).read_text())
    assert report.method == "fake_tensor" and report.params > 100e6
    assert report.gmacs == pytest.approx(sum(p["gmacs"] for p in report.per_part.values()), rel=1e-9)
    assert len(report.per_stream) == len(cfg["data"]["dataset_args"]["streams"])  # one X3D per stream
    ablation = recipe.startswith("recipes/cotok/ablations/") and not recipe.endswith("/full.yaml")
    if not ablation:  # every other recipe is the paper configuration
        assert report.gmacs == pytest.approx(COTOK_PAPER_GMACS, abs=5e-4)


EVILM_PAPER = [r for r in RECIPES if r.startswith("recipes/evilm/") and is_paper_scale(r)]
#: what docs/parts/evilm.md quotes (experiments/evilm_profile.py): the fine-tuning configuration, 4 frames
#: of 256x256 and the example's 9-token question; the paper: 16M parameters without the head, 12.2 G(MAC)s
EVILM_PAPER_GMACS, EVILM_PARAMS_WITHOUT_HEAD = 7.152, 14.99e6


@pytest.mark.parametrize("recipe", [r for r in EVILM_PAPER if "/finetune_" in r])
def test_evilm_fine_tuning_recipes_profile_as_the_docs_say(recipe):
    report = profile_on_meta(recipe, *vocab_args(recipe))
    without_head = report.params - report.per_part["head"]["params"]
    assert without_head == pytest.approx(EVILM_PARAMS_WITHOUT_HEAD, rel=2e-3)
    assert without_head == pytest.approx(16e6, rel=0.15)  # the paper's 16M
    # EdgeNeXt-small, 1.25 GMACs per 256x256 frame (its grid goes to the merged decoder unprojected)
    frames = yaml.safe_load((ROOT / recipe).read_text())["data"]["dataset_args"]["num_frames"]
    per_frame = report.per_part["backbone"]["gmacs"] / frames
    assert per_frame == pytest.approx(1.25, abs=0.02)
    if "head: {name: answer_classifier" in (ROOT / recipe).read_text():  # the head's own cost differs
        assert report.gmacs == pytest.approx(EVILM_PAPER_GMACS, abs=0.02)


def test_meta_profile_counts_what_vqa_profile_counts():
    recipe = "recipes/cotok/tiny/three_streams.yaml"
    code, out = run("profile", "--config", str(ROOT / recipe))
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    meta = profile_on_meta(recipe)
    assert (meta.macs, meta.params, meta.trainable_params) == (report["macs"], report["params"], report["trainable_params"])


def test_sweep_sets_name_their_recipes():
    sweep = load_experiment("seed_sweep")
    for name, (folder, labels, results, table) in sweep.SETS.items():
        assert set(labels) <= {p.stem for p in folder.glob("*.yaml")}, name  # every label names a recipe
        assert results.startswith("experiments/results/") and table.startswith("docs/results/"), name
    folder, labels, _, _ = sweep.SETS["cotok_tiny"]
    assert set(labels) == {p.stem for p in folder.glob("*.yaml")}  # and every recipe is swept


def test_evilm_chain_keeps_longer_tokenizers_apart():
    """A chain whose stage 1 ran longer (``--tokenizer-epochs``) gets its own table row; older records
    without the field ran their recipe's ``max_epochs``; chains without a stage 1 have no epochs."""
    chain = load_experiment("evilm_chain")
    recipe = chain.recipe_epochs("tokenizer_bce")
    old = {"seed": 0, "pretrain": "pretrain", "tokenizer": "tokenizer_bce"}
    longer = dict(old, tokenizer_epochs=recipe + 4)
    assert chain.tokenizer_epochs(old) == recipe
    assert chain.tokenizer_epochs({"seed": 0, "pretrain": "none", "tokenizer": "tokenizer"}) is None
    name = chain.LABELS[("pretrain", "tokenizer_bce")]
    assert chain.label(old) == name
    assert chain.label(longer) == name + f", tokenizer trained {recipe + 4} epochs"


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_trainable_parameter_learns_and_frozen_parts_stay_out_of_the_optimizer(recipe, tiny_data,
                                                                                     one_thread_for_x3d):
    """What DDP needs without ``find_unused_parameters``: one training step reaches every trainable
    parameter; frozen parts get no gradient and are not given to the optimizer."""
    skip_if_on_miniature(recipe)
    from vqa_components.cli import release, run_cli

    args = ["--config", str(ROOT / recipe), "--data.num_workers=0"]
    if is_paper_scale(recipe):
        args += paper_args(recipe)
    else:
        args += tiny_args(recipe, tiny_data)
    cli = run_cli(args, run=False)
    model, dm = cli.model, cli.datamodule
    release(cli)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model.train()
    out = model(batch) if model.runs_forward else None
    model._loss(batch, out, "train").backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    no_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert not no_grad, f"parameters that one step never reaches (DDP would fail on them): {no_grad[:10]}"
    for name in (*model.frozen_parts, *model.idle_parts):
        part = model._module(name, "freeze")
        assert not any(p.requires_grad or p.grad is not None for p in part.parameters()), name
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    given = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert given == {id(p) for n, p in model.named_parameters() if n in trainable}
