"""``vqa_components.profiler``: hand-counted parameters and MACs, fake-tensor profiling, the report."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import D, tiny_model
from torch._subclasses.fake_tensor import FakeTensor

from vqa_components import create
from vqa_components.interfaces import Fusion, FusionOutput, Head, HeadOutput
from vqa_components.model import VideoQAModel
from vqa_components.profiler import ProfileReport, profile_model

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "what color is the ball?"  # CLIP BPE: <start> what color is the ball ? <end>
L = 8  # its token count
T = 4  # frames
N = T * 2 * 2  # video tokens: frames x grid²


def small_model(**kwargs) -> VideoQAModel:
    """``helpers.tiny_model`` with the embedded benchmark's 16 answers; ``kwargs`` replace parts or set arguments."""
    return tiny_model(**{"head": create("head", "answer_classifier", in_dim=D, num_answers=16), **kwargs})


def small_batch() -> dict:
    return {"video": torch.rand(1, T, 3, 32, 32), "question": [QUESTION], "batch_size": 1}


# ------------------------------------------------------------------ hand counts
#
# Parameters: weights and biases written out layer by layer (BatchNorm: weight + bias;
# its running statistics are buffers, not parameters).

LN = 2 * D  # a LayerNorm(D)
MHA = (3 * D * D + 3 * D) + (D * D + D)  # packed q/k/v in-projection + out-projection
MLP = (D * 4 * D + 4 * D) + (4 * D * D + D)  # Linear(D, 4D) -> Linear(4D, D)
BLOCK = LN + MHA + LN + MLP  # TransformerBlock
CROSS_BLOCK = LN + LN + MHA + LN + MLP  # CrossAttentionBlock: norm_q, norm_kv, attn, norm2, mlp

PARAMS = {
    "backbone": (
        3 * 8 * 4 * 4 + 2 * 8  # stem: Conv2d(3, 8, 4, stride 4, no bias) + BN(8)
        + 8 * 16 * 3 * 3 + 2 * 16  # stage 1: Conv2d(8, 16, 3, stride 2, no bias) + BN(16)
        + 3 * 16 + 2 * 16  # temporal conv 1: weight (kernel 3, 16 channels) + BN(16)
        + 16 * 32 * 3 * 3 + 2 * 32  # stage 2: Conv2d(16, 32, 3, stride 2) + BN(32)
        + 3 * 32 + 2 * 32  # temporal conv 2
        + 32 * D * 1 * 1 + D  # proj: Conv2d(32, D, 1) with bias
        + 2 * 2 * D  # learned position per grid cell
    ),
    "text_encoder": (
        49409 * D  # token embedding: CLIP BPE vocabulary 49408 + a mask token
        + BLOCK  # 1 layer
        + LN  # final norm (positions are a fixed sinusoidal buffer)
    ),
    "fusion": (
        D * D + D  # text_proj
        + D * D + D  # video_proj
        + CROSS_BLOCK + BLOCK  # 1 layer of each
        + LN  # final norm
    ),
    "head": (D * 2 * D + 2 * D) + (2 * D * 16 + 16),  # Linear(D, 2D) -> Linear(2D, 16 answers)
}

# MACs of one sample: video (1, 4, 3, 32, 32), L question tokens. Linear (n, a) -> (n, b): n*a*b.
# Conv: output positions x c_out x c_in x kernel area. Attention (SDPA): heads x l_q x l_k x
# (d_head for q@k^T + d_head for attn@v) = l_q * l_k * 2D. Bias additions, norms, softmax,
# GELU, residuals, pooling and embedding look-ups are not MACs the profiler counts.


def block_macs(l: int) -> int:
    """TransformerBlock over l tokens."""
    return l * D * 3 * D + l * l * 2 * D + l * D * D + l * D * 4 * D + l * 4 * D * D


MACS = {
    "backbone": (
        T * (8 * 8) * 8 * (3 * 4 * 4)  # stem: 32x32 -> 8x8, 8 channels, 3x4x4 kernel
        + T * (4 * 4) * 16 * (8 * 3 * 3)  # stage 1: 8x8 -> 4x4
        + 0  # temporal conv 1: shifted element-wise multiply-adds (3*T*16*4*4 = 768 MACs), not counted
        + T * (2 * 2) * 32 * (16 * 3 * 3)  # stage 2: 4x4 -> 2x2
        + 0  # temporal conv 2: likewise (3*T*32*2*2 = 384), not counted
        + T * (2 * 2) * D * 32  # adaptive pool to 2x2 (identity here, not counted) -> 1x1 proj
    ),
    "text_encoder": block_macs(L),
    "fusion": (
        L * D * D  # text_proj
        + N * D * D  # video_proj
        + L * D * D  # cross: q projection of the text
        + N * D * 2 * D  # cross: k and v projections of the video tokens
        + L * N * 2 * D  # cross: attention, L queries x N keys
        + L * D * D  # cross: out projection
        + L * D * 4 * D + L * 4 * D * D  # cross: MLP
        + block_macs(L)  # self-attention block over the text
    ),
    "head": D * 2 * D + 2 * D * 16,
}


@pytest.fixture(scope="module")
def report() -> ProfileReport:
    torch.manual_seed(0)
    return profile_model(small_model(), small_batch())


def test_question_token_count():
    model = small_model()
    assert model.text_encoder.tokenize([QUESTION])["input_ids"].shape == (1, L)


def test_params_match_hand_count(report):
    assert report.params == sum(PARAMS.values())
    assert report.trainable_params == report.params
    for part, n in PARAMS.items():
        assert report.per_part[part]["params"] == n, part
        assert report.per_part[part]["trainable_params"] == n, part
    assert PARAMS["backbone"] == 7680 and PARAMS["fusion"] == 27648  # the arithmetic above, evaluated


def test_macs_match_hand_count(report):
    assert report.method == "fake_tensor"
    assert report.text_tokens == [L]
    for part, n in MACS.items():
        assert report.per_part[part]["macs"] == n, part
        assert report.per_part[part]["gmacs"] == pytest.approx(n / 1e9, rel=1e-12, abs=0)
    assert set(report.per_part) == {"backbone", "text_encoder", "fusion", "head"}  # no "other"
    assert report.macs == sum(MACS.values())
    assert report.gmacs == pytest.approx(sum(MACS.values()) / 1e9, rel=1e-12, abs=0)
    assert MACS["backbone"] == 262144 and MACS["fusion"] == 249856  # the arithmetic above, evaluated
    per_op_macs = {k: round(v * 1e9) for k, v in report.per_op.items()}
    assert per_op_macs["conv"] == MACS["backbone"]
    assert per_op_macs["attention"] == L * L * 2 * D + L * N * 2 * D + L * L * 2 * D


def test_gflops_count_two_flops_per_hand_counted_mac(report):
    assert report.gflops == pytest.approx(2 * sum(MACS.values()) / 1e9, rel=1e-12)


def test_sampler_changes_what_fusion_sees():
    sampler = create("sampler", "uniform", num_frames=2)  # 2 of the 4 frames: 8 video tokens
    rep = profile_model(small_model(sampler=sampler), small_batch())
    assert rep.per_part["sampler"] == {"params": 0, "trainable_params": 0, "macs": 0, "gmacs": 0.0}
    n = 2 * 2 * 2
    fusion = L * D * D + n * D * D + L * D * D + n * D * 2 * D + L * n * 2 * D + L * D * D
    fusion += L * D * 4 * D + L * 4 * D * D + block_macs(L)
    assert rep.per_part["fusion"]["macs"] == fusion
    assert rep.per_part["backbone"]["macs"] == MACS["backbone"]


# ------------------------------------------------------------------ frozen parts


def test_frozen_part_is_not_trainable():
    rep = profile_model(small_model(freeze=["backbone"]), small_batch())
    assert rep.params == sum(PARAMS.values())
    assert rep.trainable_params == rep.params - PARAMS["backbone"] < rep.params
    assert rep.per_part["backbone"]["trainable_params"] == 0
    assert rep.per_part["backbone"]["params"] == PARAMS["backbone"]
    assert rep.per_part["backbone"]["macs"] == MACS["backbone"]  # frozen parts still cost MACs


def test_frozen_parts_listed_by_the_model_count_as_frozen_even_with_requires_grad():
    model = small_model(freeze=["head"])
    model.head.requires_grad_(True)  # e.g. switched back on by hand: the recipe still says frozen
    rep = profile_model(model, small_batch())
    assert rep.trainable_params == rep.params - PARAMS["head"]


# ------------------------------------------------------------------ the report


def test_to_json_is_one_line_with_the_keys(report):
    text = report.to_json()
    assert "\n" not in text
    data = json.loads(text)
    for key in ("params", "trainable_params", "gmacs", "gflops", "per_part", "method"):
        assert key in data
    assert data["params"] == report.params and data["gmacs"] == report.gmacs
    assert data["per_part"]["fusion"]["params"] == PARAMS["fusion"]
    assert data["per_part"]["fusion"]["gmacs"] == report.per_part["fusion"]["gmacs"]


def test_table_is_aligned(report):
    table = report.table()
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("part"))
    assert "params (M)" in lines[header] and "trainable (M)" in lines[header] and "GMACs" in lines[header]
    body = [line for line in lines[header:] if line.split() and line.split()[0] in (*PARAMS, "total", "part")]
    assert len(body) == len(PARAMS) + 2
    assert len({len(line) for line in body}) == 1  # every row as wide as the header
    total = next(line for line in body if line.startswith("total"))
    assert f"{sum(PARAMS.values()) / 1e6:.3f}" in total
    assert "fake_tensor" in table


def test_model_is_left_as_it_was():
    model = small_model(freeze=["backbone"])
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    profile_model(model, small_batch())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert type(after[k]) is torch.Tensor and torch.equal(after[k], v), k
    assert "tokenize" not in vars(model.text_encoder)  # the real-tokenization wrapper is removed


def test_forward_runs_on_fake_tensors_with_real_token_ids():
    model = small_model()
    seen = {}
    model.backbone.register_forward_hook(lambda m, args, out: seen.update(video=args[0], tokens=out.tokens))
    model.text_encoder.register_forward_pre_hook(lambda m, args: seen.update(ids=args[0]))
    rep = profile_model(model, small_batch())
    assert rep.method == "fake_tensor"
    assert isinstance(seen["video"], FakeTensor) and isinstance(seen["tokens"], FakeTensor)
    # tokenization ran for real (outside fake mode): the ids are a plain tensor with real values
    assert not isinstance(seen["ids"], FakeTensor)
    assert seen["ids"].tolist() == model.text_encoder.tokenize([QUESTION])["input_ids"].tolist()


# ------------------------------------------------------------------ streams


class StreamMeanFusion(Fusion):
    """Reads every stream: ``pooled = mean_s Linear(mean over frames of cls_s)`` (S * D * D MACs)."""

    def __init__(self) -> None:
        super().__init__()
        self.out_dim = D
        self.proj = torch.nn.Linear(D, D)

    def forward(self, video, text) -> FusionOutput:
        pooled = torch.stack([self.proj(s.cls.mean(1)) for s in video.streams]).mean(0)
        return FusionOutput(pooled=pooled, tokens=pooled[:, None])


#: The small model's frame_cnn (``small_model``) as a stream spec.
SMALL_CNN = {"name": "frame_cnn", "dim": D, "channels": [8, 16, 32], "grid": 2, "stem_patch": 4}


def frame_cnn_macs(t: int, side: int) -> int:
    """MACs of the small frame_cnn on ``t`` frames of ``side``² pixels (see MACS["backbone"])."""
    return t * (
        (side // 4) ** 2 * 8 * (3 * 4 * 4)  # stem, stride 4
        + (side // 8) ** 2 * 16 * (8 * 3 * 3)  # stage 1, stride 2
        + (side // 16) ** 2 * 32 * (16 * 3 * 3)  # stage 2, stride 2
        + 2 * 2 * D * 32  # 1x1 proj on the 2x2 grid (the adaptive pool is not counted)
    )


def stream_model(**kwargs) -> VideoQAModel:
    backbone = create("backbone", "multi_stream", backbones=[SMALL_CNN, SMALL_CNN])
    return small_model(backbone=backbone, fusion=StreamMeanFusion(), **kwargs)


def stream_batch() -> dict:
    video = (torch.rand(1, T, 3, 32, 32), torch.rand(1, 2, 3, 64, 64))
    return {"video": video, "question": [QUESTION], "batch_size": 1}


def test_multi_stream_backbone_is_reported_per_stream():
    rep = profile_model(stream_model(), stream_batch())
    assert rep.method == "fake_tensor"
    assert list(rep.per_stream) == ["backbone.stream0", "backbone.stream1"]
    s0, s1 = rep.per_stream["backbone.stream0"], rep.per_stream["backbone.stream1"]
    assert s0["part"] == s1["part"] == "frame_cnn"
    assert s0["params"] == s1["params"] == s0["trainable_params"] == PARAMS["backbone"] == 7680
    assert s0["macs"] == frame_cnn_macs(T, 32) == MACS["backbone"]  # the hand count above, once more
    assert s1["macs"] == frame_cnn_macs(2, 64) == 499_712  # 2 frames of 64²: the convs see 4x the pixels
    assert s1["gmacs"] == pytest.approx(s1["macs"] / 1e9, rel=1e-12)
    # the stream rows split the backbone row; per_part and the totals are as without them
    backbone = rep.per_part["backbone"]
    assert backbone["params"] == s0["params"] + s1["params"] and backbone["macs"] == s0["macs"] + s1["macs"]
    assert set(rep.per_part) == {"backbone", "text_encoder", "fusion", "head"}
    assert rep.per_part["fusion"]["macs"] == 2 * D * D
    assert rep.params == sum(p["params"] for p in rep.per_part.values())
    assert rep.macs == sum(p["macs"] for p in rep.per_part.values())
    assert rep.macs == s0["macs"] + s1["macs"] + MACS["text_encoder"] + 2 * D * D + MACS["head"]


def test_stream_rows_in_the_table_and_json():
    rep = profile_model(stream_model(freeze=["backbone"]), stream_batch())
    assert rep.per_stream["backbone.stream1"]["trainable_params"] == 0  # frozen with its part
    lines = rep.table().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("backbone "))
    assert lines[at + 1].startswith("  backbone.stream0 (frame_cnn) ")  # indented under its part
    assert lines[at + 2].startswith("  backbone.stream1 (frame_cnn) ")
    assert lines[at + 3].startswith("text_encoder ")
    assert len({len(line) for line in lines[at - 2 : at + 6] if not line.startswith("-")}) == 1  # aligned
    stream1 = lines[at + 2]
    assert stream1.split()[-1] == f"{rep.per_stream['backbone.stream1']['gmacs']:,.6f}"
    data = json.loads(rep.to_json())
    assert data["per_stream"]["backbone.stream0"] == rep.per_stream["backbone.stream0"]
    assert data["macs"] == sum(p["macs"] for p in data["per_part"].values())


def test_single_stream_backbone_has_no_stream_rows(report):
    assert report.per_stream == {} and json.loads(report.to_json())["per_stream"] == {}
    assert "stream" not in report.table()


# ------------------------------------------------------------------ no real compute


def big_model() -> VideoQAModel:
    """About 56M parameters (mostly the text embedding and transformer layers)."""
    return VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=512, channels=(64, 256, 1024), grid=4),
        text_encoder=create("text_encoder", "small_transformer", dim=512, num_layers=4, num_heads=8),
        fusion=create("fusion", "cross_attention", video_dim=512, text_dim=512, dim=512, num_layers=2, num_heads=8),
        head=create("head", "answer_classifier", in_dim=512, num_answers=1000),
        objectives=[create("objective", "answer_cross_entropy")],
    )


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@pytest.mark.parametrize("model_device", ["cpu", "meta"])
def test_huge_input_profiles_without_real_memory(model_device):
    if model_device == "meta":
        with torch.device("meta"):  # not even the weights are allocated
            model = big_model()
    else:
        model = big_model()
    # 512 frames of 512x512: the input alone would take 1.5 GiB, the stem's output 2 GiB,
    # and the forward ~1.6 TMACs, far beyond this test's budget.
    video = torch.empty(1, 512, 3, 512, 512, device="meta")
    before = _peak_rss_mib()
    rep = profile_model(model, {"video": video, "question": [QUESTION], "batch_size": 1})
    assert _peak_rss_mib() - before < 1024
    assert rep.method == "fake_tensor"
    assert rep.params > 50_000_000
    assert rep.gmacs > 1000 and rep.per_part["backbone"]["gmacs"] > 0
    stem = 512 * (128 * 128) * 64 * (3 * 4 * 4)  # the stem conv alone, exactly
    assert rep.per_part["backbone"]["macs"] > stem


# ------------------------------------------------------------------ fallback


class ValueReadingHead(Head):
    """A head whose Python control flow reads a tensor value (impossible on fake tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(D, 16)

    def forward(self, fused, text) -> HeadOutput:
        pooled = fused.pooled if bool(fused.pooled.abs().sum() >= 0) else -fused.pooled
        return HeadOutput(logits=self.linear(pooled))


def test_fallback_to_a_real_forward_is_reported():
    model = small_model(head=ValueReadingHead())
    rep = profile_model(model, small_batch())
    assert rep.method == "real_forward"
    assert rep.notes and "fake-tensor forward failed" in rep.notes[0]
    assert "real_forward" in rep.table() and "fake-tensor forward failed" in rep.to_json()
    for part in ("backbone", "text_encoder", "fusion"):  # the same counts as the fake forward's
        assert rep.per_part[part]["macs"] == MACS[part], part
    assert rep.per_part["head"]["macs"] == D * 16
    assert rep.per_part["head"]["params"] == D * 16 + 16


def test_no_fallback_with_meta_inputs():
    model = small_model(head=ValueReadingHead())
    batch = {"video": torch.empty(1, T, 3, 32, 32, device="meta"), "question": [QUESTION]}
    with pytest.raises(RuntimeError, match="meta"):
        profile_model(model, batch)


def test_batch_of_several_samples_is_noted():
    batch = {"video": torch.rand(2, T, 3, 32, 32), "question": [QUESTION, QUESTION]}
    rep = profile_model(small_model(), batch)
    assert rep.batch_size == 2
    assert rep.macs == 2 * sum(MACS.values())
    assert any("2 samples" in n for n in rep.notes)


# ------------------------------------------------------------------ CLI


def test_cli_profile_quickstart_prints_json_last():
    res = subprocess.run(
        [sys.executable, "-m", "vqa_components.cli", "profile", "--config", str(ROOT / "recipes" / "quickstart.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    data = json.loads(lines[-1])
    assert data["method"] == "fake_tensor"
    assert set(data["per_part"]) >= {"backbone", "text_encoder", "fusion", "head"}
    assert data["params"] == sum(p["params"] for p in data["per_part"].values())
    assert data["macs"] == sum(p["macs"] for p in data["per_part"].values())
    assert any(line.startswith("total") for line in lines)
