"""DMS export: stock uniform Llama / Mistral / Qwen2 (loads without hf_dynamic), logits equal the hard-masked
model's, the resource formula equals the exported parameter count, bad input. The per-layer ``dms_llama`` export is
tested in tests/models/dms_llama/; other architectures in test_dms_adapters.py."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from hf_dynamic.dms.export import rescale_rmsnorm
from hf_dynamic.dms.pruner import DMSPruner
from hf_dynamic.models.dms_llama import DMSLlamaForCausalLM

from dms_testing import VOCAB, hard_logits, set_structure, tiny_llama

TOL = 1e-4


def tiny(cls=LlamaForCausalLM, config_cls=LlamaConfig, **overrides):
    return tiny_llama(cls, config_cls, random_norms=True, **overrides)


def test_rmsnorm_rescaling_is_exact():
    H, kept = 16, torch.tensor([0, 3, 4, 9, 15])
    w, eps = torch.rand(H) + 0.5, 1e-5
    x = torch.zeros(5, H)
    x[:, kept] = torch.randn(5, kept.numel())
    full = w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    w2, eps2 = rescale_rmsnorm(w[kept], eps, H, kept.numel())
    xs = x[:, kept]
    small = w2 * xs / torch.sqrt(xs.pow(2).mean(-1, keepdim=True) + eps2)
    assert torch.allclose(full[:, kept], small, atol=1e-6)
    assert eps2 == pytest.approx(eps * H / 5)


@pytest.mark.parametrize(
    "grouping,overrides,counts",
    [
        ("kv", {}, {"heads": 1, "mlp": 20, "hidden": 18, "layers": 2}),
        ("query", {"tie_word_embeddings": False}, {"heads": 1, "mlp": 7, "hidden": 25, "layers": 3}),
        ("kv", {"attention_bias": True, "mlp_bias": True}, {"heads": 2, "mlp": 30, "hidden": 10, "layers": 1}),
    ],
)
def test_uniform_export_matches_hard_masks_and_formula(grouping, overrides, counts, tmp_path):
    model = tiny(**overrides)
    pruner = DMSPruner(model, 0.5, head_grouping=grouping, uniform=True)
    set_structure(pruner, counts)
    x = torch.randint(0, VOCAB, (2, 10))
    exported = pruner.export(uniform=True)
    assert type(exported) is LlamaForCausalLM
    c = exported.config
    assert c.num_hidden_layers == counts["layers"]
    assert c.intermediate_size == counts["mlp"]
    assert c.hidden_size % c.num_attention_heads == 0
    assert c.rms_norm_eps == pytest.approx(model.config.rms_norm_eps * 32 / c.hidden_size)
    assert (exported(x).logits - hard_logits(pruner, model, x)).abs().max() <= TOL
    assert exported.num_parameters() == int(pruner.resource(hard=True)) < model.num_parameters()


def test_uniform_export_loads_without_hf_dynamic(tmp_path):
    model = tiny()
    pruner = DMSPruner(model, 0.5)
    set_structure(pruner, {"heads": 1, "mlp": 20, "hidden": 18, "layers": 2})
    x = torch.randint(0, VOCAB, (2, 10))
    reference = hard_logits(pruner, model, x)
    pruner.export().save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model_type"] == "llama"
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'model')!r}, dtype=torch.float32)\n"
        "assert 'hf_dynamic' not in sys.modules\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save(m(x).logits.detach(), {str(tmp_path / 'logits.pt')!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env, timeout=120)
    logits = torch.load(tmp_path / "logits.pt")
    assert (logits - reference).abs().max() <= TOL


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_mistral_and_qwen2_uniform_export(family):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if family == "mistral":
        model = tiny(MistralForCausalLM, MistralConfig, sliding_window=None)
    else:  # q/k/v biases, no o_proj bias, layer_types
        model = tiny(Qwen2ForCausalLM, Qwen2Config, num_hidden_layers=3)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_()
                layer.self_attn.k_proj.bias.normal_()
    pruner = DMSPruner(model, 0.5)
    set_structure(pruner, {"heads": 1, "mlp": 12, "hidden": 20, "layers": 2})
    x = torch.randint(0, VOCAB, (1, 9))
    exported = pruner.export()
    assert type(exported) is type(model) and exported.config.num_hidden_layers == 2
    assert (exported(x).logits - hard_logits(pruner, model, x)).abs().max() <= TOL
    assert exported.num_parameters() == int(pruner.resource(hard=True))
    with pytest.raises(ValueError, match=f"dms_llama.*{family}"):
        DMSLlamaForCausalLM.from_pruned(pruner)


def test_smollm2_uniform_export_matches_hard_masks():
    """The real SmolLM2-135M (GQA 9/3, tied embeddings): formula = real count; export = hard-masked model."""
    from hf_dynamic.assets import smollm2_path

    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32).eval()
    pruner = DMSPruner(model, 0.5, head_grouping="query")
    assert pruner.full_resource == model.num_parameters() == 134_515_008
    set_structure(pruner, {"heads": 2, "mlp": 700, "hidden": 400, "layers": 20})
    x = torch.randint(0, model.config.vocab_size, (1, 16))
    exported = pruner.export()
    c = exported.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.num_hidden_layers) == (6, 3, 20)
    assert c.hidden_size == 402  # 400 rounded to a multiple of the 6 kept query heads
    assert exported.num_parameters() == int(pruner.resource(hard=True))
    assert (exported(x).logits - hard_logits(pruner, model, x)).abs().max() <= TOL


@pytest.mark.parametrize("uniform", [True, False])
def test_channel_multiple_rounds_hard_counts(uniform):
    model = tiny(num_hidden_layers=2)
    pruner = DMSPruner(model, 0.5, uniform=uniform, channel_multiple=8)
    per_row = 19 if uniform else [19, 30]
    set_structure(pruner, {"heads": 1, "mlp": per_row, "hidden": 13, "layers": 3 if not uniform else 2})
    s = pruner.hard_structure()
    assert [int(c.numel()) for c in s.mlp_channels] == ([16, 16] if uniform else [16, 32])
    assert s.hidden.numel() == 16  # 13 -> nearest multiple of lcm(8, 2 kept query heads)
    exported = pruner.export() if uniform else DMSLlamaForCausalLM.from_pruned(pruner)
    x = torch.randint(0, VOCAB, (1, 7))
    assert (exported(x).logits - hard_logits(pruner, model, x)).abs().max() <= TOL
    assert exported.num_parameters() == int(pruner.resource(hard=True))
    with pytest.raises(ValueError, match="channel_multiple"):
        DMSPruner(tiny(), 0.5, channel_multiple=0)


def test_export_config_has_use_cache_and_per_layer_route_is_named():
    model = tiny(use_cache=False)  # as a search runs
    pruner = DMSPruner(model, 0.5)
    set_structure(pruner, {"heads": 1, "mlp": 20, "hidden": 18, "layers": 2})
    assert pruner.export().config.use_cache is True
    with pytest.raises(ValueError, match="from_pruned"):
        pruner.export(uniform=False)
