"""PyTorchVideo's published X3D weights in our X3D: the key layout, the features, the checkpoint argument.

Where ``pytorchvideo`` is installed (the ``test`` extra), its ``create_x3d`` is built with the model
zoo's settings and random weights, and our features must equal its features block by block. Without
it, the converter is still tested against the published layout, written out below. Nothing is
downloaded.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from einops import rearrange

from vqa_components.backbones.x3d import X3D
from vqa_components.backbones.x3d_pytorchvideo import convert_pytorchvideo_x3d
from vqa_components.interfaces import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

XS_DEPTHS, L_DEPTHS = (3, 5, 11, 7), (5, 10, 25, 15)
#: The model zoo's ``create_x3d`` settings (pytorchvideo/models/hub/x3d.py).
ZOO = {
    "xs": {"input_clip_length": 4, "input_crop_size": 160},
    "s": {"input_clip_length": 13, "input_crop_size": 160},
    "m": {"input_clip_length": 16, "input_crop_size": 224},
    "l": {"input_clip_length": 16, "input_crop_size": 312, "depth_factor": 5.0},
}
#: ``create_x3d``'s XS with the 400-class head, as counted by pytorchvideo 0.1.5 (zoo: 3.79M).
PUBLISHED_XS_KEYS, PUBLISHED_XS_PARAMS = 563, 3_794_274
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def published_layout(depths: tuple[int, ...] = XS_DEPTHS) -> dict[str, tuple[int, ...]]:
    """Key -> shape of PyTorchVideo's X3D state dict (``X3D_XS.pyth``'s ``model_state``; ``L_DEPTHS``
    for ``X3D_L.pyth``), written out: widths 24, 48, 96, 192, inner 2.25x, SE on blocks 0, 2, ...,
    a BN on a shortcut only where the width changes, 400 classes."""

    def bn(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.{leaf}": () if leaf == "num_batches_tracked" else (n,) for leaf in BN}

    out = {"blocks.0.conv.conv_t.weight": (24, 3, 1, 3, 3), "blocks.0.conv.conv_xy.weight": (24, 1, 5, 1, 1)}
    out |= bn("blocks.0.norm", 24)
    dim_in = 24
    for s, (depth, w, inner, se) in enumerate(
        zip(depths, (24, 48, 96, 192), (54, 108, 216, 432), (8, 8, 16, 32)), 1
    ):
        for j in range(depth):
            p, c_in = f"blocks.{s}.res_blocks.{j}.", dim_in if j == 0 else w
            if j == 0:
                out[p + "branch1_conv.weight"] = (w, c_in, 1, 1, 1)
                if c_in != w:
                    out |= bn(p + "branch1_norm", w)
            out[p + "branch2.conv_a.weight"] = (inner, c_in, 1, 1, 1)
            out |= bn(p + "branch2.norm_a", inner)
            out[p + "branch2.conv_b.weight"] = (inner, 1, 3, 3, 3)
            out |= bn(p + "branch2.norm_b.0", inner)
            if j % 2 == 0:
                out[p + "branch2.norm_b.1.block.0.weight"] = (se, inner, 1, 1, 1)
                out[p + "branch2.norm_b.1.block.0.bias"] = (se,)
                out[p + "branch2.norm_b.1.block.2.weight"] = (inner, se, 1, 1, 1)
                out[p + "branch2.norm_b.1.block.2.bias"] = (inner,)
            out[p + "branch2.conv_c.weight"] = (w, inner, 1, 1, 1)
            out |= bn(p + "branch2.norm_c", w)
        dim_in = w
    out["blocks.5.pool.pre_conv.weight"] = (432, 192, 1, 1, 1)
    out |= bn("blocks.5.pool.pre_norm", 432)
    out["blocks.5.pool.post_conv.weight"] = (2048, 432, 1, 1, 1)
    out["blocks.5.proj.weight"], out["blocks.5.proj.bias"] = (400, 2048), (400,)
    return out


#: Where each PyTorchVideo key must land in our X3D (the converter's table, written out again).
OUR_STEM = {
    "blocks.0.conv.conv_t": "stem.conv_xy",
    "blocks.0.conv.conv_xy": "stem.conv_t",
    "blocks.0.norm": "stem.bn",
}
OUR_BLOCK = {
    "branch1_conv": "branch1",
    "branch1_norm": "branch1_bn",
    "branch2.conv_a": "a",
    "branch2.norm_a": "a_bn",
    "branch2.conv_b": "b",
    "branch2.norm_b.0": "b_bn",
    "branch2.norm_b.1.block.0": "se.fc1",
    "branch2.norm_b.1.block.2": "se.fc2",
    "branch2.conv_c": "c",
    "branch2.norm_c": "c_bn",
}
OUR_HEAD = {
    "blocks.5.pool.pre_conv": "conv_5",
    "blocks.5.pool.pre_norm": "conv_5_bn",
    "blocks.5.pool.post_conv": "head.lin_5",
    "blocks.5.proj": "head.projection",
}


def our_name(key: str) -> str:
    module, leaf = key.rsplit(".", 1)
    if m := re.fullmatch(r"blocks\.([1-4])\.res_blocks\.(\d+)\.(.+)", module):
        return f"stages.{int(m[1]) - 1}.{m[2]}.{OUR_BLOCK[m[3]]}.{leaf}"
    return f"{(OUR_STEM | OUR_HEAD)[module]}.{leaf}"


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.1
    return out


def save_pyth(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """A model-zoo style training file: the weights under ``model_state`` beside plain entries."""
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]}
    torch.save(
        {"epoch": 300, "model_state": state, "optimizer_state": optimizer, "cfg": "MODEL:\n  ARCH: x3d"}, path
    )
    return path


# ------------------------------------------------------- without pytorchvideo


def test_the_written_layout_counts_what_pytorchvideo_counts():
    layout = published_layout()
    assert len(layout) == PUBLISHED_XS_KEYS
    params = [k for k in layout if not k.rsplit(".", 1)[1].startswith(("running_", "num_batches"))]
    assert sum(torch.Size(layout[k]).numel() for k in params) == PUBLISHED_XS_PARAMS


def test_converts_the_published_xs_layout_key_by_key():
    state = random_state(published_layout())
    converted = convert_pytorchvideo_x3d(state, keep_head=True)
    assert len(converted) == len(state)
    model = X3D(preset="xs", layout="pytorchvideo", num_classes=400)
    model.load_state_dict(converted, strict=True)  # every key of ours filled, every shape fits
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[our_name(key)], value), key

    headless = convert_pytorchvideo_x3d(state)  # the Kinetics classifier is dropped by default
    assert set(converted) - set(headless) == {
        "head.lin_5.weight",
        "head.projection.weight",
        "head.projection.bias",
    }
    X3D(preset="xs", layout="pytorchvideo").load_state_dict(headless, strict=True)


@pytest.mark.parametrize("form", ["pyth", "hub state dict"])
def test_checkpoint_argument_reads_a_published_file(tmp_path, form):
    state = random_state(published_layout())
    path = tmp_path / ("X3D_XS.pyth" if form == "pyth" else "x3d_xs_hub.pt")
    save_pyth(path, state) if form == "pyth" else torch.save(state, path)

    model = X3D(preset="xs", checkpoint=str(path))  # a recipe's `checkpoint: /path/X3D_XS.pyth`
    assert model.layout == "pytorchvideo" and model.stages[0][0].branch1_bn is None
    assert model.weights_source == str(path) and model.head is None
    assert torch.equal(model.stem.conv_xy.weight, state["blocks.0.conv.conv_t.weight"])
    assert torch.equal(
        model.stages[3][6].c_bn.running_var, state["blocks.4.res_blocks.6.branch2.norm_c.running_var"]
    )

    classifier = X3D(preset="m", num_classes=400, checkpoint=str(path))  # XS, S and M: one network
    assert torch.equal(classifier.head.projection.bias, state["blocks.5.proj.bias"])


@pytest.mark.parametrize("file_depths,preset,fits", [(XS_DEPTHS, "l", "xs / s / m"), (L_DEPTHS, "xs", "l")])
def test_a_wrong_size_variant_is_one_clear_error(tmp_path, file_depths, preset, fits):
    path = save_pyth(tmp_path / "X3D.pyth", random_state(published_layout(file_depths)))
    with pytest.raises(ConfigError) as err:
        X3D(preset=preset, checkpoint=str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert f"stage depths are {list(file_depths)}" in message and f"build it with preset: {fits}" in message
    assert "first differing key: stages.0.3." in message


def test_a_wrong_class_count_names_the_file_and_the_shapes(tmp_path):
    path = save_pyth(tmp_path / "X3D_XS.pyth", random_state(published_layout()))
    with pytest.raises(
        ConfigError, match=re.escape(str(path)) + r".*head\.projection\.weight \(file \(400, 2048\)"
    ):
        X3D(preset="xs", num_classes=10, checkpoint=str(path))


@pytest.mark.parametrize(
    "extra,num_classes",
    [
        ("blocks.0.conv.bias", None),
        ("blocks.2.res_blocks.0.branch2.conv_d.weight", None),
        ("blocks.5.pool.post_norm.weight", 400),
    ],
)
def test_a_key_that_does_not_map_names_the_file_and_the_key(tmp_path, extra, num_classes):
    state = random_state(published_layout()) | {extra: torch.zeros(3)}
    path = save_pyth(tmp_path / "X3D_XS.pyth", state)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*" + re.escape(extra)):
        X3D(preset="xs", num_classes=num_classes, checkpoint=str(path))


def test_a_slowfast_layout_model_says_which_layout_the_file_needs(tmp_path):
    path = save_pyth(tmp_path / "X3D_XS.pyth", random_state(published_layout()))
    with pytest.raises(
        ConfigError, match=r"missing keys.*stages\.0\.0\.branch1_bn.*build it with layout: pytorchvideo"
    ):
        X3D(preset="xs", layout="slowfast", checkpoint=str(path))


class _Trap:
    """Unpickling this would create ``marker``: a file that runs code when it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_file_that_would_run_code_is_refused_unread(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "X3D_XS.pyth"
    torch.save({"model_state": random_state(published_layout()), "cfg": _Trap(marker)}, path)
    with pytest.raises(ConfigError, match=r"weights-only"):
        X3D(preset="xs", checkpoint=str(path))
    assert not marker.exists()


def test_pytorchvideo_layout_drops_only_that_shortcut_bn(tmp_path):
    with pytest.raises(ValueError, match=r"unknown layout 'ptv'.*'slowfast', 'pytorchvideo'"):
        X3D(preset="xs", layout="ptv")
    model = X3D(preset="xs", layout="pytorchvideo", num_classes=400)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_XS_PARAMS  # SlowFast's layout: +48
    projections = [block for stage in model.stages for block in stage if block.branch1 is not None]
    assert [block.branch1_bn is None for block in projections] == [True, False, False, False]
    assert model.config["layout"] == "pytorchvideo" and X3D(preset="xs").layout == "slowfast"

    path = tmp_path / "ours.pt"  # our own state dict of that layout: the layout is read from it
    torch.save(model.state_dict(), path)
    assert X3D(preset="xs", checkpoint=str(path)).layout == "pytorchvideo"


# ---------------------------------------------------------- with pytorchvideo


@pytest.fixture(scope="module")
def create_x3d():
    with warnings.catch_warnings():  # pytorchvideo 0.1.5 on today's torch: torch.jit.script's FutureWarning
        warnings.simplefilter("ignore")
        x3d = pytest.importorskip("pytorchvideo.models.x3d", exc_type=ImportError)  # absent or broken
    return x3d.create_x3d


def pytorchvideo_model(create_x3d, seed: int = 0, **settings) -> torch.nn.Module:
    """``create_x3d(**settings)`` with random convs (its init) and random BN weights and statistics
    (its init zeroes every block's last BN, which would hide the residual branches)."""
    torch.manual_seed(seed)
    model = create_x3d(**settings)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        model.blocks[-1].proj.weight.normal_(0, 0.05)
    return model.eval()


def pixels(video: torch.Tensor) -> torch.Tensor:
    """Our input (b, t, 3, h, w) in [0, 1] as PyTorchVideo's models take it (normalised, b c t h w)."""
    return rearrange((video - 0.45) / 0.225, "b t c h w -> b c t h w")


def conv5(reference: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The head's ``ProjectedPool`` up to its pooling: X3D's conv5, the end of our backbone."""
    pool = reference.blocks[-1].pool
    return pool.pre_act(pool.pre_norm(pool.pre_conv(x)))


def features(reference: torch.nn.Module, video: torch.Tensor) -> torch.Tensor:
    """PyTorchVideo's conv5 features of our input ``video``: stem, stages, conv5."""
    x = pixels(video)
    for block in reference.blocks[:-1]:
        x = block(x)
    return conv5(reference, x)


def test_the_written_layout_is_pytorchvideos(create_x3d):
    for depths, settings in ((XS_DEPTHS, ZOO["xs"]), (L_DEPTHS, ZOO["l"])):
        reference = create_x3d(**settings).state_dict()
        assert {k: tuple(v.shape) for k, v in reference.items()} == published_layout(depths)


@pytest.mark.parametrize("preset", ["xs", "s", "m", "l"])
def test_features_equal_pytorchvideos_block_by_block(create_x3d, preset):
    reference = pytorchvideo_model(create_x3d, **ZOO[preset])
    ours = X3D(preset=preset, layout="pytorchvideo", num_classes=400)
    ours.load_state_dict(convert_pytorchvideo_x3d(reference.state_dict(), keep_head=True), strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    ours.eval()

    video = torch.rand(2, 3, 3, 32, 64)  # tiny: X3D takes any size; h != w catches a transposed kernel
    with torch.no_grad():
        x, y = reference.blocks[0](pixels(video)), ours.stem(pixels(video))
        torch.testing.assert_close(y, x, msg="stem")
        for s, stage in enumerate(ours.stages):
            x, y = reference.blocks[s + 1](x), stage(y)
            torch.testing.assert_close(y, x, msg=f"stage {s + 1}")
        expected = conv5(reference, x)
        torch.testing.assert_close(ours.feature_map(video), expected, msg="conv5")
        tokens = ours(video).tokens
    torch.testing.assert_close(tokens, rearrange(expected, "b d t h w -> b t (h w) d"))


def test_classifier_equals_pytorchvideos_at_its_input_size(create_x3d):
    reference = pytorchvideo_model(create_x3d, input_clip_length=3, input_crop_size=64)  # head pools 3x2x2
    ours = X3D(preset="xs", layout="pytorchvideo", num_classes=400)
    ours.load_state_dict(convert_pytorchvideo_x3d(reference.state_dict(), keep_head=True))
    video = torch.rand(2, 3, 3, 64, 64)
    with torch.no_grad():
        probabilities = reference(pixels(video))  # PyTorchVideo's head ends in a softmax
        torch.testing.assert_close(ours.eval().classify(video).softmax(-1), probabilities)


def test_training_mode_matches_too(create_x3d, monkeypatch):
    """Batch statistics instead of running ones: the same network computes the same (with Swish
    computed as PyTorchVideo computes it, x * sigmoid(x); F.silu rounds differently in the last bit,
    which batch norm over a tiny batch amplifies). The extra BN of SlowFast's layout would not."""
    monkeypatch.setattr(torch.nn.functional, "silu", lambda y: y * torch.sigmoid(y))
    reference = pytorchvideo_model(create_x3d, **ZOO["xs"]).train()
    ours = X3D(preset="xs", layout="pytorchvideo").train()
    ours.load_state_dict(convert_pytorchvideo_x3d(reference.state_dict()))
    video = torch.rand(2, 4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.feature_map(video), features(reference, video))
    after = convert_pytorchvideo_x3d(reference.state_dict())  # the same running statistics updated
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, after[key], msg=key)


def test_a_pyth_file_through_the_checkpoint_argument(create_x3d, tmp_path):
    reference = pytorchvideo_model(create_x3d, **ZOO["xs"])
    path = save_pyth(tmp_path / "X3D_XS.pyth", reference.state_dict())
    ours = X3D(preset="xs", checkpoint=str(path)).eval()
    assert ours.layout == "pytorchvideo" and ours.weights_source == str(path)
    video = torch.rand(1, 4, 3, 64, 64)
    with torch.no_grad():
        expected = rearrange(features(reference, video), "b d t h w -> b t (h w) d")
        torch.testing.assert_close(ours(video).tokens, expected)
