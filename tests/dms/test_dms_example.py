"""examples/llama_prune/prune_llama.py end to end on a tiny random Llama (SmolLM2's tokenizer), CPU, seconds."""

import importlib.util
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "llama_prune" / "prune_llama.py"


def test_prune_llama_example_runs(tmp_path):
    from hf_dynamic.assets import smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=6, tie_word_embeddings=True, max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    spec = importlib.util.spec_from_file_location("prune_llama", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    results = module.main([
        "--model_path", str(tmp_path / "tiny"), "--device", "cpu", "--max_search_steps", "3",
        "--search_batch_size", "2", "--seq_len", "32", "--recovery", "lora", "--recovery_steps", "2",
        "--recovery_batch_size", "2", "--eval_tokens", "300", "--eval_window", "64", "--calibration_batches", "1",
        "--prefill_batch", "1", "--prefill_len", "16", "--decode_tokens", "2", "--decode_batches", "1",
        "--output_dir", str(out), "--keep_ratio_lr", "1e-2", "--no-full_eval", "--speed_isolation", "inprocess",
    ])
    names = [r["model"] for r in results["rows"]]
    assert names == ["dense", "DMS", "magnitude", "taylor"]
    dms = results["rows"][1]
    for r in results["rows"][2:]:  # baselines matched to the DMS parameter count
        assert abs(r["params"] - dms["params"]) <= 3 * 24
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"][0]["params"] == LlamaForCausalLM(config).num_parameters()
    assert "| DMS |" in (out / "results.md").read_text()
    reloaded = LlamaForCausalLM.from_pretrained(out / "dms_model")
    assert reloaded.num_parameters() == dms["params"]
    assert torch.isfinite(torch.tensor([r["ppl"] for r in results["rows"]])).all()
    fit = saved["exports"]["search_uniform"]["meet_target"]  # the default --export_rule target
    assert fit["after"] <= fit["before"]
    assert dms["params"] == round(fit["after"] * saved["rows"][0]["params"])  # the export is what meet_target left
    assert "## Export rule" in (out / "results.md").read_text()
