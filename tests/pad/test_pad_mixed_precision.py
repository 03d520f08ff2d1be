"""PAD-Net under bf16 / fp16 and the finalised element layout's inference cache (docs/pad.md, "## Mixed
precision"): λ computed in fp32, the cache never serves weights that training, ``.data`` writes or adapters
changed (no ``clear_cache()`` needed)."""

import pytest
import torch

from hf_dynamic import PartialMoEBertConfig
from hf_dynamic.pad.layers import PartialDynamicFFN

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def layer_of(granularity="element", finalized=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    config = PartialMoEBertConfig(**TINY, num_experts=4, num_experts_per_tok=2, partition_granularity=granularity)
    layer = PartialDynamicFFN(config, 0)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.normal_(0, 0.3) if name != "phi" else p.fill_(0.3)
    layer.set_partition_mask(torch.rand(layer.num_partition_entries) < 0.4)
    if finalized:
        layer.finalize_()
    return layer.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lambda_is_fp32_and_moves_smoothly_in_a_low_precision_model(dtype):
    layer = layer_of(finalized=False, dtype=dtype).train()
    with torch.no_grad():
        layer.phi.zero_()
    optimizer = torch.optim.Adam([layer.phi], lr=1e-3)  # φ moves by about 1e-3 per step
    x = torch.randn(16, 32).to(dtype)
    seen = []
    for _ in range(12):
        out, _ = layer(x)
        assert out.dtype == dtype
        out.float().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        lambda_s, lambda_d = layer.lambdas()
        assert lambda_d.dtype == torch.float32 and lambda_d.dim() == 0
        seen.append(float(lambda_d.detach()))
    steps = [abs(b - a) for a, b in zip(seen, seen[1:])]
    # in bf16 λ_d = 2σ(φ) near 1 could only move in steps of 2^-7 ≈ 0.008; in fp32 it follows φ
    assert len(set(seen)) == len(seen) and max(steps) < 2.0 ** -8
    assert float(sum(layer.lambdas()).detach()) == 2.0


def test_data_write_is_seen_in_eval_and_in_training_without_clear_cache():
    layer = layer_of().eval()
    x = torch.randn(10, 32)

    def output():
        with torch.no_grad():
            return layer(x)[0]

    def fresh():  # a layer built from the current values, with no cache
        clone = layer_of()
        clone.load_state_dict(layer.state_dict())
        with torch.no_grad():
            return clone.eval()(x)[0]

    first = output()
    assert torch.equal(output(), first)  # served from the cache
    # a write through .data (which no autograd version counter records) is seen: the cache compares contents
    layer.static_up.data.mul_(2.0)
    second = output()
    assert not torch.allclose(second, first) and torch.equal(second, fresh())
    # training never serves the cache; eval() drops it
    layer.train()
    layer.up_proj.data.add_(0.5)
    with torch.no_grad():
        torch.testing.assert_close(layer(x)[0], fresh(), rtol=0, atol=0)
    layer.eval()
    third = output()
    assert not torch.allclose(third, second) and torch.equal(third, fresh())
    # in-place edits under no_grad, optimiser steps and load_state_dict are seen without clear_cache()
    with torch.no_grad():
        layer.static_down.mul_(0.5)
    assert torch.equal(output(), fresh())
    state = {k: v * 1.1 if v.is_floating_point() else v for k, v in layer.state_dict().items()}
    layer.load_state_dict(state)
    assert torch.equal(output(), fresh())


def test_neuron_split_follows_a_mask_written_through_data():
    """The masked neuron layout caches the static/dynamic neuron split; a mask written through ``.data`` is seen."""
    layer = layer_of("neuron", finalized=False).eval()
    x = torch.randn(10, 32)
    with torch.no_grad():
        before = layer(x)[0]
        layer.mask_neurons.data[:8] = ~layer.mask_neurons.data[:8]
        after = layer(x)[0]
        clone = layer_of("neuron", finalized=False)
        clone.load_state_dict(layer.state_dict())
        assert not torch.allclose(after, before) and torch.equal(after, clone.eval()(x)[0])


def test_cache_is_never_used_with_gradients_or_frozen_weights():
    layer = layer_of().eval()
    layer.requires_grad_(False)  # frozen base weights (a PEFT model): gradients still flow to the input
    x = torch.randn(10, 32, requires_grad=True)
    layer(x)[0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert layer.storage.merged.value is None
