"""The DMS target has one holder, the pruner (docs/dms.md, "## Resource loss"): DMSCallback ramps towards
``pruner.target``, meet_target() and the export read it, and a conflicting value anywhere is a ValueError."""

import pytest
import torch

from hf_dynamic.dms.callback import DMSCallback
from hf_dynamic.dms.pruner import DMSPruner
from hf_dynamic.dms.target import ramp_target

from dms_testing import tiny_llama


def test_a_callback_with_another_target_is_refused():
    pruner = DMSPruner(tiny_llama(), 0.5)
    # before: the callback ramped to 0.3 while meet_target() and the export met the pruner's 0.5
    with pytest.raises(ValueError, match=r"DMSCallback\(target=0.3\) conflicts with the pruner's target=0.5"):
        DMSCallback(pruner, target=0.3)
    assert DMSCallback(pruner, target=0.5).target == 0.5  # the same value is accepted (compatibility)


def test_the_callback_ramps_towards_the_pruners_target_as_it_changes():
    pruner = DMSPruner(tiny_llama(), 0.5)
    callback = DMSCallback(pruner, ramp_fraction=0.5)
    assert callback.target_at(10, 20) == 0.5
    pruner.target = 0.4  # one holder: the callback follows
    assert callback.target == 0.4 and callback.target_at(10, 20) == pytest.approx(0.4)
    assert callback.target_at(5, 20) == pytest.approx(0.7)
    assert pruner.current_target == 0.4  # no ramp ran: the loss uses the final target too
    pruner.set_target(0.9)  # the ramp's value, until the next set_target
    assert pruner.current_target == 0.9 and pruner.target == 0.4
    with pytest.raises(AttributeError):
        callback.target = 0.3


@pytest.mark.parametrize("step,expected", [(0, 1.0), (4, 0.8), (8, 0.6), (9, 0.6), (100, 0.6)])
def test_ramp_target_formula(step, expected):
    # t(s) = 1 − (1 − T)·min(1, s / max(1, ρ·S)) with T = 0.6, ρ = 0.8, S = 10
    assert ramp_target(0.6, step, 10, 0.8) == pytest.approx(expected)


def test_a_saved_search_towards_another_target_does_not_load():
    source = DMSPruner(tiny_llama(), 0.5)
    source.set_target(0.8)
    state = source.state_dict()
    source.remove()
    same = DMSPruner(tiny_llama(), 0.5)
    same.load_state_dict(state)
    assert same.current_target == 0.8 and same.target == 0.5
    other = DMSPruner(tiny_llama(), 0.4)
    with pytest.raises(ValueError, match="ran towards target=0.5, this pruner has target=0.4"):
        other.load_state_dict(state)


@pytest.mark.parametrize("value", [0.0, 1.0, float("nan"), "0.5", True, None])
def test_a_bad_target_assignment_is_named(value):
    pruner = DMSPruner(tiny_llama(), 0.5)
    with pytest.raises(ValueError, match="target"):
        pruner.target = value
    assert pruner.target == 0.5
    with pytest.raises(ValueError, match="target"):
        pruner.set_target(float("nan"))
    assert torch.isfinite(pruner.resource_loss())
