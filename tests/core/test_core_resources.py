"""Resource formulas (hf_dynamic.core.resources) against real counts: parameters and FlopCounterMode FLOPs."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_dynamic.core.resources import count_parameters, llama_forward_flops, llama_param_count, measured_forward_flops
from hf_dynamic.models.dms_llama import DMSLlamaConfig, DMSLlamaForCausalLM


def _widths(config):
    return dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, head_dim=config.head_dim,
        num_layers=config.num_hidden_layers,
    )


# eager attention: on CPU, FlopCounterMode does not book the fused SDPA kernel (_scaled_dot_product_*_for_cpu)
@pytest.mark.parametrize("attn_impl", ["eager"])
@pytest.mark.parametrize("tied,bias", [(True, False), (False, True)])
def test_llama_formulas_equal_real_counts(attn_impl, tied, bias):
    config = LlamaConfig(
        vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, head_dim=4, tie_word_embeddings=tied, attention_bias=bias, mlp_bias=bias,
    )
    config._attn_implementation = attn_impl
    model = LlamaForCausalLM(config).eval()
    w = dict(_widths(config), num_attention_heads=6, num_key_value_heads=2, intermediate_size=40)
    params = llama_param_count(**w, tie_word_embeddings=tied, attention_bias=bias, mlp_bias=bias)
    assert int(params) == count_parameters(model) == model.num_parameters()
    B, T = 2, 7
    flops = llama_forward_flops(**w, seq_len=T, batch_size=B)
    assert int(flops) == measured_forward_flops(model, torch.zeros(B, T, dtype=torch.long))


def test_per_layer_formulas_equal_real_counts():
    config = DMSLlamaConfig(
        vocab_size=50, hidden_size=20, head_dim=4, intermediate_size=40, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, layer_num_attention_heads=[0, 6, 2],
        layer_num_key_value_heads=[0, 2, 1], layer_intermediate_sizes=[9, 0, 40], tie_word_embeddings=True,
    )
    config._attn_implementation = "eager"
    model = DMSLlamaForCausalLM(config).eval()
    w = dict(
        _widths(config), num_attention_heads=[6, 6, 2], num_key_value_heads=[2, 2, 1],
        intermediate_size=[9, 40, 40], attention_present=[0, 1, 1], mlp_present=[1, 0, 1],
    )
    assert int(llama_param_count(**w, tie_word_embeddings=True)) == count_parameters(model)
    flops = llama_forward_flops(**w, seq_len=5, batch_size=3)
    assert int(flops) == measured_forward_flops(model, torch.zeros(3, 5, dtype=torch.long))


def test_formulas_are_differentiable_in_soft_widths():
    inter = torch.tensor([10.0, 20.0], requires_grad=True)
    hidden = torch.tensor(16.0, requires_grad=True)
    attn = torch.tensor([1.0, 0.5], requires_grad=True)
    p = llama_param_count(vocab_size=30, hidden_size=hidden, head_dim=4, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=inter, num_layers=2, attention_present=attn)
    p.backward()
    assert torch.allclose(inter.grad, torch.tensor([3 * 16.0, 3 * 16.0]))
    assert hidden.grad > 0 and (attn.grad > 0).all()
    with pytest.raises(ValueError, match="per-layer"):
        llama_param_count(vocab_size=30, hidden_size=16, head_dim=4, num_attention_heads=[4, 4, 4],
                          num_key_value_heads=2, intermediate_size=8, num_layers=2)


@pytest.mark.parametrize("widths", [1.0, 0.5, {0: {"attention": 0.25, "mlp": 1.0}, 1: {"attention": 0.75, "mlp": 0.1}}])
def test_bert_flops_equal_flop_counter_at_slimmed_widths(widths):
    from transformers import BertConfig, BertForSequenceClassification

    from hf_dynamic import slim
    from hf_dynamic.core.resources import bert_forward_flops

    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=40, max_position_embeddings=16, num_labels=3)
    config._attn_implementation = "eager"
    model = slim.make_slimmable(BertForSequenceClassification(config).eval())
    counts = slim.set_width(model, widths)
    B, T = 2, 9
    flops = bert_forward_flops(
        hidden_size=32, head_dim=8, num_attention_heads=[a for a, _ in counts],
        intermediate_size=[m for _, m in counts], num_layers=2, seq_len=T, batch_size=B, pooler=True, num_labels=3,
    )
    assert int(flops) == measured_forward_flops(model, input_ids=torch.ones(B, T, dtype=torch.long))
    # the base BertModel (pooler, no classifier): the classifier term is booked separately
    base = bert_forward_flops(hidden_size=32, head_dim=8, num_attention_heads=[a for a, _ in counts],
                              intermediate_size=[m for _, m in counts], num_layers=2, seq_len=T, batch_size=B,
                              pooler=True)
    assert int(base) == measured_forward_flops(model.bert, input_ids=torch.ones(B, T, dtype=torch.long))
