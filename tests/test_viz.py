"""The interpretability figures: chosen frames and per-patch gate values; the co-tokenizer's selection maps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqa_components import create
from vqa_components.model import VideoQAModel
from vqa_components.viz import explain, patch_gate_map

D = 16


def test_patch_gate_map_drops_cls_and_averages_heads_and_blocks():
    k, gh, gw = 2, 2, 2
    a = torch.arange(1 + k * gh * gw, dtype=torch.float)
    g1 = torch.stack([a, 3 * a])  # 2 heads that differ, CLS first: head mean 2a
    g2 = 3 * g1  # head mean 6a; block mean (2a + 6a) / 2 = 4a
    m = patch_gate_map([g1, g2], k, (gh, gw))
    assert m.shape == (k, gh, gw)
    assert torch.equal(m.flatten(), 4 * torch.arange(1, 1 + k * gh * gw, dtype=torch.float))
    assert torch.equal(m[1, 0], 4 * torch.tensor([5.0, 6.0]))  # frame-major, row-major patches


@pytest.mark.parametrize("fusion", ["vision_refinement", "la_gate"])
def test_explain_writes_a_png_of_the_selected_frames(tmp_path, fusion):
    kwargs = dict(video_dim=D, text_dim=D, dim=D, num_layers=1, num_heads=2)
    if fusion == "vision_refinement":
        kwargs.update(max_frames=3, max_tokens_per_frame=4)
    model = VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=D, channels=(8, 16), grid=2, temporal_kernel=0),
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        sampler=create("sampler", "gumbel_topk", video_dim=D, text_dim=D, num_frames=3, dim=D, num_layers=1,
                       num_heads=2, allow_repeats=False),
        fusion=create("fusion", fusion, **kwargs),
        head=create("head", "answer_classifier", in_dim=D, num_answers=4),
        objectives=[create("objective", "answer_cross_entropy")],
    )
    model.answer_vocab = ["red", "green", "blue", "yellow"]
    video = torch.randint(0, 256, (2, 8, 3, 32, 32), dtype=torch.uint8)  # what datasets emit
    batch = {"video": video, "question": ["what color?", "which?"], "answer": ["red", "blue"]}
    result = explain(model, batch, tmp_path / "fig.png", index=1)
    assert torch.equal(result["frames"], video[1].float() / 255)  # drawn as the model sees them, not clipped
    png = (tmp_path / "fig.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    ref = model.eval()(batch)  # what the figure must show for sample 1
    assert result["selected"] == ref.sampled.indices[1].tolist()
    assert len(set(result["selected"])) == 3
    assert result["prediction"] == model.answer_vocab[int(ref.logits[1].argmax())] and result["answer"] == "blue"
    gates = ref.fused.extras["gates"]  # la_gate: (b, heads, k*n); vision_refinement: CLS first
    torch.testing.assert_close(result["gates"], patch_gate_map([g[1] for g in gates], 3, (2, 2)))
    assert result["selected"] != ref.sampled.indices[0].tolist() or not torch.equal(gates[0][0], gates[0][1])


def co_tokenizer_model(head: str = "text_decoder") -> VideoQAModel:
    """Two streams (8 frames of 16x16 with 2x2 positions, 4 frames of 32x32 with 4x4), 2 iterations, 4 tokens."""
    torch.manual_seed(0)
    t5 = {"d_model": D, "num_layers": 1, "num_heads": 2, "d_kv": 8, "d_ff": 32, "dropout_rate": 0.0}
    if head == "text_decoder":
        head_part = create("head", "text_decoder", in_dim=D, config=t5, tokenizer_path="clip_bpe", max_answer_tokens=3)
    else:
        head_part = create("head", "answer_classifier", in_dim=D, num_answers=4)
    return VideoQAModel(
        backbone=create("backbone", "multi_stream", backbones=[
            {"name": "frame_cnn", "dim": D, "channels": [8, 16], "grid": 2},
            {"name": "frame_cnn", "dim": D, "channels": [8, 16], "grid": 4},
        ]),
        text_encoder=create("text_encoder", "t5", config=t5, tokenizer_path="clip_bpe", max_length=12),
        fusion=create("fusion", "co_tokenizer", video_dim=[D, D], text_dim=D, dim=D, num_tokens=4, num_iterations=2,
                      num_heads=2),
        head=head_part,
        objectives=[create("objective", "answer_cross_entropy")],
    )


def two_stream_clip(b: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    fast = torch.randint(0, 256, (1, 8, 3, 16, 16), dtype=torch.uint8, generator=g)
    sharp = torch.randint(0, 256, (1, 4, 3, 32, 32), dtype=torch.uint8, generator=g)
    return fast.expand(b, -1, -1, -1, -1).clone(), sharp.expand(b, -1, -1, -1, -1).clone()


@pytest.mark.parametrize("head", ["text_decoder", "answer_classifier"])
def test_explain_draws_each_streams_selection_maps_per_iteration(tmp_path, head):
    model = co_tokenizer_model(head)
    model.answer_vocab = ["red", "green", "blue", "yellow"]
    video = two_stream_clip(2)
    batch = {"video": video, "question": ["what colour is the ball?", "where does it go?"], "answer": ["red", "left"]}
    result = explain(model, batch, tmp_path / "maps.png", index=1)
    png = (tmp_path / "maps.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    ref = model.eval()(batch)
    selection = ref.fused.extras["selection_maps"]  # 2 iterations x 2 streams of (b, K, t_s, n_s)
    assert len(result["selection"]) == 2 and all(len(row) == 2 for row in result["selection"])
    for i in range(2):
        fast, sharp = result["selection"][i]
        assert fast.shape == (8, 2, 2) and sharp.shape == (4, 4, 4)  # frames x the stream's position grid
        torch.testing.assert_close(fast, selection[i][0][1].sum(0).reshape(8, 2, 2))  # mass of the K tokens
        torch.testing.assert_close(sharp, selection[i][1][1].sum(0).reshape(4, 4, 4))
        assert float(fast.sum() + sharp.sum()) == pytest.approx(4.0, abs=1e-5)  # K maps, each summing to 1
        assert sum(result["stream_share"][i]) == pytest.approx(1.0)
        assert result["stream_share"][i][0] == pytest.approx(float(fast.sum()) / 4, abs=1e-6)
    assert [f.shape for f in result["frames"]] == [(8, 3, 16, 16), (4, 3, 32, 32)]
    assert torch.equal(result["frames"][1], video[1][1].float() / 255)
    expected = model.head.answers(ref)
    expected = expected[1] if isinstance(expected, list) else model.answer_vocab[int(expected[1])]
    assert result["prediction"] == expected and result["answer"] == "left"


@pytest.mark.slow  # 3 figures, 2-4 s; the maps themselves are checked in the fast tier above
def test_two_questions_on_the_same_clip_give_different_maps(tmp_path):
    """The blog's figure: the maps change with the question asked about the same video."""
    model = co_tokenizer_model()
    video = two_stream_clip(1)
    a = explain(model, {"video": video, "question": ["what colour is the ball?"]}, tmp_path / "a.png")
    b = explain(model, {"video": video, "question": ["how many times does the lamp flash?"]}, tmp_path / "b.png")
    assert (tmp_path / "a.png").is_file() and (tmp_path / "b.png").is_file()
    for i in range(2):
        for s in range(2):
            assert a["selection"][i][s].shape == b["selection"][i][s].shape
            assert not torch.allclose(a["selection"][i][s], b["selection"][i][s], atol=1e-6), (i, s)
    same = explain(model, {"video": video, "question": ["what colour is the ball?"]}, tmp_path / "a2.png")
    assert all(torch.equal(x, y) for row_a, row_s in zip(a["selection"], same["selection"]) for x, y in zip(row_a, row_s))


def test_position_grid():
    from vqa_components.viz import position_grid

    assert position_grid(49) == (7, 7) and position_grid(4) == (2, 2) and position_grid(6) == (1, 6)


def test_vqa_explain_on_a_co_tokenizer_recipe(tmp_path, tiny_data, capsys):
    """The command on the tiny 3-stream recipe (no checkpoint: random weights): the PNG and each iteration's shares."""
    from vqa_components.cli import main

    out = tmp_path / "maps.png"
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "cotok" / "tiny" / "three_streams.yaml"
    args = ["explain", "--config", str(recipe), f"--trainer.default_root_dir={tmp_path}",
            *[a for a in tiny_data if "num_frames" not in a], "--split", "val", "--index", "1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    shares = [line for line in printed if line.startswith("iteration ")]
    assert len(shares) == 3 and all(line.count("stream ") == 3 for line in shares)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
