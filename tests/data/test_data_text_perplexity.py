"""hf_dynamic.load_text and hf_dynamic.perplexity (vs a direct computation on a tiny random Llama)."""

import math

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hf_dynamic.assets import minilm_path
from hf_dynamic.data.perplexity import perplexity
from hf_dynamic.data.text import load_text, resolve_text_dir


@pytest.fixture(scope="module")
def tokenizer():
    # A real fast tokenizer (MiniLM's uncased WordPiece, adds [CLS] ... [SEP]); the model below matches its vocab.
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def tiny_llama(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config)


def _direct_perplexity(model, ids, window):
    """Reference: score each window with the model's own shifted LM loss, weight by its predicted positions."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ids), window):
            chunk = torch.tensor([ids[start : start + window]])
            if chunk.size(1) < 2:
                continue
            loss = model(input_ids=chunk, labels=chunk).loss
            total += loss.item() * (chunk.size(1) - 1)
            count += chunk.size(1) - 1
    return math.exp(total / count), count


def test_wikitext2_text_layout():
    text = load_text("wikitext2")
    assert text.startswith("= Robert Boulter = \n\n Robert Boulter is an English film , television and theatre actor")
    assert "\r" not in text and not text.endswith((" ", "\n"))
    assert text.count("\n\n") == 2890  # 2891 rows joined
    war = load_text("warpeace")
    assert war.startswith('"Well, Prince, so Genoa and Lucca are now just family estates of the')
    assert war.endswith("of which we are not\nconscious.") and len(war) == 3196212


# The 301,947-token count of the joined WikiText-2 test with SmolLM2's tokenizer is checked in test_assets.py.


def test_load_text_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown text corpus 'wikitext103'.*wikitext2, warpeace"):
        load_text("wikitext103")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text("wikitext2", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"wiki\.test\.raw"):
        load_text("wikitext2", tmp_path)
    (tmp_path / "wikitext-2-raw").mkdir()
    (tmp_path / "wikitext-2-raw" / "wiki.test.raw").write_bytes(b" = A = \r\n B b . \r\n")
    monkeypatch.setenv("HF_DYNAMIC_TEXT_DIR", str(tmp_path))
    assert resolve_text_dir() == tmp_path
    assert load_text("wikitext2") == "= A = \n\n B b ."


@pytest.mark.parametrize("window, batch_size", [(16, 1), (16, 3), (7, 2), (1000, 1)])
def test_perplexity_matches_direct_computation(tiny_llama, tokenizer, window, batch_size):
    text = load_text("warpeace")[:800]
    ids = tokenizer(text)["input_ids"]
    expected, predicted = _direct_perplexity(tiny_llama, ids, window)
    tiny_llama.train()
    result = perplexity(tiny_llama, tokenizer, text, window=window, batch_size=batch_size)
    assert tiny_llama.training  # mode restored
    assert result["tokens"] == len(ids)
    assert result["predicted_tokens"] == predicted
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert result["mean_nll"] == pytest.approx(math.log(expected), rel=1e-5)
    # A random model over a 30k vocab is close to uniform.
    assert 0.5 * tokenizer.vocab_size < result["perplexity"] < 2 * tokenizer.vocab_size


def test_perplexity_last_partial_window(tiny_llama, tokenizer):
    # 1 + window tokens: one full window and a 1-token tail that predicts nothing.
    text = "a b c d e f g h"
    ids = tokenizer(text)["input_ids"]  # [CLS] a ... h [SEP]: 10 tokens
    assert len(ids) == 10
    assert perplexity(tiny_llama, tokenizer, text, window=9)["predicted_tokens"] == 8
    assert perplexity(tiny_llama, tokenizer, text, window=4)["predicted_tokens"] == 3 + 3 + 1


def test_perplexity_bad_input(tiny_llama, tokenizer):
    with pytest.raises(ValueError, match="window must be an integer >= 2, got 1"):
        perplexity(tiny_llama, tokenizer, "a b c", window=1)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        perplexity(tiny_llama, tokenizer, "a b c", batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size must be an integer, got True \(bool\)"):
        perplexity(tiny_llama, tokenizer, "a b c", batch_size=True)  # a bool is not a batch size
    with pytest.raises(ValueError, match="non-empty string"):
        perplexity(tiny_llama, tokenizer, "")
