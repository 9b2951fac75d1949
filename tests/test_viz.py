"""The interpretability figure: chosen frames and per-patch gate values."""

from __future__ import annotations

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
