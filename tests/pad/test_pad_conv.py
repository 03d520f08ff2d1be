"""Dynamic and partially dynamic convolution layers: DY-Conv / CondConv against an independent per-sample
reference (values and gradients) on every aggregation path, upcycling, PAD's formula, κ = 1 ≡ DY-Conv,
finalisation, the temperature schedule and argument errors (the model: tests/models/dynamic_resnet/)."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hf_dynamic import DynamicConv2d, PartialDynamicConv2d, TemperatureAnnealingCallback
from hf_dynamic.pad.conv import AGGREGATIONS, mix_kernels
from hf_dynamic.pad.interface import PartiallyDynamicLayer

GEOMETRY = dict(kernel_size=(3, 5), stride=2, padding=(1, 2), dilation=(1, 2))


def reference(layer, x, kernels, biases):
    """Per sample n, per kernel k: π from the attention written out, W(x_n) = Σ_k π_nk·W_k, one conv each."""
    att = layer.attention
    outputs = []
    for n in range(x.shape[0]):
        pooled = x[n].mean(dim=(1, 2))
        if layer.routing == "softmax":
            logits = att.fc2.weight @ torch.relu(att.fc1.weight @ pooled + att.fc1.bias) + att.fc2.bias
            pi = torch.exp(logits / layer.temperature) / torch.exp(logits / layer.temperature).sum()
        else:
            pi = 1 / (1 + torch.exp(-(att.fc.weight @ pooled + att.fc.bias)))
        weight = sum(pi[k] * kernels[k] for k in range(layer.num_kernels))
        bias = None if biases is None else sum(pi[k] * biases[k] for k in range(layer.num_kernels))
        outputs.append(F.conv2d(x[n:n + 1], weight, bias, layer.stride, layer.padding, layer.dilation))
    return torch.cat(outputs)


def grads(output, tensors):
    return torch.autograd.grad(output.square().sum(), tensors)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("routing,bias", [("softmax", False), ("softmax", True), ("sigmoid", True)])
def test_dynamic_conv_equals_per_sample_reference_in_value_and_gradient(aggregation, routing, bias):
    layer = DynamicConv2d(6, 8, num_kernels=3, bias=bias, routing=routing, temperature=3.0, aggregation=aggregation,
                          reduction=2, **GEOMETRY)
    x = torch.randn(5, 6, 11, 13, requires_grad=True)
    params = [x, *layer.parameters()]
    out, ref = layer(x), reference(layer, x, layer.weight, layer.bias)
    assert out.shape == ref.shape == (5, 8, 6, 5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads(out, params), grads(ref, params)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_grouped_conv_is_one_convolution_not_a_loop(monkeypatch):
    layer = DynamicConv2d(4, 6, 3, padding=1)
    calls = []
    original = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(k.get("groups", a[6] if len(a) > 6 else 1))
                        or original(*a, **k))
    layer(torch.randn(7, 4, 8, 8))
    assert calls == [7]


@pytest.mark.parametrize("cls", [DynamicConv2d, PartialDynamicConv2d])
def test_upcycling_a_conv_is_exact_with_softmax_routing(cls):
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1, bias=True)
    layer = cls.from_conv(conv, num_kernels=4)
    x = torch.randn(4, 5, 9, 9)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-6, rtol=1e-5)
    if cls is PartialDynamicConv2d:
        assert layer.experts_tied() and torch.equal(layer.static_weight, conv.weight)


def test_pad_unpartitioned_equals_dy_conv_in_value_and_gradient():
    """κ = 1 (every mask bit dynamic, φ = 0) is Dynamic Convolution with the same kernels."""
    dy = DynamicConv2d(6, 8, bias=True, temperature=2.0, **GEOMETRY)
    pad = PartialDynamicConv2d(6, 8, bias=True, temperature=2.0, granularity="element", **GEOMETRY)
    missing = pad.load_state_dict(dy.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["mask_bias", "mask_weight", "phi", "static_bias", "static_weight"]
    x = torch.randn(3, 6, 10, 10)
    torch.testing.assert_close(pad(x), dy(x), rtol=0, atol=0)
    for got, want in zip(grads(pad(x), [pad.weight, pad.bias]), grads(dy(x), [dy.weight, dy.bias])):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def random_partition_(layer, ratio=0.3, phi=0.4, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.phi.fill_(phi)
    layer.set_partition_mask(torch.rand(layer.num_partition_entries, generator=g) < ratio)


@pytest.mark.parametrize("granularity", ["element", "filter"])
@pytest.mark.parametrize("routing", ["softmax", "sigmoid"])
def test_pad_formula_and_finalised_layout(granularity, routing):
    layer = PartialDynamicConv2d(6, 8, bias=True, routing=routing, granularity=granularity, **GEOMETRY)
    assert isinstance(layer, PartiallyDynamicLayer)
    random_partition_(layer)
    x = torch.randn(4, 6, 11, 13)
    weight_mask, bias_mask = layer.storage.unflatten(layer, layer.partition_mask())
    lambda_d = 2 * torch.sigmoid(torch.tensor(0.4))
    lambda_s = 2 - lambda_d
    kernels = lambda_d * weight_mask * layer.weight + lambda_s * ~weight_mask * layer.static_weight
    biases = lambda_d * bias_mask * layer.bias + lambda_s * ~bias_mask * layer.static_bias
    masked = layer(x)
    torch.testing.assert_close(masked, reference(layer, x, kernels, biases), atol=1e-5, rtol=1e-5)

    counts = layer.finalize_()
    assert layer.layout == "finalized" and counts == layer.partition_counts()
    dynamic = int(bias_mask.sum())
    if granularity == "filter":
        assert counts == {"dynamic_filters": dynamic}
        assert layer.weight.shape == (layer.num_kernels, dynamic, 6, 3, 5)
        assert layer.static_weight.shape == (8 - dynamic, 6, 3, 5) and layer.mask_filters.dtype == torch.uint8
    else:
        assert counts == {"weight": int(weight_mask.sum()), "bias": dynamic}
        assert layer.weight.shape == (layer.num_kernels, counts["weight"]) and layer.mask_weight.dtype == torch.uint8
        assert layer.static_weight.shape == (weight_mask.numel() - counts["weight"],)
    finalised = layer(x)
    torch.testing.assert_close(finalised, masked, atol=1e-6, rtol=1e-5)
    # the filter layout's split forward (static filters as one conv) equals the merged kernels' mixture
    full_kernels, full_biases = layer.kernels()
    torch.testing.assert_close(full_kernels, kernels, atol=1e-6, rtol=1e-6)
    generic = mix_kernels(x, layer.routing_weights(x), full_kernels, full_biases, layer.stride, layer.padding,
                          layer.dilation)
    torch.testing.assert_close(finalised, generic, atol=1e-5, rtol=1e-5)


def test_finalised_layer_rebuilds_from_its_counts_and_state_dict():
    layer = PartialDynamicConv2d(4, 6, 3, padding=1, granularity="element")
    random_partition_(layer)
    counts = layer.finalize_()
    rebuilt = PartialDynamicConv2d(4, 6, 3, padding=1, granularity="element", layout="finalized",
                                   partition_counts=counts)
    rebuilt.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 7, 7)
    assert torch.equal(rebuilt(x), layer(x))
    with pytest.raises(ValueError, match=r"pad_partition\['0'\] must give \['weight'\]"):
        PartialDynamicConv2d(4, 6, 3, layout="finalized", partition_counts={"weight": 10_000})


def test_imp_interface_scores_have_the_mask_layout():
    layer = PartialDynamicConv2d(4, 6, 3, padding=1, bias=True, granularity="filter")
    layer.imp_begin()
    out = layer(torch.randn(3, 4, 7, 7))
    inputs = layer.imp_inputs()
    assert len(inputs) == 3 and inputs[0].shape == (6,)
    layer.imp_accumulate(torch.autograd.grad(out.square().sum(), inputs))
    assert layer.imp_scores("snip").shape == layer.imp_scores("grad_variance").shape == (6,)
    with pytest.raises(ValueError, match="score kind must be one of .* got 'magnitude'"):
        layer.imp_gradients("magnitude")
    layer.imp_end()
    with pytest.raises(ValueError, match="bool tensor of 6 entries"):
        layer.set_partition_mask(torch.ones(5, dtype=torch.bool))


def test_temperature_schedule():
    callback = TemperatureAnnealingCallback(start=30.0, end=1.0, anneal_epochs=2)
    assert [callback.temperature_at(e) for e in (0, 1, 2, 5)] == [30.0, 15.5, 1.0, 1.0]
    layer = DynamicConv2d(3, 4, 3)
    model = nn.Sequential(layer)
    assert callback.apply(model, 0.5) == pytest.approx(22.75) and layer.temperature == pytest.approx(22.75)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_kernels=0), "num_kernels must be an integer >= 1, got 0"),
    (dict(routing="relu"), "routing must be one of .* got 'relu'"),
    (dict(temperature=0.0), "temperature must be a number > 0, got 0.0"),
    (dict(temperature=-1), "temperature must be a number > 0, got -1"),
    (dict(groups=2), "groups=2: dynamic convolution supports ordinary convolutions only"),
    (dict(padding="same"), "padding='same'"),
    (dict(padding_mode="reflect"), "padding_mode='reflect'"),
    (dict(kernel_size=(3, 0)), r"kernel_size must be an integer >= 1 or a pair of them, got \(3, 0\)"),
    (dict(dilation=0), "dilation must be an integer >= 1"),
    (dict(aggregation="einsum"), "aggregation must be one of"),
    (dict(reduction=0), "reduction must be an integer >= 1, got 0"),
])
def test_bad_arguments_name_the_field_and_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DynamicConv2d(**{"in_channels": 4, "out_channels": 4, "kernel_size": 3, **kwargs})


def test_bad_temperature_and_layout_errors():
    layer = DynamicConv2d(4, 4, 3)
    with pytest.raises(ValueError, match="temperature must be a number > 0, got 0"):
        layer.set_temperature(0)
    with pytest.raises(ValueError, match="temperature must be a number > 0, got -2.0"):
        TemperatureAnnealingCallback(end=-2.0)
    with pytest.raises(ValueError, match=r"expected input \[batch, 4, height, width\]"):
        layer(torch.randn(2, 3, 5, 5))
    pad = PartialDynamicConv2d(4, 4, 3, granularity="filter")
    random_partition_(pad)
    pad.finalize_()
    with pytest.raises(ValueError, match="needs the masked layout; convolution 0 is 'finalized'"):
        pad.partition_mask()
    with pytest.raises(ValueError, match="granularity must be one of .* got 'channel'"):
        PartialDynamicConv2d(4, 4, 3, granularity="channel")
