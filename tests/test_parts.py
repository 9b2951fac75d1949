"""Every registered part: builds with tiny arguments, runs forward and backward.

Parametrized over the registries, so a new part is tested the moment it registers. Parts get
their constructor arguments from a generic pool (by parameter name) plus the per-part
overrides below; a part that needs something else must add an override here.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from vqa_components import create
from vqa_components.interfaces import (
    FusionOutput,
    HeadOutput,
    SamplerOutput,
    TextFeatures,
    VideoFeatures,
)
from vqa_components.registry import REGISTRIES, import_builtin_parts

import_builtin_parts()

D = 16
B, T, N, L = 2, 6, 4, 5
K = 3

GENERIC = {
    "dim": D,
    "video_dim": D,
    "text_dim": D,
    "in_dim": D,
    "num_answers": 7,
    "num_frames": K,
    "num_heads": 2,
    "num_layers": 1,
    "hidden_dim": 2 * D,
    "embed_dim": D,
}

TINY_CLIP = {"model_name": "tiny-test", "width": D, "layers": 1, "heads": 2, "image_size": 32, "patch_size": 16}

#: part-specific constructor arguments (merged over GENERIC)
OVERRIDES: dict[tuple[str, str], dict] = {
    ("backbone", "frame_cnn"): {"channels": (8, 16), "grid": 2},
    ("backbone", "multi_stream"): {
        "backbones": [{"name": "frame_cnn", "dim": D, "channels": (8, 16), "grid": 2}],
    },
    ("text_encoder", "small_transformer"): {"max_length": 16},
}


# a random-init BERT of width D with the real WordPiece tokenizer (its folder comes from the minilm_folder fixture)
OVERRIDES[("text_encoder", "hf_transformer")] = {
    "config": {"model_type": "bert", "hidden_size": D, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 2 * D},
}


OVERRIDES[("text_encoder", "t5")] = {
    "config": {"d_model": D, "num_layers": 1, "num_heads": 2, "d_kv": 8, "d_ff": 2 * D},
}
OVERRIDES[("head", "text_decoder")] = {
    "config": {"d_model": D, "num_layers": 1, "num_heads": 2, "d_kv": 8, "d_ff": 2 * D},
}
#: parts built with the real WordPiece tokenizer (the minilm_folder fixture's)
NEEDS_TOKENIZER = {("text_encoder", "hf_transformer"), ("text_encoder", "t5"), ("head", "text_decoder")}

#: E-ViLM: a BERT of width D over the MiniLM folder's vocabulary (vocab_file, from minilm_folder)
OVERRIDES[("text_encoder", "bert")] = {"hidden_size": D, "intermediate_size": 2 * D, "num_layers": 1}
NEEDS_VOCAB_FILE = {("text_encoder", "bert")}
#: the video tokenizer (svq) and the tagger (mvm) at 32x32 pixels: 16-pixel patches, a 2x2 grid
TINY_TAGGER = {"img_size": 32, "patch_size": 16, "embed_dim": D, "depth": 1, "num_heads": 2, "num_codes": 32,
               "code_dim": 8}
OVERRIDES[("objective", "svq")] = {"tagger": TINY_TAGGER, "decoder_dim": D, "decoder_depth": 1, "decoder_heads": 2}
OVERRIDES[("objective", "mvm")] = {"tagger": TINY_TAGGER}
#: objectives that predict at the fusion's token positions need a fusion that keeps them
NEEDS_MERGED_FUSION = {"mlm", "mvm"}


def _kwargs(kind: str, name: str) -> dict:
    cls = REGISTRIES[kind].get(name)
    params = inspect.signature(cls.__init__).parameters
    kw = {k: v for k, v in GENERIC.items() if k in params}
    kw.update(OVERRIDES.get((kind, name), {}))
    return kw


def _params(kind: str) -> list[str]:
    return REGISTRIES[kind].names()


def video_features(requires_grad: bool = True) -> VideoFeatures:
    tokens = torch.randn(B, T, N, D, requires_grad=requires_grad)
    return VideoFeatures(tokens=tokens, cls=tokens.mean(2))


def text_features() -> TextFeatures:
    tokens = torch.randn(B, L, D, requires_grad=True)
    mask = torch.tensor([[True] * L, [True] * 3 + [False] * (L - 3)])
    return TextFeatures(tokens=tokens, cls=tokens[:, 0], mask=mask, input_ids=torch.ones(B, L, dtype=torch.long))


def _backprop(out: torch.Tensor, *inputs: torch.Tensor, module: torch.nn.Module | None = None) -> None:
    # a random projection: unlike sum() or a squared mean, it is not blind to LayerNorm outputs
    torch.manual_seed(1)
    (out.float() * torch.randn_like(out.float())).sum().backward()
    trainable = [p for p in module.parameters() if p.requires_grad] if module is not None else []
    if trainable:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable), "no gradient reached the part"
    for x in inputs:
        if x.requires_grad:
            assert x.grad is not None, "no gradient reached the input"


#: backbones whose output ignores the pixels by design (question-only baselines)
INPUT_BLIND = {"blind"}


@pytest.mark.parametrize("name", _params("backbone"))
def test_backbone(name):
    part = create("backbone", name, **_kwargs("backbone", name))
    video = torch.rand(B, T, 3, 32, 32)
    out = part(video)
    assert isinstance(out, VideoFeatures)
    assert out.tokens.ndim == 4 and out.tokens.shape[:2] == (B, T) and out.tokens.shape[-1] == part.out_dim
    assert out.cls.shape == (B, T, part.out_dim)
    if any(p.requires_grad for p in part.parameters()):
        _backprop(torch.cat([out.tokens.flatten(), out.cls.flatten()]), module=part)
    if name not in INPUT_BLIND:  # frozen parts have no gradient to check: their output follows the pixels
        other = part(torch.rand(B, T, 3, 32, 32))
        assert not torch.allclose(other.tokens, out.tokens) and not torch.allclose(other.cls, out.cls)


@pytest.mark.parametrize("name", _params("text_encoder"))
def test_text_encoder(name, request):
    kwargs = _kwargs("text_encoder", name)
    if ("text_encoder", name) in NEEDS_TOKENIZER:
        kwargs["tokenizer_path"] = str(request.getfixturevalue("minilm_folder"))
    if ("text_encoder", name) in NEEDS_VOCAB_FILE:
        kwargs["vocab_file"] = str(request.getfixturevalue("minilm_folder") / "vocab.txt")
    part = create("text_encoder", name, **kwargs)
    out = part.encode(["what color is the ball?", "how many?"])
    assert isinstance(out, TextFeatures)
    assert out.tokens.shape[0] == B and out.tokens.shape[-1] == part.out_dim and out.cls.shape == (B, part.out_dim)
    assert out.mask.dtype == torch.bool and out.mask[1].sum() < out.mask[0].sum()  # shorter question, fewer tokens
    assert 0 <= part.mask_token_id < part.vocab_size
    _backprop(torch.cat([out.tokens.flatten(), out.cls.flatten()]), module=part)


@pytest.mark.parametrize("name", _params("sampler"))
def test_sampler(name):
    part = create("sampler", name, **_kwargs("sampler", name))
    video, text = video_features(), text_features()
    out = part(video, text)
    assert isinstance(out, SamplerOutput)
    assert out.video.tokens.shape == (B, K, N, D) and out.video.cls.shape == (B, K, D)
    assert out.weights.shape == (B, K, T) and out.indices.shape == (B, K)
    _backprop(out.video.tokens, video.tokens, module=part)
    other = video_features()  # the selected frames are the input's: other frames, other output
    assert not torch.allclose(part(other, text).video.tokens, out.video.tokens)
    part.eval()
    with torch.no_grad():
        a, b = part(video, text), part(video, text)
    assert torch.equal(a.indices, b.indices)  # evaluation is deterministic


@pytest.mark.parametrize("name", _params("fusion"))
def test_fusion(name):
    part = create("fusion", name, **_kwargs("fusion", name))
    video, text = video_features(), text_features()
    out = part(video, text)
    assert isinstance(out, FusionOutput)
    assert out.pooled.shape == (B, part.out_dim)
    assert out.tokens.shape[0] == B and out.tokens.shape[-1] == part.out_dim
    _backprop(out.pooled, video.tokens, module=part)


@pytest.mark.parametrize("name", _params("head"))
def test_head(name, request):
    kwargs = _kwargs("head", name)
    if ("head", name) in NEEDS_TOKENIZER:
        kwargs["tokenizer_path"] = str(request.getfixturevalue("minilm_folder"))
    part = create("head", name, **kwargs)
    pooled = torch.randn(B, D, requires_grad=True)
    video = video_features()
    fused = FusionOutput(pooled=pooled, tokens=pooled[:, None] * torch.randn(1, 3, 1), extras={"video_features": video})
    targets = ["red", "two cats"] if part.task == "generate" else None
    out = part(fused, text_features()) if targets is None else part(fused, text_features(), targets=targets)
    assert isinstance(out, HeadOutput) and out.logits.shape[0] == B
    # a head that reads no fused value (uses_fusion = False) gets its gradient through the video features
    _backprop(out.logits, pooled if getattr(part, "uses_fusion", True) else video.tokens, module=part)


def _tiny_model(head=None, objectives=None, fusion="cross_attention"):
    from vqa_components.model import VideoQAModel

    return VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=D, channels=(8, 16), grid=2),
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        fusion=create("fusion", fusion, video_dim=D, text_dim=D, dim=D, num_layers=1, num_heads=2),
        head=head or create("head", "answer_classifier", in_dim=D, num_answers=7),
        objectives=objectives,
    )


#: objectives that train a generating head
GENERATING = {"captioning"}


@pytest.mark.parametrize("name", _params("objective"))
def test_objective(name, request):
    kwargs = _kwargs("objective", name)
    if "vocab_size" in inspect.signature(REGISTRIES["objective"].get(name).__init__).parameters:
        kwargs["vocab_size"] = create("text_encoder", "small_transformer", dim=D, num_layers=1).vocab_size
    objective = create("objective", name, **kwargs)
    head = None
    if name in GENERATING:
        vocab = str(request.getfixturevalue("minilm_folder"))
        head = create("head", "text_decoder", in_dim=D, tokenizer_path=vocab, **OVERRIDES[("head", "text_decoder")])
    if not objective.runs_model_forward:  # a first stage with its own encoder (svq): no forward to run
        from vqa_components.model import VideoQAModel

        model = VideoQAModel(text_encoder=create("text_encoder", "small_transformer", dim=D), objectives=[objective])
    else:
        model = _tiny_model(head=head, objectives=[objective],
                            fusion="merged_transformer" if name in NEEDS_MERGED_FUSION else "cross_attention")
    batch = {
        "video": torch.rand(4, 3, 3, 32, 32),
        "question": ["what color is the ball?", "how many flashes?", "which way?", "what shape?"],
        "caption": ["a red ball", "a lamp flashes twice", "a ball moves left", "a blue square appears"],
        "answer_idx": torch.tensor([0, 3, 6, 1]),
        "answer": ["red", "two", "left", "square"],
    }
    torch.manual_seed(0)
    out = model(batch) if model.runs_forward else None
    losses = objective(model, batch, out)
    assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    trained = model.fusion if model.runs_forward else objective
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())


@pytest.mark.parametrize("name", _params("dataset"))
def test_dataset_example_spec_needs_no_files(name, tmp_path):
    cls = REGISTRIES["dataset"].get(name)
    spec = cls.example_spec(num_frames=4, frame_size=32)
    assert spec.video_shapes[0] == (4, 32, 32)
    assert spec.questions
