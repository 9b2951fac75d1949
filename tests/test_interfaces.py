"""VideoFeatures row operations: every stream, mask and extra follows the rows; nothing is dropped."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from vqa_components.interfaces import ConfigError, VideoFeatures, require_single_stream

B = 3


def _features(b: int, t: int, n: int, d: int, seed: int, **kw) -> VideoFeatures:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, t, n, d, generator=g)
    return VideoFeatures(tokens=tokens, cls=torch.randn(b, t, d, generator=g), **kw)


def two_streams() -> VideoFeatures:
    """Three samples, two streams of different shapes, masks and extras at both levels."""
    s0 = _features(B, 4, 2, 8, 0, frame_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]).bool())
    s1 = _features(B, 2, 5, 6, 1, extras={"times": torch.tensor([[0.1, 0.6], [0.2, 0.7], [0.3, 0.8]])})
    return VideoFeatures(
        tokens=s0.tokens,
        cls=s0.cls,
        frame_mask=s0.frame_mask,
        streams=(s0, s1),
        extras={
            "weights": torch.arange(B * 4, dtype=torch.float32).reshape(B, 4),
            "gates": [torch.randn(B, 2, 4), torch.randn(B, 2, 4)],
            "nested": {"order": torch.tensor([[2, 0], [1, 1], [0, 2]])},
            "nothing": None,
        },
    )


def assert_rows(out: VideoFeatures, src: VideoFeatures, rows: list[int]) -> None:
    """Every row-indexed value of ``out`` equals ``src``'s at ``rows`` (indexed by hand)."""
    assert out.batch_size == len(rows)
    assert torch.equal(out.tokens, torch.stack([src.tokens[r] for r in rows]))
    assert torch.equal(out.cls, torch.stack([src.cls[r] for r in rows]))
    if src.frame_mask is None:
        assert out.frame_mask is None
    else:
        assert torch.equal(out.frame_mask, torch.stack([src.frame_mask[r] for r in rows]))
    assert (out.streams is None) == (src.streams is None)
    for o, s in zip(out.streams or (), src.streams or ()):
        assert_rows(o, s, rows)
    assert set(out.extras) == set(src.extras)

    def same(a, b):
        if b is None:
            assert a is None
        elif isinstance(b, torch.Tensor):
            assert torch.equal(a, torch.stack([b[r] for r in rows]))
        elif isinstance(b, dict):
            assert set(a) == set(b)
            for k in b:
                same(a[k], b[k])
        else:
            assert type(a) is type(b) and len(a) == len(b)
            for x, y in zip(a, b):
                same(x, y)

    for key in src.extras:
        same(out.extras[key], src.extras[key])


@pytest.mark.parametrize("rows", [[2, 0], [1, 1, 1, 0], [0, 1, 2], [2]])
def test_select_maps_every_stream_mask_and_extra(rows):
    video = two_streams()
    assert_rows(video.select(rows), video, rows)
    assert_rows(video.select(torch.tensor(rows)), video, rows)


def test_select_with_known_values():
    video = two_streams()
    out = video.select(torch.tensor([2, 0]))
    assert out.extras["weights"].tolist() == [[8.0, 9.0, 10.0, 11.0], [0.0, 1.0, 2.0, 3.0]]
    assert out.streams[0].frame_mask.tolist() == [[True, True, True, True], [True, True, True, False]]
    assert torch.equal(out.streams[1].extras["times"], torch.tensor([[0.3, 0.8], [0.1, 0.6]]))
    assert out.extras["nested"]["order"].tolist() == [[0, 2], [2, 0]]
    assert out.streams[1].tokens.shape == (2, 2, 5, 6) and out.streams[0].tokens.shape == (2, 4, 2, 8)
    assert video.tokens.shape[0] == B  # the original is untouched


def test_the_gradient_through_repeated_rows_is_the_same_every_run_on_two_threads():
    """VTM's negatives repeat rows (a video beside several captions): the backward adds each row's
    copies. Indexing (``x[rows]``) added them in an order that varied from run to run on a CPU with
    2 threads; ``select`` adds them in one order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the race needs two threads (the test workers run one each)
    try:
        g = torch.Generator().manual_seed(0)
        tokens = torch.randn(16, 64, 1, 96, generator=g, requires_grad=True)
        rows = torch.randint(0, 16, (64,), generator=g)
        weights = torch.randn(64, 64, 1, 96, generator=g)

        def grad() -> torch.Tensor:
            tokens.grad = None
            video = VideoFeatures(tokens=tokens, cls=tokens[:, :, 0])
            (video.select(rows).tokens * weights).sum().backward()
            return tokens.grad.clone()

        first = grad()
        assert torch.allclose(first[rows[0]], sum(weights[i] for i in range(64) if rows[i] == rows[0]))
        for _ in range(20):
            assert torch.equal(grad(), first)
    finally:
        torch.set_num_threads(threads)


def test_named_tuples_in_extras_keep_their_type():
    Pair = namedtuple("Pair", "first second")
    video = _features(B, 2, 1, 4, 3, extras={"pair": Pair(torch.arange(B), torch.arange(B) * 10)})
    out = video.repeat_interleave(2).extras["pair"]
    assert isinstance(out, Pair)
    assert out.first.tolist() == [0, 0, 1, 1, 2, 2] and out.second.tolist() == [0, 0, 10, 10, 20, 20]


@pytest.mark.parametrize("n", [1, 2, 4])
def test_repeat_interleave_matches_tensor_repeat_interleave(n):
    video = two_streams()
    rows = [i for i in range(B) for _ in range(n)]  # 0,0,1,1,2,2 for n=2
    out = video.repeat_interleave(n)
    assert_rows(out, video, rows)
    assert torch.equal(out.streams[1].tokens, video.streams[1].tokens.repeat_interleave(n, 0))
    assert isinstance(out.extras["gates"], list) and out.extras["nothing"] is None


def test_single_stream_features_without_mask_or_extras():
    video = _features(B, 2, 3, 4, 5)
    assert video.num_streams == 1 and video.batch_size == B
    out = video.select([1])
    assert out.frame_mask is None and out.streams is None and out.extras == {}
    assert torch.equal(out.tokens[0], video.tokens[1])


def test_extra_without_batch_rows_raises_naming_the_key():
    video = two_streams()
    video.extras["table"] = torch.zeros(7, 2)  # not per sample: cannot follow the rows
    with pytest.raises(ValueError, match=r"extras\['table'\] has 7 rows, but the features have 3"):
        video.select([0])
    with pytest.raises(ValueError, match=r"extras\['table'\]"):
        video.repeat_interleave(2)


@pytest.mark.parametrize(
    "value, what",
    [("x3d", "str"), (0.5, "float"), (torch.tensor(1.0), "0-d tensor"), (object(), "object")],
)
def test_unmappable_extra_raises_naming_the_key(value, what):
    video = two_streams()
    video.extras["meta"] = value
    with pytest.raises(ValueError, match=r"extras\['meta'\]"):
        video.select([0, 1])


def test_unmappable_extra_inside_a_stream_or_a_list_names_where():
    video = two_streams()
    video.streams[1].extras["bad"] = "label"
    with pytest.raises(ValueError, match=r"streams\[1\]\.extras\['bad'\] is a str"):
        video.repeat_interleave(2)
    video = two_streams()
    video.extras["gates"].append(torch.zeros(5))
    with pytest.raises(ValueError, match=r"extras\['gates'\]\[2\] has 5 rows"):
        video.select([0])


def test_mismatched_rows_raise():
    video = two_streams()
    bad_stream = _features(B + 1, 2, 1, 4, 9)
    with pytest.raises(ValueError, match=r"streams\[1\] has 4 samples, but the features have 3"):
        video.replace(streams=(video.streams[0], bad_stream)).select([0])
    with pytest.raises(ValueError, match="frame_mask has 2 rows"):
        video.replace(frame_mask=video.frame_mask[:2]).select([0])
    with pytest.raises(ValueError, match="cls has 1 rows"):
        video.replace(cls=video.cls[:1]).repeat_interleave(2)


@pytest.mark.parametrize(
    "rows", [torch.tensor([True, False, True]), torch.tensor([0.0, 1.0]), torch.zeros(1, 2).long(), [0.5]]
)
def test_select_rejects_rows_that_are_not_integer_indices(rows):
    with pytest.raises(ValueError, match="rows must be"):
        two_streams().select(rows)


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_repeat_interleave_needs_a_positive_int(n):
    with pytest.raises(ValueError, match="positive int"):
        two_streams().repeat_interleave(n)


def test_require_single_stream():
    require_single_stream(_features(B, 2, 1, 4, 0), "sampler uniform", "selects frames", "remove it")
    one = _features(B, 2, 1, 4, 0)
    require_single_stream(one.replace(streams=(one,)), "sampler uniform", "selects frames", "remove it")
    with pytest.raises(ConfigError) as err:
        require_single_stream(two_streams(), "sampler uniform", "selects frames of one stream", "remove it")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "sampler uniform selects frames of one stream, but the backbone gives 2 streams"
    )
    assert message.endswith(": remove it")
