"""hf_dynamic.core.validation: the shared argument check names the field, the value and the choices."""

import pytest

from hf_dynamic.core.validation import check_choice


@pytest.mark.parametrize("choices", [("global", "layer"), ["global", "layer"], {"global": 1, "layer": 2}])
def test_valid_choice_passes(choices):
    assert check_choice("scope", "layer", choices) is None


def test_invalid_choice_names_field_value_and_choices():
    with pytest.raises(ValueError) as info:
        check_choice("scope", "globl", ("global", "layer"))
    assert str(info.value) == "scope must be one of ('global', 'layer'), got 'globl'"


@pytest.mark.parametrize("value", [None, "", "GLOBAL", 1, ("global",)])
def test_near_misses_are_rejected(value):
    with pytest.raises(ValueError, match=r"^scope must be one of \('global', 'layer'\), got "):
        check_choice("scope", value, ("global", "layer"))


def test_generator_choices_are_listed_in_the_message():
    with pytest.raises(ValueError, match=r"\('a', 'b'\)"):
        check_choice("kind", "c", (x for x in "ab"))


def test_configs_and_algorithms_use_it():
    """A bad choice in a config and in an algorithm's arguments surfaces as check_choice's message."""
    from hf_dynamic.models.partial_moe_bert import PartialMoEBertConfig
    from hf_dynamic.pad.imp import IMPCallback

    with pytest.raises(ValueError, match=r"^partition_granularity must be one of \('element', 'neuron'\), got 'row'"):
        PartialMoEBertConfig(partition_granularity="row")
    with pytest.raises(ValueError, match=r"^finalize_at must be one of .*, got 'later'"):
        IMPCallback(finalize_at="later")
