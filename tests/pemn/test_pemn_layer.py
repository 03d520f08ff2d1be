"""Edge-popup: exact kept fraction per layer, straight-through gradient, frozen random weights."""

import pytest
import torch

import hf_dynamic
from hf_dynamic.pemn.layer import edge_popup_mask, keep_count


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("shape", [(7,), (10, 33), (4, 3, 5, 5)])
def test_edge_popup_keeps_exactly_the_requested_fraction(shape, sparsity):
    scores = torch.randn(shape)
    mask = edge_popup_mask(scores, sparsity)
    numel = scores.numel()
    assert mask.shape == scores.shape and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int(mask.sum()) == keep_count(sparsity, numel) == max(1, round((1 - sparsity) * numel))
    kept = scores.abs()[mask.bool()]
    dropped = scores.abs()[~mask.bool()]
    assert dropped.numel() == 0 or kept.min() >= dropped.max()


def test_edge_popup_passes_the_gradient_straight_through():
    scores = torch.randn(6, 5, requires_grad=True)
    upstream = torch.randn(6, 5)
    (edge_popup_mask(scores, 0.5) * upstream).sum().backward()
    # d mask / d s = sign(s) (the straight-through estimator through |s|): every score gets a gradient, kept or not
    assert torch.equal(scores.grad, upstream * scores.detach().sign())


def test_pemn_layer_trains_scores_only_and_uses_exactly_k_weights(tiny_net, batch):
    from peft import get_peft_model

    config = hf_dynamic.PEMNConfig(target_modules=["conv", "fc1", "fc2"], strategy="mp", sparsity=0.7)
    model = get_peft_model(tiny_net(), config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".pemn_scores." in n for n in trainable)
    x, y = batch
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for name in ("conv", "fc1", "fc2"):
        layer = model.base_model.model.get_submodule(name)
        mask = layer.pemn_mask("default")
        assert int(mask.sum()) == keep_count(0.7, mask.numel())
        assert layer.pemn_scores["default"].grad is not None
        assert layer.get_base_layer().weight.grad is None
        weight, bias = layer.pemn_weight("default")
        assert bias is None  # random_bias=False drops the biases
        assert int((weight != 0).sum()) == int(mask.sum())


def test_seeded_bias_and_merge_and_unload_compute_the_same_function(tiny_net, batch):
    from peft import get_peft_model

    config = hf_dynamic.PEMNConfig(target_modules=["conv", "fc1", "fc2"], strategy="one_layer", random_bias=True)
    model = get_peft_model(tiny_net(), config)
    x, _ = batch
    expected = model(x)
    assert model.base_model.model.fc1.pemn_frozen["default"].bias is not None
    with model.disable_adapter():
        assert not torch.allclose(model(x), expected)
    merged = model.merge_and_unload()
    assert type(merged.fc1) is torch.nn.Linear
    torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("kwargs", [
    {"padding": 1}, {"padding": (2, 1), "stride": 2}, {"padding": "same", "dilation": 2},
    {"padding": "same", "kernel_size": (2, 4)}, {"padding": "valid", "groups": 2},
])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's, for the layer itself too
def test_conv2d_like_is_the_layers_own_convolution(padding_mode, kwargs):
    """PEMN's convolution is built from nn.Conv2d's public attributes (not its private _conv_forward): with the
    layer's own weight it gives exactly the layer's output, for every padding mode, padding, stride and group."""
    from hf_dynamic.pemn.layer import conv2d_like

    kwargs = {"kernel_size": 3, **kwargs}
    conv = torch.nn.Conv2d(4, 6, padding_mode=padding_mode, **kwargs)
    x = torch.randn(2, 4, 9, 8)
    assert torch.equal(conv2d_like(conv, x, conv.weight, conv.bias), conv(x))
