"""Baselines (magnitude, one-shot Taylor, Wanda-sp, FLAP) at a matched parameter count, on a tiny GQA Llama: the
activation statistics, Wanda-sp scores, FLAP's fluctuation metric, global ranking and bias compensation equal
reference computations."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_dynamic.dms.baselines import (
    calibration_statistics,
    flap_compensation,
    flap_prune,
    flap_scores,
    magnitude_importance,
    match_parameter_count,
    one_shot_taylor_importance,
    wanda_sp_importance,
)
from hf_dynamic.dms.pruner import DMSPruner


def tiny():
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
    )).eval()


def test_magnitude_importance_ranks_by_weight_norm():
    model = tiny()
    with torch.no_grad():  # make MLP channel 5 of layer 1 the smallest and KV group 1 of layer 0 the largest
        m = model.model.layers[1].mlp
        for w in (m.gate_proj.weight[5], m.up_proj.weight[5], m.down_proj.weight[:, 5]):
            w.mul_(1e-3)
        a = model.model.layers[0].self_attn
        a.k_proj.weight[8:16].mul_(100)
    pruner = DMSPruner(model, 0.5, prune=("heads", "mlp"))
    magnitude_importance(pruner)
    assert int(pruner.topk["mlp"].importance[1].argmin()) == 5
    assert int(pruner.topk["heads"].importance[0].argmax()) == 1
    ref = (m.gate_proj.weight[3].pow(2).sum() + m.up_proj.weight[3].pow(2).sum() + m.down_proj.weight[:, 3].pow(2).sum())
    assert float(pruner.topk["mlp"].importance[1, 3]) == pytest.approx(float(ref.detach().sqrt()), rel=1e-5)


def test_one_shot_taylor_equals_mask_gradient_and_keeps_weights_frozen_state():
    model = tiny()
    pruner = DMSPruner(model, 0.5, prune=("heads", "mlp"))
    ids = [torch.randint(0, 64, (2, 8)) for _ in range(2)]
    one_shot_taylor_importance(pruner, ids)
    assert all(p.requires_grad for p in model.parameters())  # restored
    assert all(p.grad is None for p in model.parameters())
    # reference for the MLP: d loss / d (channel scale) at scale 1, by hand with a multiplier on down_proj input
    expected = torch.zeros(2, 48)
    for x in ids:
        scales = [torch.ones(48, requires_grad=True) for _ in range(2)]
        hooks = [
            layer.mlp.down_proj.register_forward_pre_hook(lambda mod, a, s=s: (a[0] * s,))
            for layer, s in zip(model.model.layers, scales)
        ]
        pruner.remove()
        model(input_ids=x, labels=x).loss.backward()
        for h in hooks:
            h.remove()
        expected += torch.stack([s.grad.pow(2) for s in scales])
        pruner.attach()
    assert torch.allclose(pruner.topk["mlp"].importance, expected / 2, rtol=1e-4, atol=1e-12)


def test_match_parameter_count():
    model = tiny()
    pruner = DMSPruner(model, 0.5, prune=("heads", "mlp"))
    magnitude_importance(pruner)
    target = int(0.7 * model.num_parameters())
    result = match_parameter_count(pruner, target)
    exported = pruner.export()
    assert exported.num_parameters() == result["params"]
    per_channel = 3 * 32
    assert abs(result["params"] - target) <= per_channel
    with pytest.raises(ValueError, match="prune"):
        magnitude_importance(DMSPruner(tiny(), 0.5))


def recorded_inputs(model, batches):
    """Every layer's o_proj / down_proj inputs on the plain model (no pruner), as [tokens, channels] float64."""
    seen = {"attn": [[] for _ in model.model.layers], "mlp": [[] for _ in model.model.layers]}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for kind, proj in (("attn", layer.self_attn.o_proj), ("mlp", layer.mlp.down_proj)):
            hooks.append(proj.register_forward_pre_hook(
                lambda mod, a, kind=kind, i=i: seen[kind][i].append(a[0].detach().double().flatten(0, 1))))
    with torch.no_grad():
        for ids in batches:
            model(input_ids=ids)
    for h in hooks:
        h.remove()
    return {kind: [torch.cat(x) for x in v] for kind, v in seen.items()}


def calibrated(uniform):
    model = tiny()
    batches = [torch.randint(0, 64, (2, 7)) for _ in range(2)]
    x = recorded_inputs(model, batches)
    pruner = DMSPruner(model, 0.5, prune=("heads", "mlp"), uniform=uniform)
    return model, pruner, calibration_statistics(pruner, batches), x


def test_calibration_statistics_equal_torch_mean_var_and_norm():
    _, _, stats, x = calibrated(True)
    assert stats["tokens"] == 28
    for kind in ("attn", "mlp"):
        for i, xi in enumerate(x[kind]):
            torch.testing.assert_close(stats[kind]["mean"][i], xi.mean(0))
            torch.testing.assert_close(stats[kind]["var"][i], xi.var(0, unbiased=True))
            torch.testing.assert_close(stats[kind]["sq_norm"][i], xi.pow(2).sum(0))


def test_wanda_sp_scores_equal_the_reference_sum_of_weight_times_activation_norm():
    model, pruner, stats, x = calibrated(True)
    wanda_sp_importance(pruner, stats)
    for i, layer in enumerate(model.model.layers):
        w_o, w_d = layer.self_attn.o_proj.weight.detach().double(), layer.mlp.down_proj.weight.detach().double()
        for g in range(2):  # KV group g owns query heads 2g, 2g+1 = o_proj columns [16g, 16g + 16)
            ref = sum(float(w_o[r, c].abs() * x["attn"][i][:, c].norm()) for r in range(32)
                      for c in range(16 * g, 16 * g + 16))
            assert float(pruner.topk["heads"].importance[i, g]) == pytest.approx(ref, rel=1e-5)
        ref = (w_d.abs() * x["mlp"][i].norm(dim=0)).sum(0)
        torch.testing.assert_close(pruner.topk["mlp"].importance[i], ref.float())
    with pytest.raises(ValueError, match="head_grouping"):
        wanda_sp_importance(DMSPruner(tiny(), 0.5, prune=("heads", "mlp"), head_grouping="query"), stats)


def test_flap_fluctuation_metric_equals_the_reference():
    model, pruner, stats, x = calibrated(False)
    scores = flap_scores(pruner, stats)
    for i, layer in enumerate(model.model.layers):
        w_o, w_d = layer.self_attn.o_proj.weight.detach().double(), layer.mlp.down_proj.weight.detach().double()
        for g in range(2):
            ref = sum(float(x["attn"][i][:, c].var() * w_o[:, c].pow(2).sum()) for c in range(16 * g, 16 * g + 16))
            assert float(scores["heads"][i, g]) == pytest.approx(ref, rel=1e-6)
        for c in (0, 17, 47):
            ref = float(x["mlp"][i][:, c].var() * w_d[:, c].pow(2).sum())
            assert float(scores["mlp"][i, c]) == pytest.approx(ref, rel=1e-6)


def test_flap_global_ranking_meets_the_parameter_budget_with_one_threshold():
    model, pruner, stats, _ = calibrated(False)
    target, extra = int(0.7 * model.num_parameters()), 2 * 32 * 2  # o_proj + down_proj biases, 2 layers
    result = flap_prune(pruner, stats, target, extra_params=extra)
    assert abs(result["params"] - target) <= 0.01 * target
    assert result["params"] == int(pruner.resource(hard=True, kind="params")) + extra
    assert len(set(result["mlp"])) > 1  # non-uniform widths
    raw = flap_scores(pruner, stats)
    z = {k: (v - v.mean(-1, keepdim=True)) / v.std(-1, keepdim=True) for k, v in raw.items()}
    hard = pruner.masks("hard")
    kept_scores, dropped_scores = [], []
    for kind, mask in (("heads", hard["heads_kv"]), ("mlp", hard["mlp"])):
        assert mask.sum(-1).tolist() == [float(c) for c in result[kind]]
        for i in range(2):
            best = int(z[kind][i].argmax())  # always kept, whatever its global rank
            assert mask[i, best] == 1
            for j in range(mask.shape[1]):
                if j != best:
                    (kept_scores if mask[i, j] else dropped_scores).append(float(z[kind][i, j]))
    assert min(kept_scores) >= max(dropped_scores)  # one global threshold on the standardised scores
    with pytest.raises(ValueError, match="uniform=False"):
        flap_prune(DMSPruner(tiny(), 0.5, prune=("heads", "mlp")), stats, target)


def test_flap_compensation_is_the_removed_columns_times_their_mean():
    model, pruner, stats, x = calibrated(False)
    flap_prune(pruner, stats, int(0.7 * model.num_parameters()))
    bias = flap_compensation(pruner, stats)
    hard = pruner.masks("hard")
    for i, layer in enumerate(model.model.layers):
        removed_o = hard["heads_q"][i].repeat_interleave(8) == 0
        removed_d = hard["mlp"][i] == 0
        ref_o = layer.self_attn.o_proj.weight.detach().double()[:, removed_o] @ x["attn"][i][:, removed_o].mean(0)
        ref_d = layer.mlp.down_proj.weight.detach().double()[:, removed_d] @ x["mlp"][i][:, removed_d].mean(0)
        torch.testing.assert_close(bias["o_proj"][i], ref_o)
        torch.testing.assert_close(bias["down_proj"][i], ref_d)
