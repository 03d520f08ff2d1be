"""DMSPruner.meet_target: exports that meet the resource target exactly (docs/dms.md, "## Exact-target export"),
on tiny random Llama configs."""

import pytest
import torch

from hf_dynamic.dms.pruner import DMSPruner
from hf_dynamic.models.dms_llama import DMSLlamaForCausalLM

from dms_testing import VOCAB, hard_logits, tiny_llama

TOL = 1e-4


def searched(uniform, ratios, channel_multiple=1, **overrides):
    """A pruner with random importances (one update each) and the given keep ratios ``e`` per kind."""
    torch.manual_seed(0)
    model = tiny_llama(num_key_value_heads=overrides.pop("num_key_value_heads", 4), **overrides)
    pruner = DMSPruner(model, 0.7, uniform=uniform, channel_multiple=channel_multiple)
    with torch.no_grad():
        for kind, op in pruner.topk.items():
            pruner.set_importance(kind, torch.rand_like(op.importance))
            op.keep_ratio.copy_(torch.as_tensor(ratios[kind], dtype=torch.float32).expand_as(op.keep_ratio))
    return model, pruner


def step_exceeds(pruner, kind, step):
    """Would one more rounding step of ``kind`` in any row (all rows when shared) exceed the target?"""
    op = pruner.topk[kind]
    counts = op.kept_counts().reshape(-1)
    rows = [None] if op.keep_ratio.dim() == 0 else range(counts.numel())
    out = []
    for row in rows:
        new = counts.clone() + step if row is None else counts.clone().index_add_(0, torch.tensor([row]),
                                                                                  torch.tensor([step]))
        if int(new.max()) > op.num_elements:
            continue
        op.set_keep_count(new[0] if row is None else new)
        out.append(float(pruner.resource_ratio(hard=True)) > pruner.target)
        op.set_keep_count(counts[0] if row is None else counts)
    return out


def test_paper_rule_overshoots_and_meet_target_lands_just_below():
    # 4 KV groups at e = 0.6: the threshold rule keeps floor(2.4) + 1 = 3, rounding keeps 2.
    model, pruner = searched(True, {"heads": 0.6, "mlp": 0.7, "hidden": 0.9, "layers": 1.0})
    assert pruner.topk["heads"].kept_counts()[0] == 3
    before = float(pruner.resource_ratio(hard=True))
    assert before > pruner.target
    report = pruner.meet_target()
    after = float(pruner.resource_ratio(hard=True))
    assert report["before"] == pytest.approx(before) and report["after"] == pytest.approx(after)
    assert after <= pruner.target
    assert pruner.topk["heads"].kept_counts()[0] == 2
    assert all(step_exceeds(pruner, "mlp", 1))  # as close as one MLP channel allows
    exported = pruner.export()
    assert exported.num_parameters() == int(pruner.resource(hard=True))
    x = torch.randint(0, VOCAB, (1, 9))
    assert (exported(x).logits - hard_logits(pruner, model, x)).abs().max() <= TOL
    assert report["counts"]["heads"] == [2, 2, 2] and report["counts"]["hidden"] == exported.config.hidden_size


def test_per_layer_trims_the_least_wanted_rows_and_exports_as_dms_llama():
    model, pruner = searched(False, {"heads": [1.0, 0.6, 0.9], "mlp": [0.9, 0.5, 0.8], "hidden": 0.95,
                                     "layers": 1.0})
    wanted = pruner.topk["mlp"].soft_mask().sort(dim=-1, descending=True).values
    rounded = torch.round(pruner.topk["mlp"].keep_ratio * 48).long()
    pruner.meet_target()
    counts = pruner.topk["mlp"].kept_counts()
    assert float(pruner.resource_ratio(hard=True)) <= pruner.target
    assert all(step_exceeds(pruner, "mlp", 1))
    # greedy: every channel kept is wanted at least as much as every channel dropped from a rounded row
    dropped = [wanted[r, c].item() for r in range(3) for c in range(int(counts[r]), int(rounded[r]))]
    kept = [wanted[r, int(counts[r]) - 1].item() for r in range(3) if counts[r] < rounded[r]]
    assert dropped and min(kept) >= max(dropped) - 1e-6
    exported = DMSLlamaForCausalLM.from_pruned(pruner)
    assert exported.num_parameters() == int(pruner.resource(hard=True))
    x = torch.randint(0, VOCAB, (1, 9))
    assert (exported(x).logits - hard_logits(pruner, model, x)).abs().max() <= TOL


@pytest.mark.parametrize("uniform", [True, False])
def test_channel_multiple_is_kept(uniform):
    _, pruner = searched(uniform, {"heads": 0.75, "mlp": 0.66, "hidden": 0.8, "layers": 1.0}, channel_multiple=8)
    report = pruner.meet_target()
    assert float(pruner.resource_ratio(hard=True)) <= pruner.target
    s = pruner.hard_structure()
    assert report["counts"]["mlp"] == [c.numel() for c in s.mlp_channels]
    assert report["counts"]["hidden"] == s.hidden.numel()
    assert all(c.numel() % 8 == 0 for c in s.mlp_channels) and s.hidden.numel() % 8 == 0
    assert all(step_exceeds(pruner, "mlp", 8))


def test_hidden_is_the_fine_kind_without_mlp():
    torch.manual_seed(0)
    model = tiny_llama(num_key_value_heads=4)
    pruner = DMSPruner(model, 0.75, prune=("heads", "hidden"))
    for kind, op in pruner.topk.items():
        pruner.set_importance(kind, torch.rand_like(op.importance))
    with torch.no_grad():
        pruner.topk["heads"].keep_ratio.fill_(0.7)
        pruner.topk["hidden"].keep_ratio.fill_(0.95)
    pruner.meet_target()
    assert float(pruner.resource_ratio(hard=True)) <= 0.75
    heads = pruner.topk["heads"].kept_counts()[0]
    assert pruner.topk["hidden"].kept_counts() % heads == 0  # uniform: a multiple of the kept query heads
    assert all(step_exceeds(pruner, "hidden", int(heads)))


def test_meet_target_reads_the_pruners_target_and_refuses_another():
    """The pruner is the one holder of the target: meet_target() meets it, an explicit other value is an error
    (the search ramped towards the pruner's), and assigning pruner.target is how to export at another one."""
    _, pruner = searched(True, {"heads": 1.0, "mlp": 1.0, "hidden": 1.0, "layers": 1.0})
    with pytest.raises(ValueError, match=r"meet_target\(target=0.9\) conflicts with the pruner's target=0.7"):
        pruner.meet_target(0.9)
    with pytest.raises(ValueError, match="target.*1.5"):
        pruner.meet_target(1.5)
    with pytest.raises(ValueError, match="target.*nan"):
        pruner.target = float("nan")
    assert pruner.target == 0.7
    pruner.target = 0.9
    report = pruner.meet_target()
    assert report["target"] == 0.9 and report["after"] <= 0.9
    again = pruner.meet_target(0.9)  # the same value is accepted; a second call keeps what the first snapped
    assert again["counts"] == report["counts"] and again["after"] == report["after"]
