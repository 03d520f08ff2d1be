"""AutoSlim search (hf_dynamic.slim.search): FLOP costs against FlopCounterMode, the greedy choice against a
brute-force reference, exact widths, the budget, restored state, uniform baseline, latency timing, bad inputs."""

import math

import pytest
import torch
from slim_testing import tiny_bert, tiny_llama, tokens

from hf_dynamic.core.resources import measured_forward_flops
from hf_dynamic.slim import search
from hf_dynamic.slim.modeling import get_width, make_slimmable, resolve_widths, set_width, units_at
from hf_dynamic.slim.search import (
    FlopCost, autoslim_search, measure_latency, uniform_width_for_budget, width_flops, widths_from_counts,
)


def slim_bert():
    model = make_slimmable(tiny_bert())
    model.set_attn_implementation("eager")  # FlopCounterMode does not book CPU's fused SDPA kernel
    return model


def distortion_metric(model, x):
    """``evaluate``: minus the squared distance of the logits to the full-width logits (higher is better)."""
    with torch.no_grad():
        reference = model(x).logits

    def evaluate(m):
        with torch.no_grad():
            return -float((m(x).logits - reference).pow(2).sum())

    return evaluate


@pytest.mark.parametrize("build", [slim_bert, lambda: make_slimmable(tiny_llama())], ids=["bert", "llama"])
def test_width_flops_equal_flop_counter(build):
    model = build()
    model.set_attn_implementation("eager")
    x = tokens(3, 7)
    for widths in (1.0, {0: {"attention": 0.25, "mlp": 0.5}, 1: {"attention": 0.5, "mlp": 0.1}}):
        counts = set_width(model, widths)
        assert width_flops(model, seq_len=7, batch_size=3) == measured_forward_flops(model, x)
        assert FlopCost(7, 3)(model, counts) == measured_forward_flops(model, x)


def test_widths_from_counts_resolve_exactly():
    # k / n resolves back to k under round-half-up for every count of every size up to 300
    assert all(units_at(k / n, n, "w") == k for n in range(1, 301) for k in range(1, n + 1))
    model = make_slimmable(tiny_llama())
    counts = [(1, 17), (2, 48), (2, 1)]
    assert set_width(model, widths_from_counts(model, counts)) == counts
    with pytest.raises(ValueError, match=r"counts\[1\] head groups"):
        widths_from_counts(model, [(1, 17), (3, 48), (2, 1)])
    with pytest.raises(ValueError, match="counts has 2 layers"):
        widths_from_counts(model, [(1, 17), (2, 48)])


def test_search_meets_budget_with_exact_widths_and_restores_state():
    model = slim_bert()
    x = tokens(4, 12)
    cost = FlopCost(seq_len=12, batch_size=4)
    evaluate = distortion_metric(model, x)
    set_width(model, 0.75)
    model.train()
    before = get_width(model)
    result = autoslim_search(model, evaluate, 0.6, cost, mlp_step=0.25, progress=False)
    assert get_width(model) == before and model.training  # restored
    traj = result.trajectory
    assert traj[0].layer is None and traj[0].counts == tuple(result.full_counts) and traj[0].cost_fraction == 1.0
    assert result.cost_fraction <= 0.6 < traj[-2].cost_fraction  # stops as soon as the budget is met
    for prev, step in zip(traj, traj[1:]):  # each step is exactly its recorded move
        g, c = prev.counts[step.layer]
        n_c = result.full_counts[step.layer][1]
        expected = (g - 1, c) if step.part == "attention" else (g, max(1, c - units_at(0.25, n_c, "mlp_step")))
        assert step.counts[step.layer] == expected
        assert [p for i, p in enumerate(step.counts) if i != step.layer] == \
               [p for i, p in enumerate(prev.counts) if i != step.layer]
        assert step.cost < prev.cost
    assert set_width(model, result.widths) == result.counts == list(traj[-1].counts)
    assert width_flops(model, seq_len=12, batch_size=4) == result.cost
    assert measured_forward_flops(model, x) == result.cost
    assert math.isclose(result.cost / result.full_cost, result.cost_fraction)
    assert evaluate(model) == result.metric
    step = result.step_at(0.8)
    assert step.cost_fraction <= 0.8 and traj[traj.index(step) - 1].cost_fraction > 0.8
    assert result.num_evaluations == 1 + sum(2 * len(s.counts) - sum(g == 1 for g, _ in s.counts)
                                             - sum(c == 1 for _, c in s.counts) for s in traj[:-1])


def reference_move(model, counts, evaluate, cost, mlp_units):
    """Brute force: every one-step shrink evaluated with set_width; the best metric, then the lowest cost, then
    the lowest layer, then attention before mlp."""
    scored = []
    for i, (g, c) in enumerate(counts):
        for part, new in (("attention", (g - 1, c)), ("mlp", (g, max(1, c - mlp_units)))):
            if min(new) < 1 or new == (g, c):
                continue
            trial = list(counts)
            trial[i] = new
            set_width(model, widths_from_counts(model, trial))
            scored.append((-evaluate(model), cost(model, trial), i, part))
    set_width(model, 1.0)
    return min(scored)[2:]


def test_search_shrinks_the_useless_layer_first_then_matches_brute_force():
    model = make_slimmable(tiny_llama())
    with torch.no_grad():  # layer 1's FFN contributes nothing: every shrink of it leaves the logits unchanged
        model.model.layers[1].mlp.down_proj.weight.zero_()
    x = tokens(2, 8)
    evaluate, cost = distortion_metric(model, x), FlopCost(seq_len=8, batch_size=2)
    result = autoslim_search(model, evaluate, 0.8, cost, mlp_step=1 / 8, progress=False)
    moves = [(s.layer, s.part) for s in result.trajectory[1:]]
    assert moves[:8] == [(1, "mlp")] * 8  # 48 → 42 → ... → 6 → 1 channels, metric exactly 0
    assert result.trajectory[8].counts[1] == (2, 1) and result.trajectory[8].metric == 0.0
    assert len(moves) > 8  # the budget needs more than the useless FFN
    for step, prev in ((9, 8), (len(moves), len(moves) - 1)):
        assert moves[step - 1] == reference_move(model, list(result.trajectory[prev].counts), evaluate, cost, 6)


def test_ties_go_to_the_larger_saving_then_the_lower_layer():
    model = slim_bert()
    result = autoslim_search(model, lambda m: torch.tensor(0.0), 0.3, FlopCost(seq_len=16), progress=False)
    moves = [(s.layer, s.part) for s in result.trajectory[1:]]
    # a head group saves 2·T·4·H·d + 4·d·T² = 40960 FLOPs, an FFN step (3 channels) 2·T·2·H·3 = 6144: the heads go
    # first, layer 0 before layer 1 (equal savings), down to one group each
    assert moves[:6] == [(0, "attention")] * 3 + [(1, "attention")] * 3
    assert moves[6] == (0, "mlp")
    # parts=("mlp",): every head kept (a BERT width a stock checkpoint can hold), the FFN alone meets the budget
    mlp_only = autoslim_search(model, lambda m: 0.0, 0.7, FlopCost(seq_len=16), parts=("mlp",), progress=False)
    assert {s.part for s in mlp_only.trajectory[1:]} == {"mlp"} and mlp_only.cost_fraction <= 0.7
    assert all(g == 4 for g, _ in mlp_only.counts)


def test_uniform_width_for_budget_is_the_largest_uniform_width_within_budget():
    model = slim_bert()
    cost = FlopCost(seq_len=16)
    full = cost(model, resolve_widths(model, 1.0))
    grid = [resolve_widths(model, k / 160) for k in range(20, 161)]  # from w = 1/8: one head of 4
    for budget in (0.3, 0.55, 1.0):
        w = uniform_width_for_budget(model, budget, cost)
        counts = resolve_widths(model, w)
        assert cost(model, counts) <= budget * full
        # brute force on a grid with a point in every step (the breakpoints are multiples of 1/80 here)
        feasible = [c for c in grid if cost(model, c) <= budget * full]
        assert counts == feasible[-1]
        assert w == round(w, 3)  # a short decimal
    assert uniform_width_for_budget(model, 1.0, cost) == 1.0
    with pytest.raises(ValueError, match="budget=0.01"):
        uniform_width_for_budget(model, 0.01, cost)


def test_measure_latency_is_the_median_at_the_width(monkeypatch):
    model = make_slimmable(tiny_bert())
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append((get_width(m), torch.is_inference_mode_enabled())))
    clock = iter([0, 9, 10, 11, 20, 25, 30, 33, 40, 47])  # timed runs of 9, 1, 5, 3, 7 (the warmup is untimed)
    monkeypatch.setattr(search, "perf_counter", lambda: next(clock))
    widths = {0: {"attention": 0.5, "mlp": 0.25}}
    latency = measure_latency(model, {"input_ids": tokens()}, widths, repeats=5, warmup=1)
    assert latency == 5
    assert seen == [(resolve_widths(model, widths), True)] * 6
    assert get_width(model) == resolve_widths(model, 1.0)
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, tokens(), repeats=0)


def test_bad_inputs_fail_before_any_work():
    model = slim_bert()
    calls = []

    def evaluate(m):
        calls.append(1)
        return 0.0

    cost = FlopCost(seq_len=8)
    for kwargs, error, match in [
        (dict(budget=0), ValueError, "budget"),
        (dict(budget=1.5), ValueError, "budget"),
        (dict(budget="0.5"), ValueError, "budget"),
        (dict(budget=float("nan")), ValueError, "budget"),
        (dict(mlp_step=0), ValueError, "mlp_step"),
        (dict(evaluate="accuracy"), TypeError, "evaluate must be a callable"),
        (dict(cost="flops"), TypeError, "cost must be a callable"),
        (dict(progress="no"), ValueError, "progress"),
        (dict(parts=("heads",)), ValueError, "parts"),
        (dict(parts=()), ValueError, "parts"),
        (dict(budget=0.001), ValueError, "budget=0.001 is below the smallest reachable"),
    ]:
        args = dict(evaluate=evaluate, budget=0.5, cost=cost) | kwargs
        with pytest.raises(error, match=match):
            autoslim_search(model, args.pop("evaluate"), args.pop("budget"), args.pop("cost"), **args)
    assert not calls
    with pytest.raises(ValueError, match="seq_len"):
        FlopCost(seq_len=0)
    set_width(model, 0.5)
    with pytest.raises(ValueError, match=r"evaluate\(model\) must be a finite number"):
        autoslim_search(model, lambda m: float("nan"), 0.5, cost, progress=False)
    assert get_width(model) == resolve_widths(model, 0.5)  # restored after the failure
    flaky = iter([1.0, 0.1])  # the full width, then the one-unit floor fits once; every later cost is 1.0
    with pytest.raises(ValueError, match="no move is left"):
        autoslim_search(model, evaluate, 0.5, lambda m, counts: next(flaky, 1.0), mlp_step=1.0, progress=False)
    assert get_width(model) == resolve_widths(model, 0.5)
    with pytest.raises(ValueError, match="not slimmable"):
        autoslim_search(tiny_bert(), evaluate, 0.5, cost)
