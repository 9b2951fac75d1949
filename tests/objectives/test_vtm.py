"""The vtm objective: annotation swapping (a derangement), labels, reuse of the backbone output."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from vqa_components import create
from vqa_components.model import VideoQAModel
from vqa_components.objectives._pairs import matched_pairs
from vqa_components.objectives.vtm import VideoTextMatching, swap_annotations
from vqa_components.registry import OBJECTIVES

D = 32
CAPTIONS = ["a red ball rolls", "a lamp flashes twice", "a blue cube turns", "a hand opens a door"]


def _model(head: str = "answer_classifier", objectives=None) -> VideoQAModel:
    head_part = (
        create("head", "vtm_choice", in_dim=D)
        if head == "vtm_choice"
        else create("head", "answer_classifier", in_dim=D, num_answers=5)
    )
    return VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=D, channels=(8, 16, 32), grid=2),
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        fusion=create("fusion", "cross_attention", video_dim=D, text_dim=D, dim=D, num_layers=1, num_heads=2),
        head=head_part,
        objectives=objectives or [create("objective", "vtm", in_dim=D)],
        text_field="caption",
    )


def _batch(n: int = 4) -> dict:
    return {"video": torch.rand(n, 2, 3, 32, 32), "caption": CAPTIONS[:n]}


def test_registered():
    assert OBJECTIVES.get("vtm") is VideoTextMatching


def test_swap_prob_zero_keeps_every_pair_matched():
    new, labels = swap_annotations(CAPTIONS, 0.0)
    assert new == CAPTIONS and labels.tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("seed", range(20))
def test_swap_prob_one_is_a_derangement(seed):
    g = torch.Generator().manual_seed(seed)
    new, labels = swap_annotations(CAPTIONS, 1.0, generator=g)
    assert labels.tolist() == [0, 0, 0, 0]
    assert all(a != o for a, o in zip(new, CAPTIONS))  # nobody keeps its own caption
    assert Counter(new) == Counter(CAPTIONS)  # the captions are exchanged, none invented or lost


def test_swap_rate_and_labels_follow_the_texts():
    g = torch.Generator().manual_seed(0)
    texts = [f"caption {i}" for i in range(8)]
    unmatched = 0
    for _ in range(500):
        new, labels = swap_annotations(texts, 0.5, generator=g)
        assert all(t in texts for t in new)
        assert labels.tolist() == [int(a == o) for a, o in zip(new, texts)]
        unmatched += int((labels == 0).sum())
    assert unmatched / (500 * 8) == pytest.approx(0.5, abs=0.03)


def test_duplicate_texts_swapped_are_labelled_matched():
    texts = ["same", "same", "other"]
    for seed in range(10):
        new, labels = swap_annotations(texts, 1.0, generator=torch.Generator().manual_seed(seed))
        assert labels.tolist() == [int(a == o) for a, o in zip(new, texts)]
        assert labels[2] == 0  # "other" always gets a "same"
    assert swap_annotations(["only one"], 1.0)[1].tolist() == [1]  # nothing to swap with


def test_loss_without_swaps_is_ce_on_the_default_forward():
    torch.manual_seed(0)
    obj = VideoTextMatching(in_dim=D, swap_prob=0.0)
    model = _model(objectives=[obj]).eval()
    batch = _batch()
    out = model(batch)
    res = obj(model, batch, out)
    logits = obj.proj(out.fused.pooled)
    torch.testing.assert_close(res["loss"], F.cross_entropy(logits, torch.ones(4, dtype=torch.long)))
    assert res["acc"] == (logits.argmax(-1) == 1).float().mean()


def test_all_swapped_pairs_rerun_fusion_on_the_same_backbone_output_with_label_zero():
    torch.manual_seed(0)
    obj = VideoTextMatching(in_dim=D, swap_prob=1.0)
    model = _model(objectives=[obj]).eval()
    batch = _batch(2)
    out = model(batch)
    calls, seen = [], []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    obj.proj.register_forward_hook(lambda mod, inp, o: seen.append(inp[0].detach()))
    res = obj(model, batch, out)
    assert calls == []  # the backbone did not run again
    with torch.no_grad():
        swapped = model.forward_features(out.video, model.encode_text(CAPTIONS[:2][::-1]))
    # the classifier saw v_cls* recomputed with the other pair's caption, not the default forward's
    torch.testing.assert_close(seen[0], swapped.fused.pooled)
    assert not torch.allclose(seen[0], out.fused.pooled, atol=1e-4)
    logits = obj.proj(swapped.fused.pooled)
    torch.testing.assert_close(res["loss"], F.cross_entropy(logits, torch.zeros(2, dtype=torch.long)))


def test_gradients_and_head_sharing():
    torch.manual_seed(0)
    obj = VideoTextMatching(in_dim=D, swap_prob=0.5)
    model = _model(objectives=[obj])
    out = model(_batch())
    assert obj.classifier(model) is obj.proj  # the model head is not a VTMHead
    obj(model, _batch(), out)["loss"].backward()
    assert obj.proj.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())

    vtm_model = _model(head="vtm_choice", objectives=[VideoTextMatching(in_dim=D)])
    assert vtm_model.objectives[0].classifier(vtm_model) is vtm_model.head.proj
    own = VideoTextMatching(in_dim=D, share_head=False)
    assert own.classifier(vtm_model) is own.proj


def test_matched_pairs_in_the_multiple_choice_forward():
    torch.manual_seed(0)
    model = _model(head="vtm_choice")
    batch = {
        "video": torch.rand(3, 2, 3, 32, 32),
        "question": ["what moves?", "what color?", "how many?"],
        "options": [["a ball", "a lamp"], ["red", "blue"], ["one", "two"]],
        "answer_idx": torch.tensor([1, -1, 0]),
    }
    out = model(batch)
    rows, texts = matched_pairs(model, batch, out)
    assert rows.tolist() == [1, 4] and texts == ["what moves? a lamp", "how many? one"]
    runs = []
    model.fusion.register_forward_hook(lambda module, args, output: runs.append(output.pooled))
    res = VideoTextMatching(in_dim=D, swap_prob=1.0)(model, batch, out)
    # both matched pairs are chosen: they exchange their texts, run again on their own videos, labelled 0
    assert len(runs) == 1
    with torch.no_grad():
        exchanged = model.encode_text(["how many? one", "what moves? a lamp"])
        expected = model.forward_features(out.video.select(torch.tensor([1, 4])), exchanged).fused.pooled
    torch.testing.assert_close(runs[0], expected)
    logits = model.head.proj(runs[0])  # the shared two-class layer of the vtm_choice head
    torch.testing.assert_close(res["loss"], F.cross_entropy(logits, torch.zeros(2, dtype=torch.long)))
    res["loss"].backward()
    assert model.head.proj.weight.grad.abs().sum() > 0
