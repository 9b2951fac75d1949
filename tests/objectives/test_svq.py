"""svq (E-ViLM stage 1): eq. 6 focal loss, the BCE option, word targets, the eq. 7 total, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqa_components import create
from vqa_components.interfaces import ConfigError
from vqa_components.objectives.svq import SemanticVQ, bce_word_loss, focal_word_loss, multi_hot
from vqa_components.registry import OBJECTIVES

TAGGER = {"num_codes": 64, "code_dim": 8, "img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1,
          "num_heads": 2}  # fmt: skip
TINY = {"tagger": TAGGER, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}
CAPTIONS = ["a red ball rolls left", "a lamp flashes twice", "a blue cube", "a dog runs on grass"]


class TextOnly(nn.Module):
    """What svq reads of a model: its text encoder (for the tokenizer and the vocabulary)."""

    def __init__(self) -> None:
        super().__init__()
        self.text_encoder = create("text_encoder", "small_transformer", dim=16, num_layers=1, num_heads=2)


def _setup(**kwargs) -> tuple[TextOnly, SemanticVQ]:
    torch.manual_seed(0)
    model = TextOnly()
    obj = SemanticVQ(**{**TINY, **kwargs})
    obj.attach(model)
    return model, obj


def _batch(b: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randint(0, 256, (b, 2, 3, 32, 32), generator=g, dtype=torch.uint8),
            "caption": CAPTIONS[:b]}  # fmt: skip


def test_registered_as_a_first_stage_that_runs_no_model_forward():
    assert OBJECTIVES.get("svq") is SemanticVQ
    assert SemanticVQ.runs_model_forward is False
    with pytest.raises(ConfigError, match="word_loss 'ce'"):
        SemanticVQ(word_loss="ce", **TINY)


def test_focal_loss_is_minus_eq6_averaged_over_the_vocabulary():
    # p = sigmoid(logits) = (0.5, 0.75, 0.25, 0.9); words 0 and 3 are in the caption
    logits = torch.tensor([[0.0, math.log(3), -math.log(3), math.log(9)]])
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    by_hand = -(math.log(0.5) + 0.75 * math.log(0.25) + 0.25 * math.log(0.75) + math.log(0.9)) / 4
    assert focal_word_loss(logits, y).item() == pytest.approx(by_hand, rel=1e-6)
    # the batch mean of the per-sample losses
    two = torch.cat([logits, torch.zeros(1, 4)])
    second = -(math.log(0.5) * 2 + 0.5 * math.log(0.5) * 2) / 4
    assert focal_word_loss(two, torch.cat([y, y])).item() == pytest.approx((by_hand + second) / 2, rel=1e-6)


def test_bce_option_equals_binary_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(3, 50), (torch.rand(3, 50) < 0.1).float()
    torch.testing.assert_close(bce_word_loss(logits, y), F.binary_cross_entropy(torch.sigmoid(logits), y))
    assert not torch.allclose(bce_word_loss(logits, y), focal_word_loss(logits, y))


def test_multi_hot_marks_the_caption_words_once_and_skips_specials_and_padding():
    ids = torch.tensor([[1, 7, 9, 7, 2, 0], [1, 5, 2, 0, 0, 0]])
    mask = ids != 0
    mask[1, 3] = True  # a real token that is an ignored id still counts for nothing
    target = multi_hot(ids, mask, 12, ignore={0, 1, 2})
    assert target[0].nonzero().flatten().tolist() == [7, 9]  # the repeated 7 counts once
    assert target[1].nonzero().flatten().tolist() == [5]


def test_targets_come_from_the_text_encoder_s_tokenizer():
    model, obj = _setup()
    enc = model.text_encoder
    target = obj.targets(model, CAPTIONS[:2])
    assert target.shape == (2, enc.vocab_size)
    tok = enc.tokenize(CAPTIONS[:2])
    for row, ids, real in zip(target, tok["input_ids"], tok["attention_mask"].bool()):
        not_words = set(enc.special_token_ids) | {enc.pad_token_id, enc.mask_token_id}
        words = {int(i) for i in ids[real]} - not_words
        assert set(row.nonzero().flatten().tolist()) == words and words


def test_word_targets_hold_no_continuation_piece(minilm_folder):
    """A caption word split into WordPiece pieces counts by its first piece; no ``##`` piece is a target."""
    model = TextOnly()
    model.text_encoder = create("text_encoder", "bert", vocab_file=str(minilm_folder / "vocab.txt"), hidden_size=16,
                                num_layers=1, num_heads=2, intermediate_size=32, dim=None)
    obj = SemanticVQ(**TINY)
    obj.attach(model)
    enc = model.text_encoder
    caption = "a glorpish ball rolls leftwards"
    ids = enc.tokenize([caption])["input_ids"][0].tolist()
    pieces = [enc.vocab[i] for i in ids]
    continuations = {i for i, p in zip(ids, pieces) if p.startswith("##")}
    assert continuations  # the made-up word is split
    target = obj.targets(model, [caption])[0]
    assert all(target[i] == 0 for i in continuations)
    firsts = {i for i, p, nxt in zip(ids, pieces, pieces[1:] + [""]) if nxt.startswith("##") and not p.startswith("##")}
    assert firsts and all(target[i] == 1 for i in firsts)


def test_attach_builds_the_word_head_from_the_text_encoder_and_refuses_another_size():
    model, obj = _setup()
    assert obj.tokenizer.word_head.out_features == model.text_encoder.vocab_size
    with pytest.raises(ConfigError, match="vocab_size=100 but the text encoder"):
        SemanticVQ(vocab_size=100, **TINY).attach(model)
    standalone = SemanticVQ(vocab_size=30, **TINY)  # no model: explicit vocabulary
    video, targets = torch.rand(2, 2, 3, 32, 32), torch.zeros(2, 30)
    targets[0, 3] = targets[1, 7] = 1.0
    out = standalone.loss_from_targets(video, targets)
    logits = standalone.tokenizer(video).logits
    assert logits.shape == (2, 30)
    torch.testing.assert_close(out["token_loss"], focal_word_loss(logits, targets).detach())
    total = out["token_loss"] + out["codebook_loss"] + out["commitment_loss"]
    torch.testing.assert_close(out["loss"].detach(), total)


def test_loss_is_eq7_and_logs_its_terms():
    model, obj = _setup(tagger={**TAGGER, "beta": 0.5})
    out = obj(model, _batch())
    assert set(out) == {"loss", "token_loss", "codebook_loss", "commitment_loss", "utilisation", "perplexity",
                        "grad_word", "grad_quantizer"}  # fmt: skip (the norms: a training call outside a Trainer)
    total = out["token_loss"] + out["codebook_loss"] + 0.5 * out["commitment_loss"]
    torch.testing.assert_close(out["loss"].detach(), total)
    # eq. 7's two terms and the usage, by hand from the encoder output and the codebook
    tagger = obj.tokenizer.tagger
    with torch.no_grad():
        z = tagger.encoder(_batch()["video"].float() / 255)
        z = F.normalize(z, dim=-1).flatten(0, -2)  # (b t gh gw, D)
        codebook = F.normalize(tagger.quantizer.codebook, dim=-1)
    codes = torch.cdist(z, codebook).argmin(-1)  # eq. 4 on the l2-normalised vectors
    squared = ((z - codebook[codes]) ** 2).sum(-1).mean()
    torch.testing.assert_close(out["codebook_loss"], squared)
    torch.testing.assert_close(out["commitment_loss"], squared)  # same value, other stop-gradient
    counts = torch.bincount(codes, minlength=64).float()
    p = counts[counts > 0] / counts.sum()
    assert out["utilisation"].item() == pytest.approx(100 * (counts > 0).sum().item() / 64)
    assert out["perplexity"].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)
    # the focal term is what the word head scores, on the tokenizer's targets
    logits = obj.tokenizer(_batch()["video"].float() / 255).logits
    expected = focal_word_loss(logits, obj.targets(model, CAPTIONS))
    torch.testing.assert_close(out["token_loss"], expected.detach())
    model, bce = _setup(word_loss="bce")  # the same seed: the same weights
    expected = bce_word_loss(logits, bce.targets(model, CAPTIONS))
    torch.testing.assert_close(bce(model, _batch())["token_loss"], expected.detach())


def test_the_word_loss_reaches_the_encoder_through_the_straight_through_estimator():
    model, obj = _setup()
    out = obj.tokenizer(torch.rand(2, 2, 3, 32, 32))
    focal_word_loss(out.logits, obj.targets(model, CAPTIONS[:2])).backward()  # no eq. 7 terms
    encoder = obj.tokenizer.tagger.encoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.vit.patch_embed.parameters())
    assert obj.tokenizer.tagger.quantizer.codebook.grad is None


def test_a_short_training_lowers_the_loss():
    model, obj = _setup()
    batch = _batch()
    optimizer = torch.optim.AdamW(obj.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = obj(model, batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0]
    with torch.no_grad():
        p = torch.sigmoid(obj.tokenizer(batch["video"].float() / 255).logits)
    y = obj.targets(model, batch["caption"]).bool()
    assert p[y].mean() > p[~y].mean() + 0.05  # the caption words rise above the rest
    assert all(p.grad is None for p in model.text_encoder.parameters())  # only its tokenizer is used


def test_a_model_with_only_svq_builds_the_word_head_and_trains_the_tokenizer_alone():
    from vqa_components.model import VideoQAModel

    torch.manual_seed(0)
    text = create("text_encoder", "small_transformer", dim=16, num_layers=1, num_heads=2)
    obj = SemanticVQ(**TINY)
    # no backbone, fusion or head
    model = VideoQAModel(text_encoder=text, objectives=[obj], text_field="caption")
    assert obj.tokenizer.word_head.out_features == text.vocab_size  # attached by the model
    model.log = lambda *args, **kwargs: None
    model.train()
    loss = model.training_step(_batch(), 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in obj.tokenizer.parameters())
    assert all(p.grad is None for p in text.parameters())
    keys = set(model.state_dict())
    assert "objectives.svq.tokenizer.tagger.quantizer.codebook" in keys
    assert any(k.startswith("objectives.svq.tokenizer.tagger.encoder.vit.") for k in keys)


def test_the_tagger_block_reaches_the_quantizer_and_unknown_fields_are_named():
    obj = SemanticVQ(**{**TINY, "tagger": {**TAGGER, "restart_every": 5, "beta": 0.25}})
    quantizer = obj.tokenizer.tagger.quantizer
    assert (quantizer.restart_every, quantizer.beta, quantizer.num_codes) == (5, 0.25, 64)
    assert obj.tokenizer.tagger.config.restart_every == 5
    with pytest.raises(ValueError, match="unknown field.*codes"):
        SemanticVQ(**{**TINY, "tagger": {**TAGGER, "codes": 3}})


def test_a_named_vit_starts_from_its_pretrained_weights_and_a_frozen_encoder_is_not_refused_as_random(
    tmp_path, monkeypatch
):
    """``tagger: {model_name, pretrained: true}``: the encoder's ViT is the hub file's, and the encoder
    records ``weights_source``, which the frozen-random check reads."""
    from helpers import TAGGER_TEST_REPO, TAGGER_TEST_VIT, tagger_vit_repository, use_hub_cache
    from safetensors.torch import load_file

    from vqa_components import weights
    from vqa_components.model import VideoQAModel

    saved = load_file(str(tagger_vit_repository(use_hub_cache(monkeypatch, tmp_path / "hub"))))

    def model(pretrained: bool) -> VideoQAModel:
        torch.manual_seed(0)
        block = {"model_name": TAGGER_TEST_VIT, "pretrained": pretrained, "img_size": 32, "num_codes": 64,
                 "code_dim": 8}  # fmt: skip
        return VideoQAModel(
            text_encoder=create("text_encoder", "small_transformer", dim=16, num_layers=1, num_heads=2),
            objectives=[SemanticVQ(**{**TINY, "tagger": block})],
            text_field="caption",
            freeze=["objectives.svq.tokenizer.tagger.encoder"],
        )

    encoder = "objectives.svq.tokenizer.tagger.encoder"
    assert weights.random_frozen_parts(model(False)) == [encoder]
    pretrained = model(True)
    assert weights.random_frozen_parts(pretrained) == []
    source = weights.weights_source(pretrained, encoder + ".vit")  # the encoder's, which holds the ViT
    assert source == f"hf-hub:{TAGGER_TEST_REPO}/model.safetensors"
    vit = pretrained.objectives["svq"].tokenizer.tagger.encoder.vit
    assert torch.equal(vit.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    assert pretrained.objectives["svq"].tokenizer.tagger.grid == (2, 2)  # 32 px frames, patch 16


# ---------------------------------------------------------------- the word term's size and its gradient


def _grad_terms(obj, model, batch):
    """``(word, quantizer)`` terms of L_SVQ computed here from a leaf ``E(X)``, and that leaf."""
    video, targets = batch["video"].float() / 255, obj.targets(model, batch["caption"])
    tokenizer = obj.tokenizer
    z = tokenizer.tagger.encoder(video).detach().requires_grad_(True)
    vq = tokenizer.tagger.quantizer(z)
    logits = tokenizer.word_head(tokenizer.decoder(vq.quantized).mean(1))
    word = obj.word_weight * focal_word_loss(logits, targets, obj.word_reduction)
    return word, vq.codebook_loss + tokenizer.tagger.quantizer.beta * vq.commitment_loss, z


def test_the_sum_over_the_words_is_k_times_their_mean():
    torch.manual_seed(0)
    logits, y = torch.randn(3, 50), (torch.rand(3, 50) < 0.1).float()
    p = torch.sigmoid(logits)
    per_word = -(y * p.log() + (1 - y) * p * (1 - p).log())  # eq. 6's terms, by hand
    torch.testing.assert_close(focal_word_loss(logits, y, "sum"), per_word.sum(1).mean())
    torch.testing.assert_close(focal_word_loss(logits, y, "sum"), 50 * focal_word_loss(logits, y))
    torch.testing.assert_close(bce_word_loss(logits, y, "sum"), 50 * bce_word_loss(logits, y))
    # through the objective: the word term of the loss is K times larger, token_loss (eq. 6) the same
    model, mean = _setup()
    _, summed = _setup(word_reduction="sum")  # the same seed: the same weights
    a, b = mean(model, _batch()), summed(model, _batch())
    k = model.text_encoder.vocab_size
    quantizer = a["codebook_loss"] + a["commitment_loss"]
    torch.testing.assert_close(b["loss"].detach() - quantizer, k * (a["loss"].detach() - quantizer))
    torch.testing.assert_close(b["token_loss"], a["token_loss"])
    with pytest.raises(ConfigError, match="unknown word_reduction 'max'; choose one of mean, sum"):
        SemanticVQ(word_reduction="max", **TINY)


def test_the_weight_scales_the_word_term_s_gradient_only():
    grads = {}
    for weight in (1.0, 3.0):
        model, obj = _setup(word_weight=weight)
        out = obj(model, _batch())
        out["loss"].backward()
        grads[weight] = (out["grad_word"], out["grad_quantizer"], obj.tokenizer.word_head.weight.grad.clone(),
                         obj.tokenizer.tagger.quantizer.codebook.grad.clone())  # fmt: skip
    (word1, quant1, head1, book1), (word3, quant3, head3, book3) = grads[1.0], grads[3.0]
    torch.testing.assert_close(word3, 3 * word1)
    torch.testing.assert_close(quant3, quant1)
    torch.testing.assert_close(head3, 3 * head1)  # the word head learns from the word term alone
    torch.testing.assert_close(book3, book1)  # the codebook from its own term alone
    assert word1 > 0 and quant1 > 0


@pytest.mark.parametrize("options", [{}, {"word_reduction": "sum", "word_weight": 0.5}])
def test_the_logged_gradient_norms_equal_a_hand_computation_and_leave_the_gradients_alone(options):
    model, obj = _setup(tagger={**TAGGER, "beta": 0.5}, **options)
    out = obj(model, _batch())
    word, quantizer, z = _grad_terms(obj, model, _batch())
    (by_autograd,) = torch.autograd.grad(word, z, retain_graph=True)
    torch.testing.assert_close(out["grad_word"], by_autograd.norm())
    (quantizer_by_autograd,) = torch.autograd.grad(quantizer, z)
    # d(L_codebook + beta L_commit)/dz by hand: only L_commit reaches z, through z' = z / ||z||:
    # beta * 2/N * (I - z' z'^T) (z' - c) / ||z||, c the chosen codes, N the positions
    with torch.no_grad():
        flat = z.flatten(0, -2)
        unit = F.normalize(flat, dim=-1)
        codebook = F.normalize(obj.tokenizer.tagger.quantizer.codebook, dim=-1)
        chosen = codebook[(unit @ codebook.T).argmax(-1)]
        diff = unit - chosen
        along = (unit * diff).sum(-1, keepdim=True) * unit
        by_hand = 0.5 * 2 / len(flat) * (diff - along) / flat.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(quantizer_by_autograd, by_hand.view_as(z), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out["grad_quantizer"], by_hand.norm(), rtol=1e-4, atol=1e-7)
    # the norms are measured beside the step: the parameters' gradients are the same without them
    out["loss"].backward()
    with_norms = {n: p.grad.clone() for n, p in obj.named_parameters()}
    model, plain = _setup(tagger={**TAGGER, "beta": 0.5}, log_grad_norms=False, **options)
    out = plain(model, _batch())
    assert "grad_word" not in out
    out["loss"].backward()
    for name, p in plain.named_parameters():
        torch.testing.assert_close(p.grad, with_norms[name], msg=name)


def test_gradient_norms_come_on_the_steps_lightning_logs_and_never_in_evaluation():
    from types import SimpleNamespace

    model, obj = _setup()
    model._trainer = SimpleNamespace(log_every_n_steps=5, global_step=3)
    assert "grad_word" not in obj(model, _batch())
    model._trainer.global_step = 4  # Lightning logs when (step + 1) % log_every_n_steps == 0
    assert {"grad_word", "grad_quantizer"} <= set(obj(model, _batch()))
    with torch.no_grad():
        assert "grad_word" not in obj(model, _batch())
    assert "grad_word" not in obj.eval()(model, _batch())


def test_the_model_logs_the_gradient_norms_under_the_objective_s_name():
    from vqa_components.model import VideoQAModel

    torch.manual_seed(0)
    text = create("text_encoder", "small_transformer", dim=16, num_layers=1, num_heads=2)
    model = VideoQAModel(text_encoder=text, objectives=[SemanticVQ(**TINY)], text_field="caption")
    logged = {}
    model.log = lambda key, value, **kwargs: logged.__setitem__(key, value)
    model.train().training_step(_batch(), 0).backward()
    assert logged["train/svq_grad_word"] > 0 and logged["train/svq_grad_quantizer"] > 0
