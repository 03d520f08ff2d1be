"""``slimmable_llama``: ``from_dense``, the width a checkpoint loads at, export to the stock class (uniform) and to
``dms_llama`` (per layer), and generation at a narrow width (``docs/slim.md``, "## Registered model types")."""

import copy

import torch
from slim_testing import TINY_LLAMA, tiny_llama, tokens
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import hf_dynamic  # noqa: F401  (registers dms_llama, the per-layer export)
from hf_dynamic import slim
from hf_dynamic.models.slimmable_llama import SlimmableLlamaConfig, SlimmableLlamaForCausalLM, SlimmableLlamaModel

PER_LAYER = {0: 0.5, 2: {"mlp": 0.25}}

# State dicts are compared bit for bit; the logits of two separately built models up to rounding (the MiniLM
# example differed by 7e-9 in one run).
SAME = dict(rtol=0, atol=1e-6)


def logits(model, x, widths=1.0):
    with torch.no_grad(), slim.width(model, widths):
        return model(x).logits


def test_from_dense_orders_as_make_slimmable_and_full_width_is_the_dense_model():
    dense = tiny_llama()
    model = SlimmableLlamaForCausalLM.from_dense(dense, slim_width=PER_LAYER)
    reference = slim.make_slimmable(copy.deepcopy(dense))
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert slim.get_width(model) == [(1, 24), (2, 48), (2, 12)]  # of 2 KV groups and 48 channels
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, logits(reference, x, PER_LAYER), **SAME)
        torch.testing.assert_close(logits(model, x), dense(x).logits, rtol=0, atol=1e-5)


def test_checkpoint_loads_at_its_width(tmp_path):
    model = SlimmableLlamaForCausalLM.from_dense(tiny_llama(), slim_width=PER_LAYER)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is SlimmableLlamaForCausalLM and loaded.config.slim_width == PER_LAYER
    assert slim.get_width(loaded) == slim.get_width(model)
    x = tokens()
    for widths in (1.0, 0.5, PER_LAYER):
        torch.testing.assert_close(logits(loaded, x, widths), logits(model, x, widths), **SAME)


def test_exports_are_the_stock_class_and_dms_llama():
    model = SlimmableLlamaForCausalLM.from_dense(tiny_llama(), slim_width=0.5)
    x = tokens()
    uniform = slim.export_width(model, 0.5)
    assert type(uniform) is LlamaForCausalLM and type(uniform.config) is LlamaConfig
    assert (uniform.config.num_key_value_heads, uniform.config.num_attention_heads) == (1, 2)
    assert not hasattr(uniform.config, "slim_width")
    per_layer = slim.export_width(model, PER_LAYER)
    assert per_layer.config.model_type == "dms_llama" and not hasattr(per_layer.config, "slim_width")
    assert per_layer.config.layer_intermediate_sizes == [24, 48, 12]
    with torch.no_grad():
        torch.testing.assert_close(uniform(x).logits, logits(model, x, 0.5), rtol=0, atol=1e-5)
        torch.testing.assert_close(per_layer(x).logits, logits(model, x, PER_LAYER), rtol=0, atol=1e-5)


def test_greedy_generation_at_half_width_is_the_exported_models():
    """Generation (KV cache included) runs at the model's width: the same tokens as the stock half-width model."""
    model = SlimmableLlamaForCausalLM.from_dense(tiny_llama(), slim_width=0.5).eval()
    small = slim.export_width(model, 0.5)
    prompt = tokens(2, 5)
    with torch.no_grad():
        expected = small.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        actual = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        with slim.width(model, 1.0):
            wide = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(actual, expected)
    assert not torch.equal(wide, actual)


def test_base_model_class_is_slimmable_too():
    torch.manual_seed(0)
    model = SlimmableLlamaModel(SlimmableLlamaConfig(**TINY_LLAMA, slim_width={1: {"attention": 0.5}})).eval()
    assert slim.get_width(model) == [(2, 48), (1, 48), (2, 48)]
    with torch.no_grad():
        assert model(tokens()).last_hidden_state.shape == (2, 10, 32)
