"""multi_stream backbone: one independently weighted backbone per stream, built from registry names."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import run_vqa

from vqa_components import create, weights
from vqa_components.backbones.multi_stream import MultiStreamBackbone
from vqa_components.backbones.x3d import X3D
from vqa_components.cli import main, run_cli
from vqa_components.data.datamodule import collate_videoqa
from vqa_components.data.synthetic import SyntheticVQADataset
from vqa_components.data.video_io import read_video_streams
from vqa_components.interfaces import Backbone, ConfigError, VideoFeatures
from vqa_components.layers.pixels import pixels_to_float
from vqa_components.model import VideoQAModel
from vqa_components.registry import BACKBONES, UnknownPartError

#: A small frame_cnn (fast to run and differentiate).
CNN = {"name": "frame_cnn", "dim": 16, "channels": [8, 16, 16], "grid": 2}
#: Co-tokenization's three streams, shrunk: (frames, side) of each.
STREAMS = [(4, 32), (2, 64), (1, 96)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def three_x3d() -> MultiStreamBackbone:
    torch.manual_seed(0)
    return create(
        "backbone",
        "multi_stream",
        backbones=[{"name": "x3d", "preset": "xs"}, "x3d", {"name": "x3d", "preset": "s"}],
    ).eval()


def clips(b: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(b, t, 3, s, s, generator=g) for t, s in STREAMS)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------ building


def test_registered_and_listed():
    assert BACKBONES.get("multi_stream") is MultiStreamBackbone
    assert "multi_stream" in BACKBONES.names()


def test_builds_each_stream_from_its_spec(three_x3d):
    assert three_x3d.num_streams == 3 and len(three_x3d.backbones) == 3
    assert all(type(b) is X3D for b in three_x3d.backbones)
    assert [b.preset for b in three_x3d.backbones] == ["xs", "xs", "s"]
    assert three_x3d.out_dims == (432, 432, 432) and three_x3d.out_dim == 432
    assert [c["name"] for c in three_x3d.config["backbones"]] == ["x3d", "x3d", "x3d"]


def test_accepts_built_backbones_and_init_args():
    built = create("backbone", "frame_cnn", dim=24, channels=(8, 16, 16), grid=2)
    ms = MultiStreamBackbone(
        backbones=[built, {"name": "frame_cnn", "init_args": {"dim": 16, "grid": 1}}, "blind"]
    )
    assert ms.backbones[0] is built
    assert ms.backbones[1].out_dim == 16 and ms.backbones[1].grid == 1
    assert ms.backbones[2].registry_name == "blind"
    assert ms.out_dims == (24, 16, 128)
    assert ms.out_dim == 24  # widths differ: the first stream's; consumers read out_dims


def test_parameters_are_the_streams_and_nothing_else(three_x3d):
    alone = [X3D(preset="xs"), X3D(preset="xs"), X3D(preset="s")]
    assert n_params(three_x3d) == sum(n_params(m) for m in alone) == 3 * n_params(alone[0])
    assert {k.split(".")[1] for k in three_x3d.state_dict()} == {"0", "1", "2"}
    assert all(k.startswith("backbones.") for k in three_x3d.state_dict())


def test_cacheable_only_if_every_stream_is():
    assert MultiStreamBackbone(backbones=["blind", "blind"]).cacheable
    assert not MultiStreamBackbone(backbones=["blind", CNN]).cacheable


# ------------------------------------------------------------------ forward


def test_each_stream_is_its_backbone_on_its_clip(three_x3d):
    video = clips()
    with torch.no_grad():
        out = three_x3d(video)
        alone = [b(x) for b, x in zip(three_x3d.backbones, video)]
    assert isinstance(out, VideoFeatures) and len(out.streams) == 3
    for s, ((t, side), feats) in enumerate(zip(STREAMS, alone)):
        n = (-(-side // 32)) ** 2  # ceil(side / 32) positions per side
        assert out.streams[s].tokens.shape == (2, t, n, 432)
        assert torch.equal(out.streams[s].tokens, feats.tokens)
        assert torch.equal(out.streams[s].cls, feats.cls)
    assert torch.equal(out.tokens, out.streams[0].tokens) and torch.equal(out.cls, out.streams[0].cls)
    assert out.frame_mask is None and out.extras == {}
    # the streams really differ (different inputs and weights): no stream is a copy of another
    assert not torch.equal(out.streams[0].cls.mean(1), out.streams[1].cls.mean(1))


def test_a_single_stream_may_come_as_a_tensor():
    torch.manual_seed(0)
    ms = MultiStreamBackbone(backbones=[CNN]).eval()
    x = torch.rand(2, 3, 3, 32, 32)
    with torch.no_grad():
        a, b = ms(x), ms((x,))
    assert torch.equal(a.tokens, b.tokens) and len(a.streams) == 1


@pytest.mark.parametrize("count", [1, 2, 4])
def test_wrong_number_of_streams_raises_naming_both_counts(count):
    ms = MultiStreamBackbone(backbones=[CNN, CNN, CNN])
    ran = []
    for b in ms.backbones:
        b.register_forward_hook(lambda *args: ran.append(1))
    video = tuple(torch.rand(1, 2, 3, 32, 32) for _ in range(count))
    with pytest.raises(ConfigError, match=rf"got {count} video stream\(s\) for 3 backbones"):
        ms(video if count > 1 else video[0])
    assert ran == []  # refused before any stream is encoded (no stream silently dropped or left out)


def test_streams_with_different_batch_sizes_raise():
    ms = MultiStreamBackbone(backbones=[CNN, CNN])
    with pytest.raises(ValueError, match=r"different batch sizes \[2, 3\]"):
        ms((torch.rand(2, 2, 3, 32, 32), torch.rand(3, 2, 3, 32, 32)))


# ------------------------------------------------------------------ independent weights


def test_streams_share_no_parameter(three_x3d):
    storages = [{p.data_ptr() for p in b.parameters()} for b in three_x3d.backbones]
    assert all(storages[i].isdisjoint(storages[j]) for i in range(3) for j in range(i + 1, 3))
    # alike specs still get their own random initialisation
    w0, w1 = (b.stem.conv_xy.weight for b in three_x3d.backbones[:2])
    assert w0.shape == w1.shape and not torch.equal(w0, w1)


def test_a_loss_on_one_stream_reaches_only_that_streams_backbone():
    torch.manual_seed(0)
    ms = MultiStreamBackbone(backbones=[{"name": "x3d", "preset": "xs", "dim": 8}] * 2)
    video = clips()[:2]
    out = ms(video)
    out.streams[1].tokens.square().mean().backward()
    zero0 = [
        n for n, p in ms.backbones[0].named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    ]
    assert zero0 == []  # stream 0's backbone gets no gradient at all
    b1 = ms.backbones[1]
    for p in (b1.stem.conv_xy.weight, b1.stages[0][0].branch1.weight, b1.conv_5.weight, b1.proj.weight):
        assert (
            p.grad is not None and p.grad.abs().sum() > 0
        )  # (residual branches start at 0: not every weight)
    # an optimiser step on that loss leaves stream 0 as it was
    before = [p.detach().clone() for p in ms.backbones[0].parameters()]
    after1 = [p.detach().clone() for p in ms.backbones[1].parameters()]
    torch.optim.SGD(ms.parameters(), lr=0.1).step()
    assert all(torch.equal(a, p) for a, p in zip(before, ms.backbones[0].parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(after1, ms.backbones[1].parameters()))


def test_changing_one_streams_weights_changes_only_that_stream():
    torch.manual_seed(0)
    ms = MultiStreamBackbone(backbones=[CNN, CNN]).eval()
    video = (torch.rand(1, 2, 3, 32, 32), torch.rand(1, 2, 3, 32, 32))
    with torch.no_grad():
        before = ms(video)
        ms.backbones[0].proj.weight.add_(1.0)
        after = ms(video)
    assert not torch.equal(before.streams[0].tokens, after.streams[0].tokens)
    assert torch.equal(before.streams[1].tokens, after.streams[1].tokens)


# ------------------------------------------------------------------ errors


def test_unknown_name_names_the_stream_and_suggests():
    with pytest.raises(UnknownPartError) as err:
        MultiStreamBackbone(backbones=["x3d", {"name": "x3dd", "preset": "s"}])
    message = str(err.value)
    assert message.startswith("multi_stream backbones[1]: unknown backbone 'x3dd'. Did you mean 'x3d'")
    assert "\n" not in message


@pytest.mark.parametrize(
    "spec, pattern",
    [
        (
            {"name": "x3d", "presett": "s"},
            r"backbones\[1\] \(x3d\): unknown argument 'presett' \(did you mean 'preset'\?\)",
        ),
        ({"name": "x3d", "preset": "q"}, r"backbones\[1\] \(x3d\): x3d: unknown preset 'q'"),
        (
            {"name": "x3d", "preset": "s", "width_factor": -1.0},
            r"backbones\[1\] \(x3d\): x3d: width_factor must be > 0",
        ),
        ({"preset": "s"}, r"backbones\[1\]: give a backbone by registry name"),
        (3, r"backbones\[1\]: give a backbone by registry name"),
        (torch.nn.Linear(2, 2), r"backbones\[1\]: Linear is not a Backbone"),
        (
            {"name": "multi_stream", "backbones": ["x3d"]},
            r"backbones\[1\]: a stream's backbone cannot itself be multi_stream",
        ),
    ],
)
def test_bad_stream_spec_raises_one_line_naming_the_stream(spec, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        MultiStreamBackbone(backbones=[CNN, spec])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("backbones", [[], "x3d", {"name": "x3d"}, None])
def test_backbones_must_be_a_non_empty_list(backbones):
    with pytest.raises(ConfigError, match="backbones must be a non-empty list"):
        MultiStreamBackbone(backbones=backbones)


def test_the_same_module_twice_is_refused():
    shared = create("backbone", "frame_cnn", dim=16)
    with pytest.raises(ConfigError, match=r"backbones\[0\] and backbones\[1\] are the same module"):
        MultiStreamBackbone(backbones=[shared, shared])


@pytest.mark.parametrize("name", ["x3d", "frame_cnn"])
def test_single_stream_backbones_refuse_several_streams(name):
    backbone = create("backbone", name).eval()
    x = torch.rand(1, 2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone((x,)).tokens, backbone(x).tokens)  # one stream in a tuple is fine
    with pytest.raises(ConfigError, match=rf"backbone {name} reads one video stream, but the batch holds 2"):
        backbone((x, x))


def test_blind_backbone_ignores_the_streams():
    out = create("backbone", "blind", dim=8)((torch.rand(2, 3, 3, 8, 8), torch.rand(2, 1, 3, 16, 16)))
    assert out.tokens.shape == (2, 3, 1, 8) and not out.tokens.any()


# ------------------------------------------------------------------ weights and freezing


class _Tiny(Backbone):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.out_dim = 1


def test_weights_source_needs_every_stream():
    a, b = _Tiny(), _Tiny()
    ms = MultiStreamBackbone(backbones=[a, b, "blind"])  # blind has no parameters: nothing to load
    assert ms.weights_source is None
    a.weights_source = "a.pt"
    assert ms.weights_source is None  # stream 1 still random
    b.weights_source = "b.pt"
    assert ms.weights_source == "stream 0: a.pt; stream 1: b.pt"
    ms.weights_source = "run.ckpt (init_from)"  # what VideoQAModel's init_from sets
    assert ms.weights_source == "run.ckpt (init_from)"


def test_a_frozen_multi_stream_with_a_random_stream_is_reported():
    text = create("text_encoder", "small_transformer", dim=16, num_layers=1, num_heads=2)
    parts = {
        "text_encoder": text,
        "fusion": create("fusion", "la_gate", video_dim=16, text_dim=16),
        "head": create("head", "answer_classifier", in_dim=16, num_answers=4),
        "objectives": [create("objective", "answer_cross_entropy")],
    }
    loaded = create("backbone", "frame_cnn", dim=16)
    loaded.weights_source = "cnn.pt"
    ms = MultiStreamBackbone(backbones=[loaded, CNN])
    model = VideoQAModel(backbone=ms, freeze=["backbone"], **parts)
    assert weights.random_frozen_parts(model) == ["backbone"]
    with pytest.raises(ConfigError, match="frozen part"):
        weights.check_frozen_parts_have_weights(model)
    ms.backbones[1].weights_source = "cnn2.pt"
    assert weights.random_frozen_parts(model) == []


# ------------------------------------------------------------------ data and recipes


def test_synthetic_streams_through_three_x3d(three_x3d, tmp_path):
    """A batch of ``synthetic_vqa`` with three streams: one tuple per sample, each stream at its own
    frame count and size, and the multi-stream backbone runs on it end to end."""
    streams = [{"num_frames": t, "frame_size": s} for t, s in [(8, 16), (4, 32), (2, 64)]]
    ds = SyntheticVQADataset(
        "train",
        root=str(tmp_path),
        num_train=32,
        num_val=16,
        num_test=16,
        clip_frames=32,
        clip_size=32,
        streams=streams,
    )
    sample = ds[0]
    assert isinstance(sample["video"], tuple) and len(sample["video"]) == 3
    assert [tuple(v.shape) for v in sample["video"]] == [(8, 3, 16, 16), (4, 3, 32, 32), (2, 3, 64, 64)]
    assert all(v.dtype == torch.uint8 for v in sample["video"])
    # the native-size stream holds the clip's frames at the uniform positions of its 4 frames
    (native,) = read_video_streams(ds.video_path(0), [(4, None)], dtype=torch.uint8)
    assert torch.equal(sample["video"][1], native)
    batch = collate_videoqa([ds[0], ds[1]])
    assert [tuple(v.shape) for v in batch["video"]] == [
        (2, 8, 3, 16, 16),
        (2, 4, 3, 32, 32),
        (2, 2, 3, 64, 64),
    ]
    with torch.no_grad():
        out = three_x3d(pixels_to_float(batch["video"]))
    assert [tuple(s.tokens.shape) for s in out.streams] == [(2, 8, 1, 432), (2, 4, 1, 432), (2, 2, 4, 432)]
    assert all(torch.isfinite(s.tokens).all() for s in out.streams)


RECIPE = """
seed_everything: 0
trainer: {default_root_dir: RUN, accelerator: cpu, devices: 1}
model:
  backbone:
    name: multi_stream
    backbones:
      - {name: x3d, preset: xs}
      - {name: x3d, preset: xs, dim: 64}
      - x3d
  text_encoder: {name: small_transformer, dim: 32, num_layers: 1}
  fusion: {name: la_gate, video_dim: 432, text_dim: 32}
  head: {name: answer_classifier, in_dim: 432, num_answers: 16}
  objectives: [{name: answer_cross_entropy}]
data:
  dataset: synthetic_vqa
  dataset_args:
    num_train: 32
    num_val: 16
    num_test: 16
    clip_frames: 32
    streams: [{num_frames: 8, frame_size: 32}, {num_frames: 4, frame_size: 64}, {num_frames: 2, frame_size: 64}]
  batch_size: 2
  num_workers: 0
"""


def _recipe(tmp_path, text: str = RECIPE) -> str:
    path = tmp_path / "multi_stream.yaml"
    path.write_text(text.replace("RUN", str(tmp_path / "run")))
    return str(path)


def test_recipe_form_parses_prints_and_reparses(tmp_path):
    code, printed = run_vqa("fit", "--config", _recipe(tmp_path), "--print_config")
    assert code == 0
    backbone = yaml.safe_load(printed)["model"]["backbone"]
    assert backbone["class_path"] == "vqa_components.backbones.multi_stream.MultiStreamBackbone"
    assert backbone["init_args"]["backbones"] == [
        {"name": "x3d", "preset": "xs"},
        {"name": "x3d", "preset": "xs", "dim": 64},
        "x3d",
    ]
    again_path = tmp_path / "printed.yaml"
    again_path.write_text(printed)
    code, again = run_vqa("fit", "--config", str(again_path), "--print_config")
    assert code == 0 and yaml.safe_load(again) == yaml.safe_load(printed)


def test_recipe_builds_one_backbone_per_stream(tmp_path):
    cli = run_cli(["--config", _recipe(tmp_path)], run=False)
    backbone = cli.model.backbone
    assert isinstance(backbone, MultiStreamBackbone)
    assert [type(b) for b in backbone.backbones] == [X3D, X3D, X3D]
    assert backbone.out_dims == (432, 64, 432)
    assert len({id(b) for b in backbone.backbones}) == 3


def test_recipe_with_an_unknown_stream_backbone_is_one_line_exit_2(tmp_path, capsys):
    code = main(
        ["fit", "--config", _recipe(tmp_path, RECIPE.replace("- x3d", "- x3dd")), "--trainer.fast_dev_run=1"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(
        "vqa: error: multi_stream backbones[2]: unknown backbone 'x3dd'. Did you mean 'x3d'"
    )
