"""hf_dynamic's experts kernel (``hf_dynamic_grouped_mm``): equal to the eager reference loop in value and gradient,
fp64 gradcheck, edge cases (no tokens, idle experts, top-k = E, non-contiguous inputs, half precision), use by
transformers' own MoE models, PartialMoEBert's default, and PAD element mode's inference cache."""

import pytest
import torch
import transformers
from transformers.activations import ACT2FN

import hf_dynamic  # noqa: F401  (registers the kernel)
from hf_dynamic import PartialMoEBertConfig, PartialMoEBertForSequenceClassification
from hf_dynamic.pad.experts import (
    EXPERTS_IMPLEMENTATION,
    ExpertWeights,
    eager_experts_forward,
    experts_config,
    experts_forward,
    sorted_grouped_mm_experts_forward,
)
from hf_dynamic.pad.layers import PartialDynamicFFN


def make_case(experts, top_k, tokens, hidden, ffn, dtype=torch.float32, down_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def param(*shape):
        return (torch.randn(*shape, generator=g) * 0.5).to(dtype).requires_grad_(True)

    weights = ExpertWeights(experts_config(), param(experts, ffn, hidden), param(experts, ffn),
                            param(experts, hidden, ffn), param(experts, hidden) if down_bias else None,
                            ACT2FN["gelu"])
    x = torch.randn(tokens, hidden, generator=g).to(dtype).requires_grad_(True)
    probs = torch.softmax(torch.randn(tokens, experts, generator=g), dim=-1)
    w, index = probs.topk(top_k, dim=-1)
    w = (w / w.sum(-1, keepdim=True)).to(dtype).requires_grad_(True)
    return weights, x, index, w


def inputs_of(weights, x, w):
    tensors = [x, w, weights.up_proj, weights.up_proj_bias, weights.down_proj]
    return tensors + ([weights.down_proj_bias] if weights.down_proj_bias is not None else [])


def run(function, weights, x, index, w, grad_out):
    out = function(weights, x, index, w)
    grads = torch.autograd.grad(out, inputs_of(weights, x, w), grad_out)
    return [out, *grads]


def assert_all_close(ours, reference, atol, rtol):
    names = ["output", "dx", "d_weights", "d_up", "d_up_bias", "d_down", "d_down_bias"]
    for name, a, b in zip(names, ours, reference):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("experts", [4, 8, 16])
@pytest.mark.parametrize("top_k", [1, 2])
def test_equals_eager_reference_values_and_gradients(experts, top_k):
    # hidden 20 / ffn 30 are not multiples of 8: the kernel's internal padding is exercised too
    weights, x, index, w = make_case(experts, top_k, tokens=97, hidden=20, ffn=30)
    grad_out = torch.randn(97, 20)
    ours = run(sorted_grouped_mm_experts_forward, weights, x, index, w, grad_out)
    reference = run(eager_experts_forward, weights, x, index, w, grad_out)
    assert_all_close(ours, reference, atol=2e-5, rtol=2e-5)


def test_fp64_equals_reference_to_rounding_and_passes_gradcheck():
    weights, x, index, w = make_case(4, 2, tokens=9, hidden=5, ffn=6, dtype=torch.float64)
    grad_out = torch.randn(9, 5, dtype=torch.float64)
    ours = run(sorted_grouped_mm_experts_forward, weights, x, index, w, grad_out)
    reference = run(eager_experts_forward, weights, x, index, w, grad_out)
    assert_all_close(ours, reference, atol=1e-12, rtol=1e-12)

    def as_function(function):
        def f(x, w, up, up_bias, down, down_bias):
            return function(ExpertWeights(experts_config(), up, up_bias, down, down_bias, ACT2FN["gelu"]), x, index, w)
        return f

    for function in (sorted_grouped_mm_experts_forward, eager_experts_forward):
        assert torch.autograd.gradcheck(as_function(function), tuple(inputs_of(weights, x, w)))


def test_top_k_equal_to_experts_and_idle_experts():
    weights, x, index, w = make_case(4, 4, tokens=10, hidden=8, ffn=16)
    grad_out = torch.randn(10, 8)
    assert_all_close(run(sorted_grouped_mm_experts_forward, weights, x, index, w, grad_out),
                     run(eager_experts_forward, weights, x, index, w, grad_out), atol=2e-5, rtol=2e-5)
    # every token on experts 1 and 3: experts 0 and 2 get exactly zero gradient, no garbage
    index = torch.tensor([[1, 3]] * 10)
    w = torch.full((10, 2), 0.5, requires_grad=True)
    ours = run(sorted_grouped_mm_experts_forward, weights, x, index, w, grad_out)
    assert_all_close(ours, run(eager_experts_forward, weights, x, index, w, grad_out), atol=2e-5, rtol=2e-5)
    d_up = ours[3]
    assert torch.all(d_up[[0, 2]] == 0) and torch.all(torch.isfinite(d_up))


def test_no_tokens_gives_empty_output():
    weights, x, index, w = make_case(4, 2, tokens=0, hidden=8, ffn=16)
    out = sorted_grouped_mm_experts_forward(weights, x, index, w)
    assert out.shape == (0, 8)


def test_non_contiguous_inputs():
    weights, x, index, w = make_case(4, 2, tokens=12, hidden=8, ffn=16)
    x_nc = torch.randn(8, 12).t().requires_grad_(True)  # [12, 8], column-major
    index_nc = torch.stack([index[:, 1], index[:, 0]], dim=0).t()  # [12, 2], non-contiguous
    w_nc = torch.stack([w[:, 1], w[:, 0]], dim=0).t().detach().requires_grad_(False)
    assert not x_nc.is_contiguous() and not index_nc.is_contiguous() and not w_nc.is_contiguous()
    ours = sorted_grouped_mm_experts_forward(weights, x_nc, index_nc, w_nc)
    reference = eager_experts_forward(weights, x_nc.contiguous(), index_nc.contiguous(), w_nc.contiguous())
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_matches_fp32_reference(dtype, atol):
    weights, x, index, w = make_case(4, 2, tokens=64, hidden=16, ffn=32, dtype=dtype)
    grad_out = torch.randn(64, 16).to(dtype)
    ours = run(sorted_grouped_mm_experts_forward, weights, x, index, w, grad_out)
    weights32 = ExpertWeights(experts_config(), *(t.detach().float().requires_grad_(True) for t in
                                (weights.up_proj, weights.up_proj_bias, weights.down_proj, weights.down_proj_bias)),
                              ACT2FN["gelu"])
    x32, w32 = x.detach().float().requires_grad_(True), w.detach().float().requires_grad_(True)
    reference = run(eager_experts_forward, weights32, x32, index, w32, grad_out.float())
    for a, b in zip(ours, reference):
        assert a.dtype == dtype and torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), b, atol=atol * float(b.detach().abs().max()), rtol=0)


def test_missing_down_bias_equals_zero_bias():
    weights, x, index, w = make_case(4, 2, tokens=20, hidden=8, ffn=16, down_bias=False)
    zero = weights.with_down_bias()
    assert torch.equal(zero.down_proj_bias, torch.zeros(4, 8))
    for implementation in ("eager", "grouped_mm", EXPERTS_IMPLEMENTATION):
        torch.testing.assert_close(experts_forward(weights, x, index, w, implementation),
                                   eager_experts_forward(zero, x, index, w), atol=2e-5, rtol=2e-5)


def test_bad_shapes_raise():
    weights, x, index, w = make_case(4, 2, tokens=5, hidden=8, ffn=16)
    with pytest.raises(ValueError, match="top_k_index / top_k_weights"):
        sorted_grouped_mm_experts_forward(weights, x, index, w[:, :1])


TINY_MOE = dict(vocab_size=64, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, num_experts_per_tok=2)


@pytest.mark.parametrize("name,config", [
    ("mixtral (gated)", lambda: transformers.MixtralConfig(**TINY_MOE, num_local_experts=4)),
    ("gpt_oss (transposed, biases)", lambda: transformers.GptOssConfig(
        **TINY_MOE, num_local_experts=4, head_dim=8, layer_types=["full_attention"] * 2)),
    ("qwen3_moe", lambda: transformers.Qwen3MoeConfig(**TINY_MOE, moe_intermediate_size=16, num_experts=4)),
])
def test_transformers_moe_models_can_select_our_kernel(name, config):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config()).float()
    ids = torch.randint(0, 64, (2, 9))
    results = {}
    for implementation in ("eager", EXPERTS_IMPLEMENTATION):
        model.set_experts_implementation(implementation)
        assert model.config._experts_implementation == implementation
        model.zero_grad()
        out = model(ids, labels=ids)
        out.loss.backward()
        results[implementation] = [out.logits.detach()] + [p.grad.clone() for p in model.parameters()
                                                           if p.grad is not None]
    for a, b in zip(results["eager"], results[EXPERTS_IMPLEMENTATION]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def tiny_pad_config(**kw):
    return PartialMoEBertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, num_experts=4, num_experts_per_tok=2, **kw)


def test_partial_moe_bert_uses_our_kernel_by_default():
    model = PartialMoEBertForSequenceClassification(tiny_pad_config(dynamic_ratio=1.0))
    assert model.config._experts_implementation == EXPERTS_IMPLEMENTATION
    explicit = PartialMoEBertForSequenceClassification(tiny_pad_config(dynamic_ratio=1.0,
                                                                       experts_implementation="grouped_mm"))
    assert explicit.config._experts_implementation == "grouped_mm"


def finalized_element_layer():
    config = tiny_pad_config(dynamic_ratio=0.5, partition_granularity="element")
    layer = PartialDynamicFFN(config, 0)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.normal_(0, 0.3) if name != "phi" else p.fill_(0.2)
        layer.set_partition_mask(torch.rand(layer.num_partition_entries) < 0.5)
    layer.finalize_()
    return layer.eval()


def test_element_mode_caches_merged_weights_at_inference_only():
    layer = finalized_element_layer()
    x = torch.randn(10, 32)
    with torch.no_grad():
        first = layer.merged_expert_weights()
        assert layer.merged_expert_weights() is first  # cached
        out_cached, _ = layer(x)
    out_grad, _ = layer(x)  # gradients on: merged afresh, differentiable
    assert out_grad.requires_grad
    torch.testing.assert_close(out_cached, out_grad.detach())
    assert layer.merged_expert_weights() is not first
    # an in-place parameter update (an optimiser step) invalidates the cache
    with torch.no_grad():
        layer.up_proj.mul_(2.0)
        assert layer.merged_expert_weights() is not first
        out_after, _ = layer(x)
    torch.testing.assert_close(out_after, layer(x)[0].detach())
    assert not torch.allclose(out_after, out_cached)


def test_autocast_computes_in_the_autocast_dtype_with_fp32_gradients(monkeypatch):
    import hf_dynamic.pad.experts as experts_module

    seen = []
    original = experts_module._grouped_mm

    def spy(x, weight, offsets):
        seen.append((x.dtype, weight.dtype))
        return original(x, weight, offsets)

    monkeypatch.setattr(experts_module, "_grouped_mm", spy)
    weights, x, index, w = make_case(4, 2, tokens=32, hidden=16, ffn=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sorted_grouped_mm_experts_forward(weights, x, index, w)
    assert seen == [(torch.bfloat16, torch.bfloat16)] * 2  # both GEMMs in bf16, as nn.Linear under autocast
    assert out.dtype == torch.float32
    grads = torch.autograd.grad(out.sum(), inputs_of(weights, x, w))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    reference = eager_experts_forward(weights, x, index, w).detach()
    torch.testing.assert_close(out.detach(), reference, atol=0.02 * float(reference.abs().max()), rtol=0)
    seen.clear()
    sorted_grouped_mm_experts_forward(weights, x, index, w)
    assert seen == [(torch.float32, torch.float32)] * 2
