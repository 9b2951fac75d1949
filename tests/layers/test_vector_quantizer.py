"""VectorQuantizer (E-ViLM eqs. 4, 7): normalised look-up, straight-through gradient, sg terms, usage."""

from __future__ import annotations

import math

import pytest
import torch

from vqa_components.layers.vector_quantizer import VectorQuantizer, code_usage


def _quantizer(codes: list[list[float]], beta: float = 1.0) -> VectorQuantizer:
    vq = VectorQuantizer(len(codes), len(codes[0]), beta=beta)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor(codes))
    return vq


def test_inputs_and_codes_are_l2_normalised_before_the_distance():
    # x = (1, 0.1): unnormalised, code b = (0.5, 0.5) is nearer (0.41 vs 81.01); in direction, a = (10, 0) is
    vq = _quantizer([[10.0, 0.0], [0.5, 0.5]])
    x = torch.tensor([[1.0, 0.1]])
    assert torch.cdist(x, vq.codebook.detach()).argmin().item() == 1
    out = vq(x)
    assert out.codes.tolist() == [0]
    assert vq(100 * x).codes.tolist() == [0] and vq.lookup(x).tolist() == [0]  # only directions matter
    torch.testing.assert_close(out.quantized, torch.tensor([[1.0, 0.0]]))  # the normalised code
    torch.testing.assert_close(out.inputs, x / x.norm())


def test_straight_through_copies_the_gradient_to_the_encoder_output():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 8)
    encoder = torch.nn.Linear(4, 8)
    out = vq(encoder(torch.randn(5, 3, 4)))
    out.inputs.retain_grad()
    upstream = torch.randn_like(out.quantized)
    (out.quantized * upstream).sum().backward()
    torch.testing.assert_close(out.inputs.grad, upstream, rtol=0, atol=0)  # dL/dE(x) = dL/dC_q
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    assert vq.codebook.grad is None  # the codebook learns only from its eq. 7 term


def test_eq7_terms_equal_hand_computation_and_train_only_what_sg_allows():
    torch.manual_seed(1)
    vq = VectorQuantizer(6, 3, beta=0.25)
    z = torch.randn(4, 3, requires_grad=True)
    out = vq(z)
    zn = z.detach() / z.detach().norm(dim=-1, keepdim=True)
    cn = vq.codebook.detach() / vq.codebook.detach().norm(dim=-1, keepdim=True)
    codes = torch.cdist(zn, cn).argmin(-1)
    assert torch.equal(out.codes, codes)
    per_vector = ((zn - cn[codes]) ** 2).sum(-1)  # ||.||² of each vector, then the mean over vectors
    torch.testing.assert_close(out.codebook_loss, per_vector.mean())
    torch.testing.assert_close(out.commitment_loss, per_vector.mean())
    torch.testing.assert_close(vq.loss(out), 1.25 * per_vector.mean())

    out.codebook_loss.backward(retain_graph=True)  # sg[E(x)]: nothing reaches the encoder
    assert z.grad is None
    used = torch.zeros(6, dtype=torch.bool)
    used[codes] = True
    grad = vq.codebook.grad
    assert (grad[used].abs().sum(-1) > 0).all() and (grad[~used] == 0).all()  # only the chosen codes move
    vq.codebook.grad = None
    out.commitment_loss.backward()  # sg[C_q]: nothing reaches the codebook
    assert vq.codebook.grad is None
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_utilisation_and_perplexity_of_a_hand_made_assignment():
    utilisation, perplexity = code_usage(torch.tensor([[0, 0], [1, 3]]), 8)
    assert utilisation.item() == pytest.approx(37.5)  # 3 of 8 codes
    # p = (1/2, 1/4, 0, 1/4, 0...): entropy 1.5 ln 2
    assert perplexity.item() == pytest.approx(2**1.5)
    utilisation, perplexity = code_usage(torch.arange(8).repeat(3), 8)
    assert utilisation.item() == pytest.approx(100.0) and perplexity.item() == pytest.approx(8.0)
    assert code_usage(torch.zeros(10, dtype=torch.long), 8)[1].item() == pytest.approx(1.0)
    # the quantizer reports the usage of its own assignment
    vq = _quantizer([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    out = vq(torch.tensor([[2.0, 0.1], [3.0, -0.1], [0.1, 5.0], [0.2, 1.0]]))
    assert out.codes.tolist() == [0, 0, 1, 1]
    assert out.utilisation.item() == pytest.approx(50.0)
    assert out.perplexity.item() == pytest.approx(2.0)
    assert not out.utilisation.requires_grad and not out.perplexity.requires_grad


def test_distances_and_losses_are_float32_under_autocast():
    torch.manual_seed(2)
    vq = VectorQuantizer(32, 8)
    z = torch.randn(10, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z.bfloat16())
    assert out.quantized.dtype == torch.float32 and out.codebook_loss.dtype == torch.float32
    assert torch.equal(out.codes, vq(z.bfloat16().float()).codes)
    assert math.isfinite(out.perplexity.item())
    # two codes 0.01 rad apart: their dot products with x differ by ~5e-5, below bf16's step near 1
    # (2^-8), so a bf16 matmul ties them and takes the lower index; float32 finds the nearer one
    a = 0.01
    near = _quantizer([[1.0, 0.0], [math.cos(a), math.sin(a)]])
    x = torch.tensor(
        [[math.cos(a), math.sin(a)], [math.cos(2 * a), math.sin(2 * a)], [math.cos(a), -math.sin(a)]]
    )
    assert near(x).codes.tolist() == [1, 1, 0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x @ near.normalized_codebook().T).argmax(-1).tolist() == [0, 0, 0]  # what bf16 would pick
        out = near(x)
        assert out.codes.tolist() == [1, 1, 0] and near.lookup(x).tolist() == [1, 1, 0]
    # x_1 and x_2 are a away from their codes: ||.||² = 4 sin²(a/2) each, x_0 sits on its code
    assert out.codebook_loss.item() == pytest.approx(2 * 4 * math.sin(a / 2) ** 2 / 3, rel=1e-4)


def test_width_mismatch_is_an_error():
    with pytest.raises(ValueError, match="width 5"):
        VectorQuantizer(4, 3)(torch.randn(2, 5))


def test_dead_codes_restart_onto_encoder_outputs_every_n_training_forwards():
    # codes 0, 1 live near the inputs; codes 2, 3 point away from every input and are never chosen
    vq = _quantizer([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    vq.restart_every = 2
    before = vq.codebook.detach().clone()
    z = torch.tensor([[2.0, 0.2], [0.3, 3.0], [1.0, 1.1], [4.0, 0.1]])
    vq(z)  # first forward: counted, no check yet
    assert torch.equal(vq.codebook.detach(), before) and vq.usage.tolist() == [2, 2, 0, 0]
    with torch.no_grad():
        vq(z)  # no gradient: an evaluation forward, not counted
    assert int(vq.forwards) == 1
    vq.eval()
    vq(z)  # eval mode: not counted either
    vq.train()
    assert int(vq.forwards) == 1
    vq(z)  # second training forward: codes 2 and 3 were chosen by no input -> moved onto two inputs
    after = vq.codebook.detach()
    assert torch.equal(after[:2], before[:2])  # live codes keep their place
    inputs = z / z.norm(dim=-1, keepdim=True)
    for row in after[2:]:  # each restarted code is one of the batch's normalised encoder outputs
        assert torch.isclose(inputs, row).all(-1).any()
    assert not torch.equal(after[2], after[3])  # distinct outputs while the batch has enough
    assert vq.usage.sum().item() == 0  # counting starts again
    # the restarted codes are live: the encoder output each was placed on now picks it
    assert vq.lookup(after[2:]).tolist() == [2, 3]
    assert vq(after[2:]).codes.tolist() == [2, 3] and vq.usage.tolist() == [0, 0, 1, 1]


def test_restarts_cure_a_codebook_that_collapsed_and_are_off_by_default():
    torch.manual_seed(3)
    data = 0.5 * torch.randn(512, 4) + torch.tensor([2.0, 0.0, 0.0, 0.0])  # directions in a cone around +x

    def utilisation_after(restart_every: int) -> float:
        torch.manual_seed(4)
        vq = VectorQuantizer(32, 4, restart_every=restart_every)
        with torch.no_grad():  # a collapsed start: every code but one points away from the data
            vq.codebook.copy_(torch.tensor([-1.0, 0.0, 0.0, 0.0]) + 0.1 * torch.randn(32, 4))
            vq.codebook[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        opt = torch.optim.SGD(vq.parameters(), lr=0.5)
        for step in range(40):
            out = vq(data[torch.randperm(512)[:128]])
            opt.zero_grad()
            vq.loss(out).backward()
            opt.step()
        vq.eval()
        return code_usage(vq(data).codes, 32)[0].item()

    assert VectorQuantizer(4, 2).restart_every == 0
    stuck, cured = utilisation_after(0), utilisation_after(10)
    assert stuck == pytest.approx(100 / 32)  # without restarts the one code that won keeps every input
    assert cured >= 75.0
    with pytest.raises(ValueError, match="restart_every"):
        VectorQuantizer(4, 2, restart_every=-1)


def test_the_codebook_gradient_is_the_same_every_run_on_two_threads():
    """Many inputs on few codes (as a young codebook has them): the codebook's gradient adds up each
    code's inputs. Indexing (``codebook[codes]``) added them in a different order from run to run on
    a CPU with 2 threads (index_put_ with accumulate), so two runs of a recipe differed after a few
    steps unless ``--trainer.deterministic`` was set; the look-up adds them in one order now."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the race needs two threads (the test workers run one each)
    try:
        g = torch.Generator().manual_seed(0)
        vq = VectorQuantizer(num_codes=256, dim=16)
        z = torch.randn(4096, 16, generator=g) * 0.1 + vq.codebook.detach()[:8].repeat(512, 1)  # near 8 codes

        def codebook_grad() -> torch.Tensor:
            vq.zero_grad()
            vq(z).codebook_loss.backward()
            return vq.codebook.grad.clone()

        first = codebook_grad()
        assert first.abs().sum() > 0
        for _ in range(20):
            assert torch.equal(codebook_grad(), first)
    finally:
        torch.set_num_threads(threads)
