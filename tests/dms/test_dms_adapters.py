"""Architecture adapters: every supported family searched for a few steps on a tiny random config, exported as its
stock class, logits equal to the hard-masked model's; an unsupported architecture is named."""

import warnings

import pytest
import torch
import transformers

from hf_dynamic.dms.adapters import ADAPTERS, adapter_for, head_dim
from hf_dynamic.dms.pruner import DMSPruner

VOCAB = 64
FAMILIES = {  # model_type -> (config class, model class, extra config)
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"attention_bias": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
}


def tiny(model_type):
    config_name, model_name, extra = FAMILIES[model_type]
    config = getattr(transformers, config_name)(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=False, use_cache=False,
        **extra,
    )
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that slicing them wrongly shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_()
    return model


def test_table_covers_the_supported_families():
    assert set(ADAPTERS) == set(FAMILIES)
    assert ADAPTERS["qwen3"].head_norms == ("self_attn.q_norm", "self_attn.k_norm")
    qwen2 = tiny("qwen2").config
    assert ADAPTERS["qwen2"].has_bias(qwen2, "qkv") and not ADAPTERS["qwen2"].has_bias(qwen2, "o")
    layout = ADAPTERS["llama"].head_layout(tiny("llama").config)
    assert (layout.num_heads, layout.num_kv_heads, layout.head_dim, layout.group_size) == (4, 2, 8, 2)


@pytest.mark.parametrize("model_type", list(FAMILIES))
@pytest.mark.parametrize("grouping", ["kv", "query"])
def test_search_then_uniform_export_equals_hard_masked_model(model_type, grouping):
    model = tiny(model_type)
    pruner = DMSPruner(model, 0.4, head_grouping=grouping)
    assert pruner.full_resource == model.num_parameters()  # the formula describes the family exactly
    opt = torch.optim.Adam(pruner.structure_parameters(), lr=0.2)
    x = torch.randint(0, VOCAB, (2, 10))
    for _ in range(4):  # a short search on the frozen model
        loss = model(x, labels=x).loss + pruner.resource_loss(target=0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.clamp_()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        exported = pruner.export()
    assert type(exported) is type(model)
    assert exported.config.model_type == model_type and exported.config.use_cache is True
    assert exported.num_parameters() == int(pruner.resource(hard=True)) < model.num_parameters()
    assert exported.config.hidden_size < 32  # the search pruned the residual stream too
    with torch.no_grad():
        logits = exported(x).logits
        with pruner.hard_masks():
            reference = model(x).logits
    assert (logits - reference).abs().max() <= 1e-5


def test_unsupported_architecture_names_type_and_supported_list():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel \(model_type='gpt2'\).*llama.*mistral.*qwen2.*qwen3"):
        adapter_for(gpt2)
    llama = tiny("llama")
    del llama.model.layers[1].mlp.up_proj
    with pytest.raises(ValueError, match="layer 1 has no mlp.up_proj"):
        DMSPruner(llama, 0.5)


def test_head_dim_fallback():
    config = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4)
    config.head_dim = None
    assert head_dim(config) == 8
