"""hf_dynamic.core.validation: the shared argument checks name the field, the value and what is allowed."""

import pytest

from hf_dynamic.core.validation import check_bool, check_choice, check_number


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


# ------------------------------------------------------------------------------------------------ check_number
@pytest.mark.parametrize("value, integer, bounds", [
    (0.5, False, {"gt": 0, "le": 1}), (1, False, {"gt": 0, "le": 1}), (3, True, {"ge": 1}), (0, True, {}),
    (-2.5, False, {}), (float("inf"), False, {"gt": 0, "finite": False}), (10 ** 400, True, {"ge": 1}),
])
def test_real_numbers_in_range_pass(value, integer, bounds):
    assert check_number("x", value, integer, **bounds) is None


@pytest.mark.parametrize("value, integer, bounds, message", [
    ("0.5", False, {}, "x must be a number, got '0.5' (str)"),
    (True, False, {}, "x must be a number, got True (bool)"),
    (None, False, {}, "x must be a number, got None (NoneType)"),
    (2.0, True, {}, "x must be an integer, got 2.0 (float)"),
    (float("nan"), False, {}, "x must be a finite number, got nan"),
    (float("nan"), False, {"gt": 0, "finite": False}, "x must be a non-NaN number > 0, got nan"),
    (float("inf"), False, {"gt": 0}, "x must be a finite number > 0, got inf"),
    (2, False, {"gt": 0, "le": 1}, "x must be a number > 0 and <= 1, got 2"),
    (0, False, {"gt": 0, "le": 1}, "x must be a number > 0 and <= 1, got 0"),
    (0, True, {"ge": 1}, "x must be an integer >= 1, got 0"),
    (1.0, False, {"lt": 1}, "x must be a number < 1, got 1.0"),
])
def test_not_a_real_number_in_range_names_field_value_and_range(value, integer, bounds, message):
    with pytest.raises(ValueError) as info:
        check_number("x", value, integer, **bounds)
    assert str(info.value) == message


@pytest.mark.parametrize("value", ["no", "yes", 0, 1, None, 1.0])
def test_check_bool_refuses_truthy_stand_ins(value):
    with pytest.raises(ValueError, match=r"^flag must be a bool \(True or False\), got "):
        check_bool("flag", value)


@pytest.mark.parametrize("value", [True, False])
def test_check_bool_accepts_bools(value):
    assert check_bool("flag", value) is None


def test_the_library_checks_real_numbers_with_it():
    """An infinite distillation temperature (T² = inf scales the loss) and a NaN top-k temperature used to pass their
    hand-written `> 0` checks; through check_number they are refused, naming the argument."""
    import torch

    from hf_dynamic.core.distillation import distillation_kl_loss
    from hf_dynamic.core.topk import DifferentiableTopK

    logits = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match=r"^temperature must be a finite number > 0, got inf$"):
        distillation_kl_loss(logits, logits, float("inf"))
    with pytest.raises(ValueError, match=r"^temperature must be a finite number > 0, got nan$"):
        DifferentiableTopK(4, temperature=float("nan"))
