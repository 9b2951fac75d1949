"""Mixed precision: fused optimizers follow the precision, clipping under bf16 clips the true
gradients, and sensitive steps stay float32 under autocast. The recipes' bf16 fits (one per paper
family in the fast tier, the fast set in the slow tier): tests/recipes/test_fits.py."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from vqa_components.heads.retrieval import RetrievalHead
from vqa_components.objectives.contrastive import MatchedPairContrastive
from vqa_components.optim import optimizer_for_precision
from vqa_components.samplers.gumbel_topk import straight_through_select


def _params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(3))]


def test_fused_optimizer_becomes_foreach_only_under_a_gradient_scaler_with_clipping():
    opt = torch.optim.AdamW(_params(), lr=0.003, weight_decay=0.2, fused=True)
    assert optimizer_for_precision(opt, "bf16-mixed", 1.0) is opt  # no scaler: fused kept
    assert optimizer_for_precision(opt, "16-mixed", None) is opt  # no clipping: fused kept
    rebuilt = optimizer_for_precision(opt, "16-mixed", 1.0)
    assert rebuilt is not opt and not rebuilt.defaults["fused"] and rebuilt.defaults["foreach"]
    assert rebuilt.defaults["lr"] == 0.003 and rebuilt.defaults["weight_decay"] == 0.2
    assert [p for g in rebuilt.param_groups for p in g["params"]] == [p for g in opt.param_groups for p in g["params"]]


def test_bf16_clipping_with_a_fused_optimizer_clips_the_true_gradients(tmp_path):
    from vqa_components import create
    from vqa_components.model import VideoQAModel

    model = VideoQAModel(
        backbone=create("backbone", "blind", dim=8),
        text_encoder=create("text_encoder", "small_transformer", dim=8, num_layers=1, num_heads=2),
        fusion=create("fusion", "cross_attention", video_dim=8, text_dim=8, dim=8, num_layers=1, num_heads=2),
        head=create("head", "answer_classifier", in_dim=8, num_answers=4),
        objectives=[create("objective", "answer_cross_entropy")],
    )
    trainer = pl.Trainer(precision="bf16-mixed", accelerator="cpu", logger=False, default_root_dir=tmp_path)
    model.trainer = trainer
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    before = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    model.configure_gradient_clipping(opt, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    after = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert before > 100 and after == pytest.approx(0.5, rel=1e-3)


@pytest.fixture
def bf16():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yield


def test_gumbel_selection_of_bf16_logits_is_done_in_float32(bf16):
    """A bf16 scorer under autocast hands the selection bf16 logits: the noise, temperature and
    softmax must still run in float32 (as on the float32 copy of the logits, outside autocast)."""
    logits = (torch.randn(2, 3, 40) * 3).bfloat16()
    torch.manual_seed(0)
    mask, soft, idx = straight_through_select(logits, tau=0.1, noise=True)
    with torch.autocast("cpu", enabled=False):
        torch.manual_seed(0)
        ref_mask, ref_soft, ref_idx = straight_through_select(logits.float(), tau=0.1, noise=True)
        torch.manual_seed(0)
        in_bf16 = ((logits + -torch.empty_like(logits).exponential_().log()) / 0.1).softmax(-1)
    assert not torch.equal(in_bf16.float(), ref_soft)  # the comparison can tell bf16 arithmetic apart
    assert mask.dtype == soft.dtype == torch.float32
    assert torch.equal(idx, ref_idx) and torch.equal(soft, ref_soft) and torch.equal(mask, ref_mask)


def test_temperature_scaled_similarities_are_float32_under_autocast(bf16):
    torch.manual_seed(0)
    v, t = torch.randn(6, 16), torch.randn(6, 16)
    objective = MatchedPairContrastive(video_dim=16, text_dim=16, temperature=0.07)
    head = RetrievalHead(video_dim=16, text_dim=16, embed_dim=16)
    sim = objective.similarity(v, t)
    logits = head.similarity(v, t)
    with torch.autocast("cpu", enabled=False):
        ref_sim, ref_logits = objective.similarity(v, t), head.similarity(v, t)
        bf16_sim = (torch.nn.functional.normalize(v, dim=-1).bfloat16() @ torch.nn.functional.normalize(t, dim=-1).bfloat16().T)
    assert sim.dtype == logits.dtype == torch.float32
    assert torch.allclose(sim, ref_sim, atol=1e-6) and torch.allclose(logits, ref_logits, atol=1e-6)
    # what autocast would have done: errors a temperature of 0.07 turns into whole logits' worth of change
    assert (bf16_sim.float() - ref_sim).abs().max() / 0.07 > 1e-2
