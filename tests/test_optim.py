import pytest
import torch

from vqa_components.optim import LinearWarmupDecay


def _rates(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_linear_warmup_then_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LinearWarmupDecay(opt, total_steps=10, warmup_steps=4)
    rates = _rates(sched, opt, 12)
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4:10] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert rates[10:] == [0.0, 0.0]


def test_fractional_warmup_and_validation():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert LinearWarmupDecay(opt, total_steps=100, warmup_steps=0.1).warmup_steps == 10
    with pytest.raises(ValueError):
        LinearWarmupDecay(opt, total_steps=0)
