"""DMSPruner on tiny random Llama configs (GQA: 4 query heads, 2 KV groups): masks, importance, resource loss,
bad input (the Trainer path is in test_dms_callback.py)."""

import math

import pytest
import torch

from hf_dynamic.core.resources import count_parameters
from hf_dynamic.dms.callback import DMSCallback
from hf_dynamic.dms.trainer import DMSTrainer
from hf_dynamic.dms.pruner import DMSPruner

from dms_testing import tiny_llama, token_batch


def batch(n=2, t=12):
    return token_batch(n, t)


def test_public_names():
    import hf_dynamic

    assert hf_dynamic.DMSPruner is DMSPruner and hf_dynamic.DMSCallback is DMSCallback
    assert hf_dynamic.DMSTrainer is DMSTrainer


@pytest.mark.parametrize("target", [0, 1, 1.5, -0.2, "0.5", True])
def test_bad_target(target):
    with pytest.raises(ValueError, match="target"):
        DMSPruner(tiny_llama(), target)


def test_bad_kind_resource_grouping():
    model = tiny_llama()
    with pytest.raises(ValueError, match="unknown element kind.*'experts'"):
        DMSPruner(model, 0.5, prune=("heads", "experts"))
    with pytest.raises(ValueError, match="resource"):
        DMSPruner(model, 0.5, resource="latency")
    with pytest.raises(ValueError, match="head_grouping"):
        DMSPruner(model, 0.5, head_grouping="mixed")
    with pytest.raises(ValueError, match="grouped-query attention"):
        DMSPruner(tiny_llama(num_key_value_heads=4), 0.5, head_grouping="query")
    assert not model.model.embed_tokens._forward_hooks  # nothing attached on failure


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*gpt2"):
        DMSPruner(gpt2, 0.5)


def test_export_before_any_search_step():
    pruner = DMSPruner(tiny_llama(), 0.5)
    with pytest.raises(ValueError, match="before any search step"):
        pruner.export()


def test_hooks_are_transparent_at_full_size_and_removable():
    model = tiny_llama()
    x = batch()
    with torch.no_grad():
        ref = model(x).logits
    pruner = DMSPruner(model, 0.5)
    with torch.no_grad():
        with pruner.hard_masks():  # e = 1: every element kept
            assert torch.equal(model(x).logits, ref)
        with pruner.full_model_scoring():
            assert torch.equal(model(x).logits, ref)
        assert not torch.allclose(model(x).logits, ref)  # soft masks at e = 1 are < 1 for the least important
    pruner.remove()
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref)


@pytest.mark.parametrize("grouping", ["kv", "query"])
def test_importance_accumulates_in_plain_loop_and_masks_respect_gqa(grouping):
    model = tiny_llama()
    model.requires_grad_(False)
    pruner = DMSPruner(model, 0.5, head_grouping=grouping)
    opt = torch.optim.Adam(pruner.structure_parameters(), lr=0.05)
    x = batch()
    for _ in range(3):
        loss = model(x, labels=x).loss + pruner.resource_loss(target=0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert pruner.num_search_steps == 3
    for kind, op in pruner.topk.items():
        assert (op.importance > 0).any(), kind
        assert float(op.keep_ratio.detach().mean()) < 1.0, kind  # the resource loss pulled the ratios down
    with torch.no_grad():
        pruner.topk["heads"].set_keep_count(1)
    masks = pruner.masks("hard")
    q = masks["heads_q"].view(3, 2, 2)  # [layer, kv group, query head in group]
    if grouping == "kv":  # one KV group kept with both of its query heads
        assert torch.equal(q.sum((1, 2)), torch.full((3,), 2.0))
        assert torch.equal(q[..., 0], q[..., 1])
        assert torch.equal(masks["heads_kv"].sum(-1), torch.ones(3))
    else:  # every KV group keeps exactly one query head
        assert torch.equal(q.sum(-1), torch.ones(3, 2))
        assert torch.equal(masks["heads_kv"], torch.ones(3, 2))


def test_resource_loss_formula_and_gradient():
    model = tiny_llama()
    pruner = DMSPruner(model, 0.5, resource_weight=2.0)
    assert pruner.full_resource == count_parameters(model)
    ratio = float(pruner.resource_ratio().detach())
    assert 0.5 < ratio < 1.0
    assert float(pruner.resource_loss(target=0.99).detach()) == 0.0  # R <= target: no loss
    loss = pruner.resource_loss(target=0.4)
    assert float(loss.detach()) == pytest.approx(2.0 * math.log(ratio / 0.4), rel=1e-5)
    loss.backward()
    for p in pruner.structure_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="target"):
        pruner.resource_loss(target=0.0)


def test_flops_resource():
    model = tiny_llama()
    pruner = DMSPruner(model, 0.5, resource="flops", flops_seq_len=16)
    full = pruner.full_resource
    with torch.no_grad():
        pruner.topk["mlp"].set_keep_count(24)
    assert float(pruner.resource(hard=True)) < full
    assert float(pruner.resource_loss(target=0.2).detach()) > 0


def test_uniform_hard_masks_equal_counts_per_layer_and_hidden_rounding():
    model = tiny_llama(num_hidden_layers=4)
    pruner = DMSPruner(model, 0.5, uniform=True)
    for kind, op in pruner.topk.items():
        pruner.set_importance(kind, torch.rand_like(op.importance))
    with torch.no_grad():
        pruner.topk["heads"].set_keep_count(1)  # 2 query heads kept
        pruner.topk["mlp"].set_keep_count(17)
        pruner.topk["hidden"].set_keep_count(13)  # not a multiple of 2 -> rounded
        pruner.topk["layers"].set_keep_count(3)
    s = pruner.hard_structure()
    assert len({int(c.numel()) for c in s.mlp_channels}) == 1
    assert s.hidden.numel() % 2 == 0 and abs(s.hidden.numel() - 13) <= 1
    assert sum(s.attention_present) == 3 and s.attention_present == s.mlp_present


def test_adaptive_resource_weight():
    model = tiny_llama()
    model.requires_grad_(False)
    fixed = DMSPruner(tiny_llama(), 0.6)
    assert fixed.adapt_resource_weight_() == 1.0  # the paper's fixed weight by default
    pruner = DMSPruner(model, 0.6, prune=("mlp", "heads"), resource_weight=1.0, resource_weight_adapt=0.05)
    pruner.set_target(0.6)
    assert pruner.adapt_resource_weight_() == pytest.approx(1.05)  # R ~ 0.98 > 0.6: w grows
    pruner.set_target(0.999)
    assert pruner.adapt_resource_weight_() == pytest.approx(1.0)  # R < 0.999: w shrinks
    # a task term that resists shrinking (as a pretrained model's loss does): the fixed tiny weight never reaches
    # the target, the adapted one does
    def search(p):
        p.set_target(0.6)
        opt = torch.optim.Adam(p.structure_parameters(), lr=0.05)
        for _ in range(150):
            task = -5.0 * p.masks("soft")["mlp"].mean() - 5.0 * p.masks("soft")["heads_kv"].mean()
            loss = task + p.resource_loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
            p.clamp_()
            p.adapt_resource_weight_()
        return float(p.resource_ratio(hard=True))

    assert search(DMSPruner(tiny_llama(), 0.6, prune=("mlp", "heads"), resource_weight=1.0)) > 0.9
    assert 0.55 <= search(pruner) <= 0.65
    assert pruner.resource_weight > 5.0
    with pytest.raises(ValueError, match="resource_weight_adapt"):
        DMSPruner(model, 0.5, resource_weight_adapt=-1)


def test_gradient_checkpointing_gives_same_importance_and_grads():
    x = batch()
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model = tiny_llama()
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
        pruner = DMSPruner(model, 0.5)
        (model(x, labels=x).loss + pruner.resource_loss(target=0.5)).backward()
        results.append(({k: op.importance.clone() for k, op in pruner.topk.items()},
                        [p.grad.clone() for p in pruner.structure_parameters()], pruner.num_search_steps))
    (imp_a, grad_a, n_a), (imp_b, grad_b, n_b) = results
    assert n_a == n_b == 1  # one importance update per backward, also when layers are recomputed
    for k in imp_a:
        assert torch.allclose(imp_a[k], imp_b[k], rtol=1e-4, atol=1e-12), k
    for a, b in zip(grad_a, grad_b):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("field,value,match", [
    ("resource_weight", float("nan"), "resource_weight must be a finite number > 0, got nan"),
    ("resource_weight", float("inf"), "resource_weight must be a finite number > 0, got inf"),
    ("resource_weight", "1.0", "resource_weight must be a number, got '1.0'"),
    ("flops_seq_len", 0, "flops_seq_len must be an integer >= 1, got 0"),
    ("flops_seq_len", 2.5, "flops_seq_len must be an integer, got 2.5"),
    ("uniform", "no", "uniform must be a bool.*got 'no'"),
    ("uniform", 1, "uniform must be a bool.*got 1"),
    ("resource_weight_adapt", float("nan"), "resource_weight_adapt must be a finite number >= 0, got nan"),
    ("channel_multiple", 25, "channel_multiple=25 leaves the 48 MLP channels .*a single kept count"),
    ("channel_multiple", 64, "channel_multiple=64 leaves the 48 MLP channels"),
    ("temperatures", {"mlp": 0.0}, r"temperatures\['mlp'\] must be a number > 0, got 0.0"),
    ("temperatures", {"heads": float("nan")}, r"temperatures\['heads'\] must be .*got nan"),
])
def test_bad_values_are_named_before_anything_is_attached(field, value, match):
    """Before: NaN weights and flops_seq_len=0 gave NaN losses, "no" became True, a channel_multiple wider than the
    MLP froze it silently."""
    model = tiny_llama()
    with pytest.raises(ValueError, match=match):
        DMSPruner(model, 0.5, resource="flops", **{field: value})
    assert not model.model.embed_tokens._forward_hooks


def test_channel_multiple_may_not_freeze_the_hidden_size():
    with pytest.raises(ValueError, match="channel_multiple=24 leaves the 32 hidden channels"):
        DMSPruner(tiny_llama(), 0.5, prune=("heads", "hidden"), channel_multiple=24)
    DMSPruner(tiny_llama(), 0.5, prune=("heads", "mlp"), channel_multiple=24)  # 48 MLP channels: 24 or 48


def test_a_second_pruner_on_one_model_is_refused():
    model = tiny_llama()
    x = batch()
    with torch.no_grad():
        reference = model(x).logits
    first = DMSPruner(model, 0.5)
    with pytest.raises(ValueError, match="already has a DMSPruner attached.*remove"):
        DMSPruner(model, 0.4)
    first.remove()
    second = DMSPruner(model, 0.4)  # after remove(), a new search may start
    with pytest.raises(ValueError, match="already has another DMSPruner attached"):
        first.attach()
    second.remove()
    first.attach()
    first.remove()
    with torch.no_grad():
        assert torch.equal(model(x).logits, reference)  # no mask left behind


def test_prune_must_be_kinds_and_a_tiny_target_gives_a_finite_loss():
    with pytest.raises(TypeError, match="prune must be .*got 0"):
        DMSPruner(tiny_llama(), 0.5, prune=0)
    pruner = DMSPruner(tiny_llama(), 5e-324)  # a valid fraction: log R − log t, not log(R / t) = log(inf)
    loss, ratio = pruner.resource_loss().detach(), float(pruner.resource_ratio().detach())
    assert torch.isfinite(loss) and float(loss) == pytest.approx(math.log(ratio) - math.log(5e-324))
