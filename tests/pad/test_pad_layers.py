"""The partially dynamic MoE FFN: κ=1 ≡ an independent top-k MoE, PAD layer maths in every layout, λ."""

import pytest
import torch
from torch.nn import functional as F

from hf_dynamic import PartialMoEBertConfig, PartialMoEBertModel
from hf_dynamic.pad.layers import PartialDynamicFFN

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def tiny_config(**kw):
    return PartialMoEBertConfig(**{**TINY, "num_experts": 4, "num_experts_per_tok": 2, **kw})


# ----------------------------------------------------------------------------------------------------- reference
def reference_moe(x, router_w, up, up_b, down, down_b, k):
    """Independent top-k MoE: per token, per chosen expert, BERT FFN, renormalised softmax weights."""
    probs = torch.softmax(x @ router_w.T, -1)
    top_v, top_i = probs.topk(k, -1)
    top_v = top_v / top_v.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(k):
            e = int(top_i[t, j])
            h = F.gelu(up[e] @ x[t] + up_b[e])
            out[t] += top_v[t, j] * (down[e] @ h + down_b[e])
    return out


def random_layer(config, std=0.3):
    layer = PartialDynamicFFN(config, 0)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.normal_(0, std) if name != "phi" else p.fill_(0.3)
    return layer.eval()


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm", "hf_dynamic_grouped_mm"])
def test_kappa_one_equals_reference_moe(implementation):
    config = tiny_config(dynamic_ratio=1.0, experts_implementation=implementation)
    layer = random_layer(config)
    assert layer.layout == "moe" and not hasattr(layer, "static_up") and not hasattr(layer, "phi")
    x = torch.randn(11, 32)
    out, logits = layer(x)
    ref = reference_moe(x, layer.router.weight, layer.up_proj, layer.up_proj_bias, layer.down_proj,
                        layer.down_proj_bias, 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, x @ layer.router.weight.T)


def pad_reference(layer, x, mask_parts):
    """The formula W_i = λ_d·M⊙W_i + λ_s·(1−M)⊙W_s, then the reference MoE."""
    lam_d = 2 * torch.sigmoid(layer.phi)
    lam_s = 2 - lam_d
    merged = {}
    for part, static, expert in [("up", "static_up", "up_proj"), ("up_bias", "static_up_bias", "up_proj_bias"),
                                 ("down", "static_down", "down_proj"),
                                 ("down_bias", "static_down_bias", "down_proj_bias")]:
        m = mask_parts[part].float()
        dyn = getattr(layer, expert) if hasattr(layer, expert) else torch.zeros(4, *m.shape)
        merged[part] = lam_d * m * dyn + lam_s * (1 - m) * getattr(layer, static)
    return reference_moe(x, layer.router.weight, merged["up"], merged["up_bias"], merged["down"],
                         merged["down_bias"], 2)


@pytest.mark.parametrize("granularity", ["element", "neuron"])
@pytest.mark.parametrize("implementation", ["eager", "grouped_mm", "hf_dynamic_grouped_mm"])
def test_pad_layer_matches_formula_masked_and_finalized(granularity, implementation):
    config = tiny_config(partition_granularity=granularity, experts_implementation=implementation)
    layer = random_layer(config)
    flat = torch.rand(layer.num_partition_entries) < 0.4
    layer.set_partition_mask(flat)
    if granularity == "neuron":
        m = flat
        parts = {"up": m[:, None].expand(64, 32), "up_bias": m, "down": m[None, :].expand(32, 64),
                 "down_bias": torch.zeros(32, dtype=torch.bool)}
    else:
        parts = {}
        offset = 0
        for part, shape in [("up", (64, 32)), ("up_bias", (64,)), ("down", (32, 64)), ("down_bias", (32,))]:
            n = torch.Size(shape).numel()
            parts[part] = flat[offset:offset + n].view(shape)
            offset += n
    x = torch.randn(13, 32)
    with torch.no_grad():
        ref = pad_reference(layer, x, parts)
        masked, _ = layer(x)
        torch.testing.assert_close(masked, ref, atol=1e-5, rtol=1e-5)
        layer.finalize_()
        final, _ = layer(x)
    torch.testing.assert_close(final, ref, atol=1e-5, rtol=1e-5)
    if granularity == "neuron":
        assert layer.up_proj.shape == (4, int(flat.sum()), 32)
        assert layer.static_up.shape == (64 - int(flat.sum()), 32)
    else:
        assert layer.mask_up.dtype == torch.uint8 and layer.mask_up.numel() == 64 * 32 // 8
        assert layer.up_proj.shape == (4, int(parts["up"].sum()))


def test_lambdas_sum_to_two_and_phi_starts_at_zero():
    layer = PartialMoEBertModel(tiny_config()).pad_layers()[0]
    assert float(layer.phi.detach()) == 0.0
    lam_s, lam_d = layer.lambdas()
    assert float(lam_s.detach()) == 1.0 and float(lam_d.detach()) == 1.0
    with torch.no_grad():
        layer.phi.fill_(-1.7)
    lam_s, lam_d = layer.lambdas()
    assert abs(float((lam_s + lam_d).detach()) - 2.0) < 1e-7 and float(lam_d.detach()) < 1.0
