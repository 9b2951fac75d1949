"""LA-Gate: the equations of VideoDistill section 3.2 against a hand-computed reference."""

from __future__ import annotations

import pytest
import torch

from vqa_components.layers import CrossAttentionGate, LAGate


def _linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def _layer_norm(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    mean, var = x.mean(), x.var(unbiased=False)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def reference(
    gate: LAGate, v: torch.Tensor, t: torch.Tensor, pre_norm: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. (1)-(3) with the module's weights, one text vector per sample, loops over rows and heads.

    ``pre_norm``: queries and values are computed from ``LayerNorm(v_i)``; the skip adds the raw ``v_i``."""
    b, m, d = v.shape
    h = gate.num_heads
    e = d // h
    out = torch.empty_like(v)
    gates = torch.empty(b, h, m)
    for s in range(b):
        key = _linear(gate.w_k, t[s])
        for i in range(m):
            row = _layer_norm(gate.norm, v[s, i]) if pre_norm else v[s, i]
            query, value = _linear(gate.w_q, row), _linear(gate.w_v, row)
            scaled = []
            for hh in range(h):
                q, k = query[hh * e : (hh + 1) * e], key[hh * e : (hh + 1) * e]
                dist = (q @ k) / (q.norm() * k.norm())
                gates[s, hh, i] = dist
                scaled.append(dist * value[hh * e : (hh + 1) * e])
            out[s, i] = _linear(gate.w_o, torch.cat(scaled)) + v[s, i]
    return out, gates


@pytest.mark.parametrize("heads", [1, 2])
def test_matches_hand_computed_equations(heads):
    torch.manual_seed(0)
    gate = LAGate(8, text_dim=6, num_heads=heads)
    v, t = torch.randn(2, 5, 8), torch.randn(2, 6)
    out, gates = gate(v, t, return_gates=True)
    ref_out, ref_gates = reference(gate, v, t)
    assert gates.shape == (2, heads, 5)
    torch.testing.assert_close(gates, ref_gates, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    assert gates.abs().max() <= 1 + 1e-6  # a cosine


@pytest.mark.parametrize("heads", [1, 2])
def test_pre_norm_path_matches_the_equations_on_normalized_rows(heads):
    """The path every shipped VideoDistill block uses (``build_gate`` sets ``pre_norm=True``)."""
    torch.manual_seed(3)
    gate = LAGate(8, text_dim=6, num_heads=heads, pre_norm=True)
    with torch.no_grad():  # a LayerNorm away from its (1, 0) initialisation
        gate.norm.weight.uniform_(0.5, 1.5)
        gate.norm.bias.normal_(0, 0.3)
    v, t = 3.0 * torch.randn(2, 5, 8) + 1.0, torch.randn(2, 6)
    out, gates = gate(v, t, return_gates=True)
    ref_out, ref_gates = reference(gate, v, t, pre_norm=True)
    torch.testing.assert_close(gates, ref_gates, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    # the normalization matters: without it the same weights give other values
    assert not torch.allclose(out, reference(gate, v, t, pre_norm=False)[0], atol=1e-3)


def test_text_tokens_importance_is_sum_of_per_token_similarities():
    torch.manual_seed(1)
    gate = LAGate(8, text_dim=6, num_heads=2)
    v, t = torch.randn(2, 4, 8), torch.randn(2, 2, 6)  # L = 2 text tokens
    out, gates = gate(v, t, return_gates=True)
    g0 = gate(v, t[:, 0], return_gates=True)[1]
    g1 = gate(v, t[:, 1], return_gates=True)[1]
    torch.testing.assert_close(gates, g0 + g1)
    # the output uses the summed importance: rebuild it from the reference with L = 1 pieces
    value = _linear(gate.w_v, v).view(2, 4, 2, 4)
    expected = _linear(gate.w_o, (value * (g0 + g1).transpose(1, 2)[..., None]).reshape(2, 4, 8)) + v
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_padding_text_tokens_do_not_count():
    torch.manual_seed(2)
    gate = LAGate(8, text_dim=6, num_heads=2)
    v, t = torch.randn(2, 4, 8), torch.randn(2, 3, 6)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out, gates = gate(v, t, mask, return_gates=True)
    torch.testing.assert_close(gates[1], gate(v[1:], t[1:, 0], return_gates=True)[1][0])
    t2 = t.clone()
    t2[1, 1:] = 100.0  # padding content is ignored
    torch.testing.assert_close(gate(v, t2, mask), out)
    assert not torch.allclose(gate(v, t2), out)  # ...but not without the mask


@pytest.mark.parametrize("pre_norm", [False, True])
def test_rows_are_not_mixed(pre_norm):
    torch.manual_seed(3)
    gate = LAGate(8, text_dim=6, num_heads=2, pre_norm=pre_norm)
    v, t = torch.randn(1, 6, 8, requires_grad=True), torch.randn(1, 6)
    out = gate(v, t)
    for i in range(6):
        (grad,) = torch.autograd.grad(out[0, i].sum(), v, retain_graph=True)
        others = torch.ones(6, dtype=torch.bool)
        others[i] = False
        assert grad[0, others].abs().max() == 0
        assert grad[0, i].abs().max() > 0
    v2 = v.detach().clone()
    v2[0, 2] += torch.randn(8)
    changed = (gate(v2, t) - out).abs().amax(-1)[0]
    assert changed[2] > 1e-3 and torch.all(changed[[0, 1, 3, 4, 5]] == 0)


def test_skip_connection_and_text_dependence():
    torch.manual_seed(4)
    with_skip, no_skip = LAGate(8, 6, 2, skip=True), LAGate(8, 6, 2, skip=False)
    no_skip.load_state_dict(with_skip.state_dict())
    v, t = torch.randn(2, 3, 8), torch.randn(2, 6)
    torch.testing.assert_close(with_skip(v, t) - v, no_skip(v, t), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(with_skip(v, t), with_skip(v, torch.randn(2, 6)))


def test_zero_inputs_are_finite_and_bad_heads_rejected():
    gate = LAGate(8, 6, 2)
    torch.nn.init.zeros_(gate.w_q.bias)
    out, gates = gate(torch.zeros(1, 3, 8), torch.zeros(1, 6), return_gates=True)
    assert torch.isfinite(out).all() and torch.isfinite(gates).all()
    with pytest.raises(ValueError, match="divisible"):
        LAGate(10, 6, 4)


def test_cross_attention_gate_reads_real_text_tokens_only():
    torch.manual_seed(5)
    gate = CrossAttentionGate(8, 6, num_heads=2)
    v, t = torch.randn(2, 4, 8), torch.randn(2, 3, 6)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    out, gates = gate(v, t, mask, return_gates=True)
    assert out.shape == v.shape and gates is None
    t2 = t.clone()
    t2[1, 2] = 50.0
    torch.testing.assert_close(gate(v, t2, mask), out)
    t2[0, 0] = 50.0
    assert not torch.allclose(gate(v, t2, mask)[0], out[0])
