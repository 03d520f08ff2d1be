"""Baselines (magnitude, one-shot Taylor) at a matched parameter count, on a tiny GQA Llama."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_dynamic.dms.baselines import magnitude_importance, match_parameter_count, one_shot_taylor_importance
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
