"""The registry: registration, duplicates, unknown names, listing, wildcards."""

import pytest

from vqa_components.registry import (
    FUSIONS,
    REGISTRIES,
    DuplicatePartError,
    Registry,
    UnknownPartError,
    create,
    get_registry,
    list_parts,
)

KINDS = {"backbone", "text_encoder", "sampler", "fusion", "head", "objective", "dataset"}


def test_every_kind_has_a_registry():
    assert KINDS <= set(REGISTRIES)


def test_register_and_get():
    reg = Registry("widget")

    @reg.register("small_widget")
    class SmallWidget:
        """A small widget."""

    assert reg.get("small_widget") is SmallWidget
    assert SmallWidget.registry_name == "small_widget"
    assert reg.names() == ["small_widget"]
    assert reg.entries()[0].description == "A small widget."


def test_duplicate_name_names_both_modules():
    reg = Registry("widget")

    @reg.register("w")
    class First:
        pass

    class Second:
        pass

    Second.__module__ = "other_package.widgets"
    with pytest.raises(DuplicatePartError) as err:
        reg.register("w")(Second)
    msg = str(err.value)
    assert f"{__name__}.test_duplicate_name_names_both_modules.<locals>.First" in msg
    assert "other_package.widgets" in msg


def test_names_must_be_snake_case():
    reg = Registry("widget")
    with pytest.raises(ValueError):
        reg.register("CamelCase")
    with pytest.raises(ValueError):
        reg.register("has-dash")


def test_unknown_name_suggests_closest_and_lists_all():
    with pytest.raises(UnknownPartError) as err:
        FUSIONS.get("cross_atention")
    msg = str(err.value)
    assert "unknown fusion 'cross_atention'" in msg
    assert "Did you mean 'cross_attention'" in msg
    for name in FUSIONS.names():
        assert name in msg
    assert "\n" not in msg


def test_unknown_name_without_close_match_still_names_the_nearest():
    with pytest.raises(UnknownPartError) as err:
        FUSIONS.get("no_such_fusion")
    msg = str(err.value)
    assert "Did you mean" not in msg
    nearest = msg.split("Closest: ")[1].split(".")[0]
    assert 1 <= nearest.count("'") // 2 <= 3  # up to three names, quoted
    assert all(name.strip(" '") in FUSIONS.names() for name in nearest.split(","))
    assert "cross_attention" in msg


def test_unknown_kind():
    with pytest.raises(UnknownPartError, match="Did you mean 'fusion'"):
        get_registry("fusions")


def test_listing_and_wildcards():
    parts = list_parts()
    assert set(parts) == {"backbone", "text_encoder", "sampler", "fusion", "head", "objective", "dataset"}
    assert "cross_attention" in [e.name for e in parts["fusion"]]
    only = list_parts("fusion", "cross*")["fusion"]
    assert [e.name for e in only] == [n for n in FUSIONS.names() if n.startswith("cross")]
    assert all(e.description for e in parts["fusion"])


def test_create_builds_a_part():
    fusion = create("fusion", "cross_attention", video_dim=8, text_dim=8, dim=8, num_heads=2)
    assert fusion.out_dim == 8
    assert fusion.registry_name == "cross_attention"


def test_top_level_exports():
    import vqa_components
    from vqa_components.model import VideoQAModel

    assert vqa_components.VideoQAModel is VideoQAModel
    assert callable(vqa_components.profile_model)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vqa_components.nope  # noqa: B018
