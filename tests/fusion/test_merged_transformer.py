"""merged_transformer: eq. 2 written out by hand, padding, token types, where h^L and h^V are; E-ViLM's
VTM, multiple-choice and open-ended heads on its CLS."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from vqa_components import create
from vqa_components.fusion.merged_transformer import TEXT, VIDEO, MergedTransformerFusion
from vqa_components.interfaces import ConfigError, TextFeatures, VideoFeatures
from vqa_components.layers.position_table import resize_table
from vqa_components.model import VideoQAModel
from vqa_components.objectives.vtm import VideoTextMatching
from vqa_components.registry import FUSIONS

B, L, DT = 2, 5, 10  # batch, text tokens, text width
T, N, DV = 3, 4, 6  # frames, tokens per frame, video width
D, HEADS = 16, 2
TEXT_MASK = torch.tensor([[True] * L, [True] * 3 + [False] * 2])
FRAME_MASK = torch.tensor([[True, True, False], [True, True, True]])


def text(mask: torch.Tensor = TEXT_MASK, seed: int = 1) -> TextFeatures:
    tokens = torch.randn(B, mask.shape[1], DT, generator=torch.Generator().manual_seed(seed))
    return TextFeatures(tokens=tokens, cls=tokens[:, 0], mask=mask)


def video(frame_mask: torch.Tensor | None = FRAME_MASK, seed: int = 2, t: int = T) -> VideoFeatures:
    tokens = torch.randn(B, t, N, DV, generator=torch.Generator().manual_seed(seed))
    return VideoFeatures(tokens=tokens, cls=tokens.mean(2), frame_mask=frame_mask)


def fusion(**kw) -> MergedTransformerFusion:
    torch.manual_seed(0)
    args = {"dim": D, "num_layers": 2, "num_heads": HEADS} | kw
    return MergedTransformerFusion(DV, DT, **args).eval()


# ------------------------------------------------------- eq. 2 step by step


def layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def attention(h, attn, ignore):
    """Multi-head self-attention from the weights: softmax(q k^T / sqrt(d_h)) v, padding keys at -inf."""
    b, m, d = h.shape
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    q, k, v = (h @ w[i * d : (i + 1) * d].T + bias[i * d : (i + 1) * d] for i in range(3))
    dh = d // HEADS
    q, k, v = (x.reshape(b, m, HEADS, dh).transpose(1, 2) for x in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    scores = scores.masked_fill(ignore[:, None, None, :], float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, m, d)
    return y @ attn.out_proj.weight.T + attn.out_proj.bias


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def by_hand(f: MergedTransformerFusion, v: VideoFeatures, q: TextFeatures):
    """[h_CLS, h_L, h_V] = DEC([e_CLS, e_L + t_L, e_V + t_V]) with pre-norm blocks and a final LayerNorm."""
    b, t, n, _ = v.tokens.shape
    e_l = q.tokens @ f.text_proj.weight.T + f.text_proj.bias + f.type_embed[0]
    e_v = v.tokens.reshape(b, t * n, -1) @ f.video_proj.weight.T + f.video_proj.bias + f.type_embed[1]
    for frame in range(t):
        for p in range(n):
            if f.temporal_embed is not None:
                e_v[:, frame * n + p] += f.temporal_embed[frame]
            if f.spatial_embed is not None:
                e_v[:, frame * n + p] += f.spatial_embed[p]
    x = torch.cat([f.cls.expand(b, 1, D), e_l, e_v], 1)
    frames = torch.ones(b, t, dtype=torch.bool) if v.frame_mask is None else v.frame_mask
    real = torch.cat([torch.ones(b, 1, dtype=torch.bool), q.mask, frames.repeat_interleave(n, 1)], 1)
    for blk in f.blocks:
        x = x + attention(layer_norm(x, blk.norm1), blk.attn, ~real)
        lin1, lin2 = blk.mlp[0], blk.mlp[3]
        x = x + gelu(layer_norm(x, blk.norm2) @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias
    return layer_norm(x, f.norm), real


def test_registered_with_the_papers_defaults():
    assert FUSIONS.get("merged_transformer") is MergedTransformerFusion
    f = MergedTransformerFusion(video_dim=DV, text_dim=DT)
    assert f.out_dim == 384 and len(f.blocks) == 4  # "4 transformer blocks with decreased hidden size (384)"
    assert f.blocks[0].attn.num_heads == 6 and f.blocks[0].mlp[0].out_features == 4 * 384
    assert f.temporal_embed.shape == (16, 384) and f.spatial_embed is None


@pytest.mark.parametrize(
    "positions",
    [
        {"frame_positions": False, "grid_positions": False},  # eq. 2 as written
        {"frame_positions": True, "grid_positions": False},  # the default
        {"frame_positions": True, "grid_positions": True},
    ],
)
def test_outputs_equal_eq_2_computed_step_by_step(positions):
    f = fusion(**positions)
    with torch.no_grad():  # non-zero biases and norms, so that a forgotten term shows
        for p in f.parameters():
            p.add_(0.1 * torch.randn_like(p))
    v, q = video(), text()
    out = f(v, q)
    with torch.no_grad():
        expected, real = by_hand(f, v, q)
    torch.testing.assert_close(out.tokens, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, expected[:, 0], atol=1e-5, rtol=1e-5)
    assert torch.equal(out.mask, real)
    assert out.tokens.shape == (B, 1 + L + T * N, D)


def test_padding_text_tokens_change_nothing_at_real_positions():
    f = fusion(grid_positions=True)
    v, q = video(), text()
    out = f(v, q)
    real = out.mask
    # other values at the padding positions
    noisy = text()
    noisy.tokens[1, 3:] = 100.0 * torch.randn(2, DT)
    torch.testing.assert_close(f(v, noisy).tokens[real], out.tokens[real])
    # more padding tokens: every real output is the same, only shifted
    longer = text(torch.cat([TEXT_MASK, torch.zeros(B, 3, dtype=torch.bool)], 1))
    longer.tokens[:, :L] = q.tokens
    wide = f(v, longer)
    torch.testing.assert_close(wide.pooled, out.pooled)
    words, old_words = wide.extras["text_tokens"][:, :L], out.extras["text_tokens"]
    torch.testing.assert_close(words[TEXT_MASK], old_words[TEXT_MASK])
    torch.testing.assert_close(wide.extras["video_tokens"], out.extras["video_tokens"])
    # tokens of padded frames do not count either
    other = video()
    other.tokens[0, 2] = 50.0
    torch.testing.assert_close(f(other, q).tokens[real], out.tokens[real])
    # a real token does count
    moved = text()
    moved.tokens[1, 2] += 1.0
    assert not torch.allclose(f(v, moved).pooled[1], out.pooled[1])


def _block_input(f: MergedTransformerFusion, v: VideoFeatures, q: TextFeatures) -> torch.Tensor:
    seen = {}
    handle = f.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    f(v, q)
    handle.remove()
    return seen["x"]


def test_type_embeddings_are_added_to_their_modality_only():
    f = fusion()
    v, q = video(), text()
    delta = torch.randn(D)
    g = copy.deepcopy(f)
    with torch.no_grad():
        g.type_embed[VIDEO] += delta
    diff = _block_input(g, v, q) - _block_input(f, v, q)
    torch.testing.assert_close(diff[:, 1 + L :], delta.expand(B, T * N, D))  # t^V on every video token
    assert torch.equal(diff[:, : 1 + L], torch.zeros(B, 1 + L, D))  # CLS and text untouched
    assert not torch.allclose(g(v, q).pooled, f(v, q).pooled)  # and the decoder's output follows
    # t^V + delta is the same model as the video projection's bias + delta; t^L likewise for text
    h = copy.deepcopy(f)
    with torch.no_grad():
        h.video_proj.bias += delta
    torch.testing.assert_close(g(v, q).tokens, h(v, q).tokens)
    g, h = copy.deepcopy(f), copy.deepcopy(f)
    with torch.no_grad():
        g.type_embed[TEXT] += delta
        h.text_proj.bias += delta
    diff = _block_input(g, v, q) - _block_input(f, v, q)
    torch.testing.assert_close(diff[:, 1 : 1 + L], delta.expand(B, L, D))
    assert torch.equal(diff[:, 0], torch.zeros(B, D))
    assert torch.equal(diff[:, 1 + L :], torch.zeros(B, T * N, D))
    torch.testing.assert_close(g(v, q).tokens, h(v, q).tokens)


def test_text_and_video_tokens_sit_at_their_input_positions():
    f = fusion(num_layers=2)
    v, q = video(frame_mask=None), text()
    out = f(v, q)
    assert out.extras["text_tokens"].shape == (B, L, D) and out.extras["video_tokens"].shape == (B, T * N, D)
    assert torch.equal(out.extras["text_tokens"], out.tokens[:, 1 : 1 + L])
    assert torch.equal(out.extras["video_tokens"], out.tokens[:, 1 + L :])
    assert out.extras["video_features"] is v
    # without blocks every output is LayerNorm of its own input: moving one input moves one output
    flat = fusion(num_layers=0)
    base = flat(v, q)
    frame, p = 2, 1
    moved = video(frame_mask=None)
    moved.tokens[1, frame, p] += 3.0
    changed = (flat(moved, q).extras["video_tokens"] - base.extras["video_tokens"]).abs().sum(-1) > 0
    expected = torch.zeros(B, T * N, dtype=torch.bool)
    expected[1, frame * N + p] = True  # frame-major: token f * n + p
    assert torch.equal(changed, expected)
    word = text()
    word.tokens[0, 3] += 3.0
    changed = (flat(v, word).extras["text_tokens"] - base.extras["text_tokens"]).abs().sum(-1) > 0
    expected = torch.zeros(B, L, dtype=torch.bool)
    expected[0, 3] = True
    assert torch.equal(changed, expected)


def test_frame_positions_stretch_to_more_frames_than_the_table():
    f = fusion(max_frames=2, grid_positions=True, max_tokens_per_frame=3)
    x = _block_input(f, video(frame_mask=None, t=5), text())
    plain = fusion(max_frames=2, frame_positions=False, grid_positions=False)
    y = _block_input(plain, video(frame_mask=None, t=5), text())
    pos = resize_table(f.temporal_embed, 5)[:, None] + resize_table(f.spatial_embed, N)[None]
    torch.testing.assert_close(x[:, 1 + L :] - y[:, 1 + L :], pos.reshape(5 * N, D).expand(B, -1, -1))


def test_several_streams_raise():
    v = video()
    with pytest.raises(ConfigError, match="merged_transformer reads the tokens of one stream"):
        fusion()(v.replace(streams=(v, video(seed=3))), text())


def test_backward_reaches_every_parameter():
    f = fusion(grid_positions=True).train()
    v = video(frame_mask=None)
    v.tokens.requires_grad_(True)
    out = f(v, text())
    torch.manual_seed(1)
    loss = (out.pooled * torch.randn_like(out.pooled)).sum()
    loss = loss + (out.extras["video_tokens"] * torch.randn_like(out.extras["video_tokens"])).sum()
    loss.backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert v.tokens.grad.abs().sum() > 0


# ----------------------------------------------------- E-ViLM heads on h^CLS

DM = 32
CAPTIONS = ["a red ball rolls", "a lamp flashes twice", "a blue cube turns"]


def _model(head, objectives, text_field: str = "question") -> VideoQAModel:
    return VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=DM, channels=(8, 16, 32), grid=2),
        text_encoder=create("text_encoder", "small_transformer", dim=DM, num_layers=1, num_heads=2),
        fusion=create(
            "fusion", "merged_transformer", video_dim=DM, text_dim=DM, dim=DM, num_layers=1, num_heads=2
        ),
        head=head,
        objectives=objectives,
        text_field=text_field,
    )


def test_vtm_reads_h_cls_of_the_merged_decoder():
    torch.manual_seed(0)
    obj = VideoTextMatching(in_dim=DM, swap_prob=0.0)
    model = _model(create("head", "vtm_choice", in_dim=DM), [obj], text_field="caption").eval()
    batch = {"video": torch.rand(3, 2, 3, 32, 32), "caption": CAPTIONS}
    out = model(batch)
    h_cls = out.fused.tokens[:, 0]
    torch.testing.assert_close(out.fused.pooled, h_cls)
    logits = model.head.proj(h_cls)  # shared with the vtm_choice head (share_head=True)
    res = obj(model, batch, out)
    torch.testing.assert_close(res["loss"], F.cross_entropy(logits, torch.ones(3, dtype=torch.long)))
    # swapped pairs run through the merged decoder again, labelled 0
    swapped = VideoTextMatching(in_dim=DM, swap_prob=1.0, share_head=False)
    runs = []
    model.fusion.register_forward_hook(lambda module, args, output: runs.append(output))
    res = swapped(model, batch, out)
    assert len(runs) == 1  # one more pass, for the three swapped pairs together
    pooled = runs[0].pooled  # every pair got another pair's caption: not the matched h^CLS
    assert pooled.shape == (3, DM) and not torch.allclose(pooled, out.fused.pooled, atol=1e-4)
    logits = swapped.proj(pooled)
    torch.testing.assert_close(res["loss"], F.cross_entropy(logits, torch.zeros(3, dtype=torch.long)))
    assert res["acc"].item() == pytest.approx((logits.argmax(-1) == 0).float().mean().item())
    # the label decides the loss: the same logits scored as matched would give another value
    assert not torch.allclose(res["loss"], F.cross_entropy(logits, torch.ones(3, dtype=torch.long)))


def test_vtm_choice_scores_options_by_matching_on_the_merged_decoder():
    torch.manual_seed(0)
    model = _model(
        create("head", "vtm_choice", in_dim=DM),
        [create("objective", "answer_cross_entropy"), create("objective", "vtm", in_dim=DM)],
    )
    batch = {
        "video": torch.rand(2, 2, 3, 32, 32),
        "question": ["what moves?", "what color?"],
        "options": [["a ball", "a lamp", "a cube"], ["red", "blue", "green"]],
        "answer_idx": torch.tensor([2, 0]),
    }
    out = model(batch)
    assert out.logits.shape == (2, 3)
    with torch.no_grad():
        model.eval()
        scores = model(batch).logits
        for i in range(2):
            for j, option in enumerate(batch["options"][i]):
                pair = f"{batch['question'][i]} {option}"
                single = {"video": batch["video"][i : i + 1], "question": [pair]}
                y = model.head.proj(model(single).fused.tokens[:, 0])  # the CLS of the merged decoder
                torch.testing.assert_close(scores[i, j], y[0, 1] - y[0, 0])
        model.train()
    loss = sum(obj.weight * obj(model, batch, out)["loss"] for obj in model.objectives)
    loss.backward()
    assert model.head.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())


def test_open_ended_answer_classifier_reads_h_cls():
    torch.manual_seed(0)
    head = create("head", "answer_classifier", in_dim=DM, num_answers=5)
    model = _model(head, [create("objective", "answer_cross_entropy")]).eval()
    batch = {"video": torch.rand(2, 2, 3, 32, 32), "question": ["what moves?", "what color?"]}
    out = model(batch)
    torch.testing.assert_close(out.logits, model.head.mlp(out.fused.tokens[:, 0]))
