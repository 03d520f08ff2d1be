"""hf_dynamic.boost without a model: the criteria registry, the exit rule, the boosted ensemble, loss and gradient
rescaling, and the budget solver (docs/boost.md)."""

import math

import pytest
import torch

from hf_dynamic.boost.calibration import exit_fractions, solve_exit_fractions
from hf_dynamic.boost.criteria import EXIT_CRITERIA, ExitRule, ExitSettings, get_criterion
from hf_dynamic.boost.loss import boosted_loss, boosted_prediction, rescale_trunk


def test_registry_and_threshold_conversions():
    assert set(EXIT_CRITERIA) == {"confidence", "entropy", "patience"}
    with pytest.raises(ValueError, match="exit_criterion must be one of"):
        get_criterion("margin")
    confidence, entropy = EXIT_CRITERIA["confidence"], EXIT_CRITERIA["entropy"]
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(confidence.score(logits), probs.amax(-1))
    torch.testing.assert_close(entropy.score(logits), (probs * probs.log()).sum(-1))
    assert entropy.threshold_to_score(0.3) == -0.3 and entropy.score_to_threshold(-0.3) == 0.3
    assert confidence.threshold_to_score(0.7) == 0.7
    # ±inf become finite thresholds with the same effect (JSON has no infinities)
    assert confidence.finite_threshold(math.inf, 3) == 2.0 and confidence.finite_threshold(-math.inf, 3) == 0.0
    assert entropy.finite_threshold(-math.inf, 3) == -1.0
    assert entropy.finite_threshold(math.inf, 3) == pytest.approx(math.log(3) + 1)
    assert not EXIT_CRITERIA["patience"].calibratable and confidence.calibratable


def test_exit_rule_threshold_and_patience():
    logits = torch.tensor([[[4.0, 0, 0], [4.0, 0, 0], [0, 4.0, 0]],
                           [[0.1, 0, 0], [0, 4.0, 0], [0, 4.0, 0]],
                           [[0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1]]])
    rule = ExitRule(ExitSettings("confidence", num_exits=3, thresholds=(0.9, 0.9, 0.0)), 3)
    assert rule.fires(logits[:, 0], 0).tolist() == [True, False, False]
    assert rule.fires(logits[:, 1], 1).tolist() == [True, True, False]
    assert rule.fires(logits[:, 2], 2).all()  # the last exit takes every sample
    rule = ExitRule(ExitSettings("patience", num_exits=3, patience=1), 3)
    assert rule.fires(logits[:, 0], 0).tolist() == [False, False, False]
    rule.keep(torch.tensor([True, False, True]))  # the state follows the samples left in the batch
    assert rule.fires(logits[[0, 2], 1], 1).tolist() == [True, False]
    with pytest.raises(ValueError, match="thresholds has 2 values but there are 3 exits"):
        ExitSettings("confidence", num_exits=3, thresholds=(0.9, 0.9))
    with pytest.raises(ValueError, match="criterion must be one of"):
        ExitSettings("margin", num_exits=3)
    with pytest.raises(TypeError, match="ExitRule needs an ExitSettings"):
        ExitRule({"criterion": "confidence"}, 3)


def test_boosted_prediction_stop_gradient_and_loss():
    previous = torch.randn(4, 3, requires_grad=True)
    head = torch.randn(4, 3, requires_grad=True)
    ensemble = boosted_prediction(previous, head, 0.5)
    torch.testing.assert_close(ensemble, 0.5 * previous + head)
    ensemble.sum().backward()
    assert previous.grad is None and torch.equal(head.grad, torch.ones(4, 3))
    assert boosted_prediction(previous, head, 0.5, boosting=False) is head
    assert boosted_prediction(None, head, 0.5) is head
    labels = torch.tensor([0, 1, 2, 0])
    ce = torch.nn.functional.cross_entropy
    loss, per_exit = boosted_loss([head, ensemble], labels, ce, [0.5, 2.0])
    torch.testing.assert_close(loss, 0.5 * ce(head, labels) + 2.0 * ce(ensemble, labels))
    assert not per_exit.requires_grad and per_exit.shape == (2,)


def test_rescale_trunk_gradients():
    h = torch.randn(2, 3, requires_grad=True)
    head_input, trunk = rescale_trunk(h, remaining=4)
    torch.testing.assert_close(head_input, h)
    torch.testing.assert_close(trunk, h)
    (head_input.sum() + trunk.sum()).backward()
    torch.testing.assert_close(h.grad, torch.full((2, 3), 1 / 4 + 3 / 4))  # (1/c)·(1 + (c-1))
    h.grad = None
    rescale_trunk(h, 4)[1].sum().backward()
    torch.testing.assert_close(h.grad, torch.full((2, 3), 3 / 4))
    assert rescale_trunk(h, 4, enabled=False) == (h, h)


def _bisection(budget, costs):
    """The 200-step bisection that solve_exit_fractions used before scipy's brentq."""
    costs64, lo, hi = torch.tensor(costs, dtype=torch.float64), -60.0, 60.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((exit_fractions(mid, len(costs)) * costs64).sum()) < budget:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


@pytest.mark.parametrize("budget", [0.2, 0.45, 0.7, 0.95])
def test_brentq_matches_the_former_bisection(budget):
    costs = [1 / 6, 2 / 6, 4 / 6, 1.0]
    p, _ = solve_exit_fractions(budget, costs)
    assert p == pytest.approx(_bisection(budget, costs), rel=1e-9)


def test_exit_rule_takes_the_settings_of_another_copy_of_the_module():
    """Remote code loaded from a local folder imports this module twice (config side, modeling side): the config's
    ExitSettings is another class with the same fields, and the rule must take it (and validate it again)."""
    import dataclasses

    twin = dataclasses.make_dataclass("ExitSettings", [(f.name, f.type, dataclasses.field(default=f.default))
                                                       for f in dataclasses.fields(ExitSettings)], frozen=True)
    rule = ExitRule(twin("confidence", num_exits=2, thresholds=(0.9, 0.0)), 2)
    assert type(rule.settings) is ExitSettings and rule.settings.thresholds == (0.9, 0.0)
    with pytest.raises(ValueError, match="thresholds has 1 values"):
        ExitRule(twin("confidence", num_exits=2, thresholds=(0.9,)), 2)
