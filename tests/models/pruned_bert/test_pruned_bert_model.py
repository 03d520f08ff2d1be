"""``pruned_bert``: BERT with per-layer widths (``docs/slim.md``, "## Export"). The stock BERT forward on layers
with fewer heads (checked against multi-head attention computed from the weights, so that a transformers release
that reads the head count from the config in the forward fails here), full widths equal to stock BERT, config
validation, and the legacy gradient-checkpointing flag."""

import json

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError as ConfigError
from slim_testing import TINY_BERT, tokens
from transformers import BertConfig, BertForSequenceClassification

from hf_dynamic.models.pruned_bert import (
    PrunedBertConfig,
    PrunedBertForQuestionAnswering,
    PrunedBertForSequenceClassification,
    PrunedBertModel,
)

PER_LAYER = dict(layer_num_attention_heads=[1, 3], layer_intermediate_sizes=[7, 40])


def tiny_config(**overrides):
    return PrunedBertConfig(**{**TINY_BERT, **PER_LAYER, **overrides})


def reference_attention(attention, hidden, mask):
    """softmax(Q_h K_hᵀ / sqrt(d) + mask) V_h per head h, heads concatenated: from the module's weights alone
    (``mask``: ``(batch, 1, 1, keys)``, additive)."""
    d = 8
    q, k, v = (getattr(attention, name)(hidden) for name in ("query", "key", "value"))
    outputs = []
    for h in range(q.shape[-1] // d):
        cut = slice(h * d, (h + 1) * d)
        scores = q[..., cut] @ k[..., cut].transpose(-1, -2) / d ** 0.5 + mask[:, 0]
        outputs.append(scores.softmax(-1) @ v[..., cut])
    return torch.cat(outputs, -1)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_a_layer_with_fewer_heads_is_multi_head_attention_of_its_heads(implementation):
    torch.manual_seed(0)
    model = PrunedBertModel(tiny_config()).eval()
    model.set_attn_implementation(implementation)
    attention = model.encoder.layer[0].attention.self
    assert (attention.num_attention_heads, attention.attention_head_size, attention.query.out_features) == (1, 8, 8)
    hidden = torch.randn(2, 5, 32)
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    additive = (1 - keep[:, None, None, :].float()) * torch.finfo(torch.float32).min
    with torch.no_grad():
        ours, _ = attention(hidden, attention_mask=additive)
        expected = reference_attention(attention, hidden, additive)
    assert ours.shape == (2, 5, 8)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_full_widths_compute_what_stock_bert_computes(tmp_path):
    torch.manual_seed(0)
    stock = BertForSequenceClassification(BertConfig(**TINY_BERT)).eval()
    stock.save_pretrained(tmp_path)
    model = PrunedBertForSequenceClassification.from_pretrained(tmp_path).eval()  # the default widths: full
    assert model.config.layer_num_attention_heads == [4, 4] and model.config.layer_intermediate_sizes == [40, 40]
    assert model.state_dict().keys() == stock.state_dict().keys()
    for key, value in stock.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, stock(x).logits, rtol=0, atol=0)


def test_projections_have_the_layer_widths_and_are_initialised_as_bert():
    torch.manual_seed(0)
    config = tiny_config(initializer_range=0.02)
    for model in (PrunedBertModel(config), PrunedBertForQuestionAnswering(config)):
        layers = model.base_model.encoder.layer
        for layer, heads, channels in zip(layers, config.layer_num_attention_heads, config.layer_intermediate_sizes):
            attention = layer.attention.self
            assert [tuple(getattr(attention, n).weight.shape) for n in ("query", "key", "value")] == \
                [(heads * 8, 32)] * 3
            assert tuple(layer.attention.output.dense.weight.shape) == (32, heads * 8)
            assert tuple(layer.intermediate.dense.weight.shape) == (channels, 32)
            assert tuple(layer.output.dense.weight.shape) == (32, channels)
            assert (attention.num_attention_heads, attention.all_head_size) == (heads, heads * 8)
        new = layers[0].intermediate.dense  # replaced after the stock constructor: BERT's init, N(0, 0.02), 0 bias
        assert torch.all(new.bias == 0) and 0.01 < float(new.weight.detach().std()) < 0.03


@pytest.mark.parametrize("field,value,message", [
    ("layer_num_attention_heads", [1, 0], "layer_num_attention_heads must hold ints >= 1"),
    ("layer_num_attention_heads", [1], "layer_num_attention_heads must be a list of num_hidden_layers=2"),
    ("layer_intermediate_sizes", [7, -1], "layer_intermediate_sizes must hold ints >= 1"),
    ("layer_intermediate_sizes", [7, 4, 4], "layer_intermediate_sizes must be a list of num_hidden_layers=2"),
    ("head_dim", 16, "head_dim must be hidden_size // num_attention_heads = 32 // 4 = 8"),
])
def test_bad_widths_are_refused_by_name(field, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**{field: value})


def test_legacy_gradient_checkpointing_flag_is_applied(tmp_path):
    """A config.json with the legacy ``gradient_checkpointing=True``: the layers are kept (only their projections
    are replaced), so the flag consumed by the stock constructor still checkpoints them."""
    tiny_config().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "gradient_checkpointing": True}))
    for cls in (PrunedBertModel, PrunedBertForSequenceClassification):
        model = cls(PrunedBertConfig.from_pretrained(tmp_path))
        assert all(layer.gradient_checkpointing for layer in model.base_model.encoder.layer), cls.__name__
        assert not hasattr(model.config, "gradient_checkpointing")
