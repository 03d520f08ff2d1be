"""Export: a width as a real checkpoint whose logits equal the slimmable model's at that width, after a
safetensors save_pretrained / from_pretrained round trip."""

import os

import pytest
import torch
from slim_testing import tiny_bert, tiny_llama, tokens
from transformers import AutoModelForCausalLM, BertForSequenceClassification, LlamaForCausalLM

import hf_dynamic  # noqa: F401  (registers dms_llama with the Auto classes)
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


def test_bert_head_slimming_and_per_layer_widths_are_refused():
    model = make_slimmable(tiny_bert())
    with pytest.raises(ValueError, match="keeps every attention head"):
        export_width(model, 0.5)
    with pytest.raises(ValueError, match="no stock model type"):
        export_width(model, {0: 0.5})


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
