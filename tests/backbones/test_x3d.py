"""X3D backbone: architecture facts of the paper's code, block values, shapes, weights, errors (CPU, tiny inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqa_components import create
from vqa_components.backbones.x3d import X3D, X3DBlock
from vqa_components.interfaces import ConfigError, VideoFeatures
from vqa_components.registry import BACKBONES

#: Parameter counts with the 400-class Kinetics head, in millions, as published.
PUBLISHED = {
    "pytorchvideo model zoo": {"xs": 3.79, "s": 3.79, "m": 3.79, "l": 6.15},
    "SlowFast model zoo": {"xs": 3.8, "s": 3.8, "m": 3.8, "l": 6.2},
    "X3D paper": {"xs": 3.8, "s": 3.8, "m": 3.8, "l": 6.1},
    "task brief (BN affine not counted)": {"xs": 3.76, "s": 3.76, "m": 3.76, "l": 6.08},
}
#: Our exact counts (docs/parts/x3d.md): any change to the architecture changes them.
EXACT = {"xs": 3_794_322, "s": 3_794_322, "m": 3_794_322, "l": 6_153_432}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def xs() -> X3D:
    torch.manual_seed(0)
    return X3D(preset="xs")


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registered():
    assert BACKBONES.get("x3d") is X3D
    assert isinstance(create("backbone", "x3d", preset="xs", dim=8), X3D)


@pytest.mark.parametrize("preset", ["xs", "s", "m", "l"])
def test_parameter_count_matches_published(preset):
    model = X3D(preset=preset, num_classes=400)
    count = n_params(model)
    print(f"x3d {preset}: {count:,} parameters with the 400-class head")
    assert count == EXACT[preset]
    for source, figures in PUBLISHED.items():
        published = figures[preset] * 1e6
        assert abs(count - published) / published < 0.02, f"{preset}: {count} vs {source} {published:.0f}"


def test_depths_and_widths_follow_the_factors():
    xs, large = X3D(preset="xs"), X3D(preset="l")
    assert xs.depths == [3, 5, 11, 7] and large.depths == [5, 10, 25, 15]
    for model in (xs, large):
        assert model.widths == [24, 48, 96, 192]
        assert model.stem.conv_xy.out_channels == 24
        assert [stage[0].a.out_channels for stage in model.stages] == [54, 108, 216, 432]  # 2.25x
        assert model.conv_5.out_channels == model.out_dim == 432
    assert X3D(preset="s").depths == X3D(preset="m").depths == xs.depths  # one network, three inputs
    assert X3D(preset="xs", width_factor=1.0, depth_factor=1.0).depths == [1, 2, 5, 3]


def test_stem_and_strides(xs):
    conv_xy, conv_t = xs.stem.conv_xy, xs.stem.conv_t
    assert conv_xy.kernel_size == (1, 3, 3) and conv_xy.stride == (1, 2, 2)
    assert conv_t.kernel_size == (5, 1, 1) and conv_t.groups == conv_t.in_channels == 24
    for stage in xs.stages:
        for j, block in enumerate(stage):
            assert block.b.groups == block.b.in_channels  # depthwise
            assert block.b.kernel_size == (3, 3, 3)
            assert block.b.stride == ((1, 2, 2) if j == 0 else (1, 1, 1))
            assert (block.branch1 is not None) == (j == 0)


@pytest.mark.parametrize("preset", ["xs", "l"])
def test_se_on_every_other_block_starting_with_the_first(preset):
    model = X3D(preset=preset)
    for stage in model.stages:
        assert [b.se is not None for b in stage] == [j % 2 == 0 for j in range(len(stage))]
    # ratio 1/16 of the inner width, rounded to a multiple of 8 (never below 8, never < 90%)
    assert [stage[0].se.fc1.out_channels for stage in model.stages] == [8, 8, 16, 32]


def test_output_shapes(xs):
    video = torch.rand(2, 5, 3, 64, 96)  # t = 5: no temporal stride; 64x96 / 32 -> 2x3 positions
    with torch.no_grad():
        out = xs(video)
    assert isinstance(out, VideoFeatures)
    assert out.tokens.shape == (2, 5, 6, 432) and out.cls.shape == (2, 5, 432)
    assert out.frame_mask is None
    torch.testing.assert_close(out.cls, out.tokens.mean(2))
    projected = X3D(preset="xs", dim=16)
    assert projected.out_dim == 16
    with torch.no_grad():
        assert projected(video).tokens.shape == (2, 5, 6, 16)


def _bn_eval(x, bn):
    shape = (1, -1, 1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(
        bn.running_var.view(shape) + bn.eps
    ) * bn.weight.view(shape) + bn.bias.view(shape)


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.1)
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)


@pytest.mark.parametrize("stride,se,dim_in", [(2, True, 8), (1, False, 16)])
def test_block_equals_functional_composition(stride, se, dim_in):
    torch.manual_seed(0)
    block = X3DBlock(dim_in=dim_in, dim_inner=36, dim_out=16, stride=stride, se_ratio=1 / 16 if se else 0.0)
    _randomise(block)
    block.eval()
    x = torch.randn(2, dim_in, 3, 6, 6)

    y = F.relu(_bn_eval(F.conv3d(x, block.a.weight), block.a_bn))
    y = _bn_eval(F.conv3d(y, block.b.weight, stride=(1, stride, stride), padding=1, groups=36), block.b_bn)
    if se:
        s = y.mean(dim=(2, 3, 4), keepdim=True)
        s = F.relu(F.conv3d(s, block.se.fc1.weight, block.se.fc1.bias))
        y = y * torch.sigmoid(F.conv3d(s, block.se.fc2.weight, block.se.fc2.bias))
    else:
        assert block.se is None
    y = y * torch.sigmoid(y)  # Swish
    y = _bn_eval(F.conv3d(y, block.c.weight), block.c_bn)
    if block.branch1 is not None:
        shortcut = _bn_eval(F.conv3d(x, block.branch1.weight, stride=(1, stride, stride)), block.branch1_bn)
    else:
        assert dim_in == 16 and stride == 1
        shortcut = x
    expected = F.relu(shortcut + y)

    with torch.no_grad():
        got = block(x)
    assert got.shape == (2, 16, 3, 6 // stride, 6 // stride)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_stem(xs):
    xs.zero_grad()
    out = xs(torch.rand(1, 2, 3, 64, 64))
    (out.tokens * torch.randn_like(out.tokens)).sum().backward()
    grad = xs.stem.conv_xy.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    xs.zero_grad()


def test_keyword_only():
    with pytest.raises(TypeError):
        X3D("xs")  # type: ignore[misc]


def test_bad_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'xxl'.*'xs', 's', 'm', 'l'"):
        X3D(preset="xxl")


def test_classification_head_only_with_num_classes(xs):
    assert xs.head is None
    with pytest.raises(RuntimeError, match="num_classes"):
        xs.classify(torch.rand(1, 2, 3, 32, 32))
    model = X3D(preset="xs", num_classes=5).eval()
    assert model.head.lin_5.out_channels == 2048 and model.head.lin_5.bias is None
    with torch.no_grad():
        assert model.classify(torch.rand(2, 2, 3, 32, 32)).shape == (2, 5)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    src = X3D(preset="xs", dim=8, num_classes=3)
    _randomise(src)  # weights and BN statistics unlike the fresh init
    path = tmp_path / "x3d.pt"
    torch.save(src.state_dict(), path)

    loaded = X3D(preset="xs", dim=8, num_classes=3, checkpoint=str(path))
    assert loaded.weights_source == str(path)
    for key, value in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    video = torch.rand(1, 2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(video).tokens, src.eval()(video).tokens)

    headless = X3D(preset="xs", dim=8, checkpoint=str(path))  # the classifier's head is ignored
    assert torch.equal(headless.conv_5.weight, src.conv_5.weight)
    with pytest.raises(ConfigError, match="does not fit x3d"):
        X3D(preset="l", dim=8, checkpoint=str(path))
