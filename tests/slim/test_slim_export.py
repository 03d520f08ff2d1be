"""Export: a width as a real checkpoint whose logits equal the slimmable model's at that width, after a
safetensors save_pretrained / from_pretrained round trip."""

import os

import pytest
import torch
from slim_testing import TINY_BERT, tiny_bert, tiny_llama, tokens
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig, BertForMaskedLM
from transformers import BertForSequenceClassification, LlamaForCausalLM

import hf_dynamic  # registers dms_llama and pruned_bert with the Auto classes
from hf_dynamic.slim.export import export_width
from hf_dynamic.slim.modeling import make_slimmable, width


def _round_trip(model, tmp_path, loader):
    model.save_pretrained(tmp_path)
    assert os.path.exists(tmp_path / "model.safetensors")
    return loader.from_pretrained(tmp_path).eval()


def test_bert_uniform_ffn_width_exports_stock_bert(tmp_path):
    model = make_slimmable(tiny_bert())
    widths = {i: {"attention": 1.0, "mlp": 0.5} for i in range(2)}
    exported = export_width(model, widths)
    assert type(exported) is BertForSequenceClassification
    assert exported.config.intermediate_size == 20
    loaded = _round_trip(exported, tmp_path, BertForSequenceClassification)
    x = tokens()
    with torch.no_grad(), width(model, widths):
        expected = model(input_ids=x).logits
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, expected, atol=1e-5, rtol=1e-5)


def _assert_exports_pruned_bert(model, widths, tmp_path, heads, channels, x, **inputs):
    """export_width(model, widths) is a pruned_bert model with these per-layer counts whose logits, after a
    safetensors round trip, equal the slimmable model's at that width."""
    exported = export_width(model, widths)
    assert exported.config.model_type == "pruned_bert"
    assert exported.config.layer_num_attention_heads == heads
    assert exported.config.layer_intermediate_sizes == channels
    assert exported.config.head_dim == model.config.hidden_size // model.config.num_attention_heads
    loaded = _round_trip(exported, tmp_path, AutoModelForSequenceClassification)
    assert type(loaded).__name__ == "PrunedBertForSequenceClassification"
    with torch.no_grad(), width(model, widths):
        expected = model(input_ids=x, **inputs).logits
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x, **inputs).logits, expected, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())
    return loaded


def test_bert_uniform_width_with_fewer_heads_exports_pruned_bert(tmp_path):
    model = make_slimmable(tiny_bert())
    _assert_exports_pruned_bert(model, 0.5, tmp_path, heads=[2, 2], channels=[20, 20], x=tokens())


def test_bert_per_layer_widths_export_pruned_bert(tmp_path):
    model = make_slimmable(tiny_bert())
    widths = {0: 0.25, 1: {"attention": 1.0, "mlp": 0.5}}
    _assert_exports_pruned_bert(model, widths, tmp_path, heads=[1, 4], channels=[10, 20], x=tokens())


def test_bert_per_layer_widths_without_a_pruned_bert_class_are_refused():
    torch.manual_seed(0)
    config = BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "num_labels"})
    model = make_slimmable(BertForMaskedLM(config).eval())
    with pytest.raises(ValueError, match="pruned_bert.*BertForMaskedLM"):
        export_width(model, {0: 0.5})
    assert type(export_width(model, {i: {"attention": 1.0, "mlp": 0.5} for i in range(2)})) is BertForMaskedLM


def test_minilm_per_layer_width_exports_pruned_bert(tmp_path):
    """The real case: MiniLM (all-MiniLM-L6-v2, 6 layers of 12 heads and 1536 channels) at a searched-looking
    per-layer width, padded batch."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(hf_dynamic.minilm_path(), num_labels=2).eval()
    model = make_slimmable(model)
    widths = {0: 1.0, 1: {"attention": 0.5, "mlp": 0.75}, 2: 0.25, 3: {"attention": 1.0, "mlp": 0.125},
              4: {"attention": 0.75, "mlp": 1.0}, 5: 0.5}
    x = torch.randint(1000, 20000, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    mask[1, 11:] = 0
    loaded = _assert_exports_pruned_bert(model, widths, tmp_path, heads=[12, 6, 3, 12, 9, 6],
                                         channels=[1536, 1152, 384, 192, 1536, 768], x=x, attention_mask=mask)
    assert loaded.bert.encoder.layer[2].attention.self.query.weight.shape == (3 * 32, 384)


def test_llama_uniform_width_exports_stock_llama(tmp_path):
    model = make_slimmable(tiny_llama())
    exported = export_width(model, 0.5)
    assert type(exported) is LlamaForCausalLM
    cfg = exported.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (2, 1, 8, 24)
    loaded = _round_trip(exported, tmp_path, LlamaForCausalLM)
    x = tokens()
    with torch.no_grad(), width(model, 0.5):
        expected = model(x).logits
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, expected, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())


def test_llama_per_layer_widths_export_dms_llama(tmp_path):
    model = make_slimmable(tiny_llama())
    widths = {0: 0.5, 1: {"attention": 1.0, "mlp": 0.25}}
    exported = export_width(model, widths)
    assert exported.config.model_type == "dms_llama"
    assert exported.config.layer_num_attention_heads == [2, 4, 4]
    assert exported.config.layer_num_key_value_heads == [1, 2, 2]
    assert exported.config.layer_intermediate_sizes == [24, 12, 48]
    loaded = _round_trip(exported, tmp_path, AutoModelForCausalLM)
    assert type(loaded).__name__ == "DMSLlamaForCausalLM"
    x = tokens()
    with torch.no_grad(), width(model, widths):
        expected = model(x).logits
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, expected, atol=1e-5, rtol=1e-5)
