"""Nested widths: function-preserving ordering, sliced computation equal to physically sliced weights, errors."""

import copy

import pytest
import torch
from slim_testing import tiny_bert, tiny_llama, tokens
from transformers import LlamaForCausalLM

from hf_dynamic.slim.modeling import (
    SlimmableLinear, get_width, head_group_importance, make_slimmable, set_width, slim_layers, width,
)


def bert_reference(model, heads, channels):
    """A stock BERT built by physically slicing the (ordered) weights: heads via a smaller head count in a
    hand-made attention (BERT's config cannot say it), so the reference re-runs BertSelfAttention's math."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer in ref.bert.encoder.layer:
            att = layer.attention.self
            size = att.attention_head_size
            for name in ("query", "key", "value"):
                old = getattr(att, name)
                new = torch.nn.Linear(old.in_features, heads * size)
                new.weight.copy_(old.weight[: heads * size]); new.bias.copy_(old.bias[: heads * size])
                setattr(att, name, new)
            old = layer.attention.output.dense
            new = torch.nn.Linear(heads * size, old.out_features)
            new.weight.copy_(old.weight[:, : heads * size]); new.bias.copy_(old.bias)
            layer.attention.output.dense = new
            old = layer.intermediate.dense
            new = torch.nn.Linear(old.in_features, channels)
            new.weight.copy_(old.weight[:channels]); new.bias.copy_(old.bias[:channels])
            layer.intermediate.dense = new
            old = layer.output.dense
            new = torch.nn.Linear(channels, old.out_features)
            new.weight.copy_(old.weight[:, :channels]); new.bias.copy_(old.bias)
            layer.output.dense = new
    return ref


def llama_reference(model, groups, channels):
    """A stock LlamaForCausalLM with fewer heads / KV heads / channels holding the sliced ordered weights."""
    cfg = copy.deepcopy(model.config)
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    cfg.num_key_value_heads, cfg.num_attention_heads, cfg.intermediate_size = groups, groups * rep, channels
    ref = LlamaForCausalLM(cfg).eval()
    d = cfg.head_dim
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("q_proj.weight"):
            v = v[: groups * rep * d]
        elif k.endswith(("k_proj.weight", "v_proj.weight")):
            v = v[: groups * d]
        elif k.endswith("o_proj.weight"):
            v = v[:, : groups * rep * d]
        elif k.endswith(("gate_proj.weight", "up_proj.weight")):
            v = v[:channels]
        elif k.endswith("down_proj.weight"):
            v = v[:, :channels]
        state[k] = v
    ref.load_state_dict(state)
    return ref


def test_ordering_preserves_function_and_sorts_importance():
    for build, run in ((tiny_bert, lambda m, x: m(input_ids=x).logits), (tiny_llama, lambda m, x: m(x).logits)):
        model = build()
        x = tokens()
        with torch.no_grad():
            before = run(model, x)
            make_slimmable(model)
            after = run(model, x)
        torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
        for layer in slim_layers(model):
            scores = head_group_importance(layer)
            assert torch.all(scores[:-1] >= scores[1:])
        assert sum(isinstance(m, SlimmableLinear) for m in model.modules()) > 0
        # the parameter names (the state dict) are the stock model's
        assert set(model.state_dict()) == set(build().state_dict())


@pytest.mark.parametrize("w, heads, channels", [(0.5, 2, 20), (0.75, 3, 30), (0.25, 1, 10)])
def test_bert_width_equals_physically_sliced_reference(w, heads, channels):
    model = make_slimmable(tiny_bert())
    x = tokens()
    mask = torch.ones_like(x); mask[1, 7:] = 0
    ref = bert_reference(model, heads, channels)
    with torch.no_grad(), width(model, w) as counts:
        got = model(input_ids=x, attention_mask=mask).logits
    assert counts == [(heads, channels)] * 2
    torch.testing.assert_close(got, ref(input_ids=x, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)
    # the width is restored after the block
    assert get_width(model) == [(4, 40)] * 2


@pytest.mark.parametrize("w, groups, channels", [(0.5, 1, 24), (0.75, 2, 36)])
def test_llama_gqa_width_equals_physically_sliced_reference(w, groups, channels):
    model = make_slimmable(tiny_llama())
    x = tokens()
    ref = llama_reference(model, groups, channels)
    set_width(model, w)
    with torch.no_grad():
        got = model(x).logits
    torch.testing.assert_close(got, ref(x).logits, atol=1e-5, rtol=1e-5)


def test_per_layer_widths_and_sliced_weights_are_real():
    model = make_slimmable(tiny_llama())
    counts = set_width(model, {0: 0.5, 2: {"attention": 1.0, "mlp": 0.25}})
    assert counts == [(1, 24), (2, 48), (2, 12)]
    assert get_width(model) == counts
    # a smaller dense computation: the projection's input really has 12 features
    seen = {}
    down = model.model.layers[2].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda m, args: seen.update(shape=args[0].shape))
    with torch.no_grad():
        model(tokens())
    handle.remove()
    assert seen["shape"][-1] == 12


@pytest.mark.parametrize("bad, message", [
    (0.0, "width must be a number > 0 and <= 1, got 0.0"),
    (1.5, "width must be a number > 0 and <= 1, got 1.5"),
    ("0.5", "width must be a number"),
    (0.01, "width=0.01 keeps 0 of 2 attention head groups of layer 0"),
    ({5: 0.5}, "widths has unknown layer 5"),
    ({0: -0.1}, r"widths\[0\] must be a number > 0"),
    ({0: {"ffn": 0.5}}, "unknown keys"),
])
def test_bad_widths_are_value_errors_before_any_change(bad, message):
    model = make_slimmable(tiny_llama())
    with pytest.raises(ValueError, match=message):
        set_width(model, bad)
    assert get_width(model) == [(2, 48)] * 3


def test_not_slimmable_and_twice_are_errors():
    model = tiny_bert()
    with pytest.raises(ValueError, match="not slimmable"):
        set_width(model, 0.5)
    make_slimmable(model)
    with pytest.raises(ValueError, match="already slimmable"):
        make_slimmable(model)
    with pytest.raises(TypeError, match="BERT-family"):
        make_slimmable(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_trained_slimmable_model_round_trips_without_reordering(tmp_path):
    model = make_slimmable(tiny_llama())
    model.save_pretrained(tmp_path)
    loaded = make_slimmable(LlamaForCausalLM.from_pretrained(tmp_path).eval(), reorder=False)
    x = tokens()
    with torch.no_grad(), width(model, 0.5), width(loaded, 0.5):
        torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)
