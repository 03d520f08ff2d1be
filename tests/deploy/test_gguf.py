"""GGUF export (``hf_dynamic.save_gguf``, docs/gguf.md) run in llama.cpp itself, through llama-cpp-python.

Tiny random models (64 hidden channels) use a tiny byte-level BPE tokenizer trained here (318 tokens, the model has
320 embedding rows: llama.cpp requires one token per row, so the export pads two); the tokenizer tests use
SmolLM2's real one. For each model, llama.cpp's logits over an 80-token prompt are compared with PyTorch's, and
so are 32 greedily decoded tokens (llama.cpp decodes one token at a time through its KV cache). Tolerances, relative to the standard deviation of PyTorch's fp32 logits, on the root-mean-square and
the maximum of |Δlogit| over the 80 x 320 logits:

- the error of a value rounded to the stored type is, in rms, u = 2^-24/√3 ≈ 3.4e-8 of it in f32, 2^-11/√3 ≈
  2.8e-4 in f16, and absmax/(127·√12) ≈ 4.8e-3 σ for q8_0 (int8 steps of a 32-value block's absmax / 127, absmax
  ≈ 2.1 σ for Gaussian weights). llama.cpp rounds the weights *and* the activations it multiplies them by (to f16,
  or to q8_0 blocks), ~26 roundings on the path of a logit here; with the random network's gain that is
  ≈ 6 u in the logits (the f16 runs measure 1.6-1.8e-3 rms, against 6 x 2.8e-4 = 1.7e-3 predicted);
- bounds: rms ≤ 3x that prediction (f16 6e-3, q8_0 0.1), max ≤ 8x the rms bound (a Gaussian's largest of 25,600
  draws is ~4.3 σ); f32 is limited by the order of float32 sums instead (~√64 · 2^-24 per dot product, measured
  1e-6 rms / 6e-6 max): rms 1e-5, max 1e-4, with an f32 KV cache (llama.cpp's default caches K/V in f16).

Greedy decoding must give the same 32 tokens in f32 and f16. Not in q8_0: the smallest top-1 margin of these
random models over 32 steps is ~1 % of the logit std, below q8_0's ~4 % rms logit error, so a random model's q8_0
continuation can legitimately part from PyTorch's (trained models have far larger margins; bench/llama_cpp.py
checks real SmolLM2 exports).

Tests need ``llama_cpp`` (the ``llama`` extra, installed by ``make setup`` and CI); they skip, saying so, when it
is not importable. The input checks run without it.
"""

import json
import os

import gguf
import numpy as np
import pytest
import torch
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import hf_dynamic
from hf_dynamic.deploy.gguf import interleave_rotary_rows, save_gguf
from hf_dynamic.models.dms_llama import DMSLlamaConfig, DMSLlamaForCausalLM

try:
    import llama_cpp
except ImportError:  # the llama extra is not installed: only the llama.cpp runs skip
    llama_cpp = None

needs_llama_cpp = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not installed "
                                     "(pip install -e '.[llama]')")

VOCAB = 320
SMOLLM2_VOCAB = 49152
PROMPT_LEN = 80
NEW_TOKENS = 32
TOLERANCE = {"f32": (1e-5, 1e-4), "f16": (6e-3, 5e-2), "q8_0": (1e-1, 8e-1)}  # (rms, max) of |Δlogit| / std
GREEDY_EQUAL = ("f32", "f16")
GGML_TYPE_F32 = 0  # ggml_type enum value of F32, for an f32 KV cache in the f32 comparisons

TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)


def tiny_tokenizer():
    """A GPT-2 style byte-level BPE tokenizer with ChatML special tokens and a chat template, trained on one
    sentence (318 tokens: 256 bytes, 3 special tokens, 59 merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(["Pruned language models run on CPUs in llama.cpp: 12 heads, 345 channels."],
                                trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    return tok


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return AutoTokenizer.from_pretrained(hf_dynamic.smollm2_path())


@pytest.fixture(scope="module")
def packaged_gguf():
    """The packaged SmolLM2 Q4_1 file, written by llama.cpp's own converter (parsed once: ~100k strings)."""
    return gguf.GGUFReader(hf_dynamic.smollm2_gguf_path())


@pytest.fixture(scope="module")
def smollm2_vocab_gguf(smollm2_tokenizer, tmp_path_factory):
    """A one-layer random model with SmolLM2's tokenizer, exported once for the tokenizer tests."""
    model = tiny_llama(num_hidden_layers=1, vocab_size=SMOLLM2_VOCAB)
    return save_gguf(model, smollm2_tokenizer, tmp_path_factory.mktemp("smollm2_vocab") / "m.gguf", dtype="f16")


def randomize(model, seed=0, scale=0.15):
    """Weights drawn large enough that the logits are spread out (std ~ 1): greedy decoding then has clear
    winners rather than the near-ties of a default-initialised model; norms from U(0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def tiny_llama(**overrides):
    return randomize(LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides})))


def tiny_dms_llama(**overrides):
    """6 layers with uneven widths and head_dim (24) != hidden / heads (16): layer 0 without attention, layer 1
    without MLP, layer 3 without either, layer 5 (the last) without MLP."""
    config = DMSLlamaConfig(**{**TINY, "num_hidden_layers": 6, "head_dim": 24, "tie_word_embeddings": False,
                               **overrides},
                            layer_num_attention_heads=[0, 4, 2, 0, 3, 2],
                            layer_num_key_value_heads=[0, 2, 1, 0, 1, 2],
                            layer_intermediate_sizes=[96, 0, 40, 0, 64, 0])
    return randomize(DMSLlamaForCausalLM(config))


def prompt_ids(seed=1):
    return torch.randint(0, VOCAB, (PROMPT_LEN,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def torch_run(model, tokens):
    """PyTorch fp32 logits over ``tokens`` and NEW_TOKENS greedy tokens (full recomputation at each step)."""
    ids = torch.tensor([tokens])
    logits = model(ids).logits[0].float().numpy()
    generated = []
    for _ in range(NEW_TOKENS):
        nxt = int(model(ids).logits[0, -1].argmax())
        generated.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return logits, generated


def llama_cpp_run(path, tokens, f32_cache=False):
    """llama.cpp's logits over ``tokens`` (one batch) and NEW_TOKENS greedy tokens decoded one at a time."""
    kwargs = dict(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32) if f32_cache else {}
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2, seed=0,
                          **kwargs)
    try:
        llm.eval(tokens)
        logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
        generated = []
        for _ in range(NEW_TOKENS):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            generated.append(nxt)
            llm.eval([nxt])
        return logits, generated
    finally:
        llm.close()


def check_in_llama_cpp(model, tokenizer, path, dtype):
    tokens = prompt_ids()
    reference, ref_generated = torch_run(model, tokens)
    save_gguf(model, tokenizer, path, dtype=dtype)
    logits, generated = llama_cpp_run(path, tokens, f32_cache=dtype == "f32")
    diff = np.abs(logits - reference) / reference.std()
    rms, peak = float(np.sqrt((diff**2).mean())), float(diff.max())
    rms_bound, max_bound = TOLERANCE[dtype]
    assert rms <= rms_bound and peak <= max_bound, f"{dtype}: |Δlogit| / std: rms {rms:.2e}, max {peak:.2e}"
    if dtype in GREEDY_EQUAL:
        assert generated == ref_generated


# ------------------------------------------------------------------------------------------------ llama.cpp runs
@needs_llama_cpp
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_llama_matches_pytorch_in_llama_cpp(tokenizer, tmp_path, dtype):
    check_in_llama_cpp(tiny_llama(tie_word_embeddings=True), tokenizer, tmp_path / "llama.gguf", dtype)


@needs_llama_cpp
def test_llama_with_biases_head_dim_and_llama3_rope(tokenizer, tmp_path):
    """q/k/v/o and MLP biases (q/k biases reordered like their rows), head_dim != hidden / heads, untied output,
    and a llama3 RoPE scaling (written as llama.cpp's rope_freqs factors) that acts on positions past 16."""
    rope = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=16)
    model = tiny_llama(attention_bias=True, mlp_bias=True, head_dim=24, tie_word_embeddings=False,
                       rope_parameters=rope)
    check_in_llama_cpp(model, tokenizer, tmp_path / "llama.gguf", "f32")


@needs_llama_cpp
@pytest.mark.parametrize("cls,config_cls", [(MistralForCausalLM, MistralConfig), (Qwen2ForCausalLM, Qwen2Config)])
def test_mistral_and_qwen2_match_pytorch_in_llama_cpp(tokenizer, tmp_path, cls, config_cls):
    extra = {"sliding_window": None} if cls is MistralForCausalLM else {}
    model = randomize(cls(config_cls(**TINY, tie_word_embeddings=False, **extra)))
    check_in_llama_cpp(model, tokenizer, tmp_path / "model.gguf", "f32")


@needs_llama_cpp
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_dms_llama_matches_pytorch_in_llama_cpp(tokenizer, tmp_path, dtype):
    path = tmp_path / "dms.gguf"
    check_in_llama_cpp(tiny_dms_llama(), tokenizer, path, dtype)
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "deci"
    # as written: layer 0 gets one zero head, layers 1 and 5 a one-channel zero MLP, layer 3 stays empty
    assert reader.fields["deci.attention.head_count"].contents() == [1, 4, 2, 0, 3, 2]
    assert reader.fields["deci.attention.head_count_kv"].contents() == [1, 2, 1, 0, 1, 2]
    assert reader.fields["deci.feed_forward_length"].contents() == [96, 1, 40, 0, 64, 1]
    assert reader.fields["deci.attention.key_length"].contents() == 24
    assert not any(t.name.startswith("blk.3.") for t in reader.tensors)


@needs_llama_cpp
def test_dms_llama_output_projection_biases_in_llama_cpp(tokenizer, tmp_path):
    """``output_proj_bias`` (the bias compensation of a FLAP-pruned dms_llama) is written as llama.cpp's o_proj /
    down_proj biases."""
    model = tiny_dms_llama(output_proj_bias=True)
    assert model.model.layers[2].mlp.down_proj.bias is not None
    check_in_llama_cpp(model, tokenizer, tmp_path / "dms.gguf", "f32")


@needs_llama_cpp
@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_tokenizer_matches_transformers_in_llama_cpp(tokenizer, smollm2_tokenizer, smollm2_vocab_gguf, tmp_path,
                                                     which):
    """llama.cpp tokenizes text like the transformers tokenizer (digits, spaces, punctuation, non-ASCII and the
    chat template's special tokens), and the chat template / special tokens are carried over."""
    if which == "tiny":
        path = save_gguf(tiny_llama(num_hidden_layers=1), tokenizer, tmp_path / "m.gguf", dtype="f16")
    else:
        path, tokenizer = smollm2_vocab_gguf, smollm2_tokenizer
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Prune 12345 heads,  then   run: é ü 日本"}],
                                             tokenize=False, add_generation_prompt=True)
        expected = tokenizer(text)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected
        assert llm.detokenize(expected, special=True).decode() == text
        assert llm.token_bos() == tokenizer.bos_token_id and llm.token_eos() == tokenizer.eos_token_id
        assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
    finally:
        llm.close()


# ------------------------------------------------------------------------------------------------ file contents
def test_tokenizer_metadata_matches_llama_cpps_own_conversion(smollm2_vocab_gguf, packaged_gguf):
    """Key by key, the tokenizer metadata equals the packaged SmolLM2 GGUF written by llama.cpp's converter —
    except the pre-tokenizer name: that file says "smollm" (digits split one by one, as the original SmolLM2
    tokenizer does), while the tokenizer transformers rebuilds from it has no digit splitting, so ours says
    "gpt-2" (test_tokenizer_matches_transformers_in_llama_cpp checks that this is the right one)."""
    ours, theirs = gguf.GGUFReader(smollm2_vocab_gguf), packaged_gguf
    keys = [k for k in theirs.fields if k.startswith("tokenizer.")]
    assert len(keys) == 12
    for key in keys:
        expected = "gpt-2" if key == "tokenizer.ggml.pre" else theirs.fields[key].contents()
        assert ours.fields[key].contents() == expected, key


def test_rotary_reordering_matches_the_packaged_gguf(packaged_gguf):
    """llama.cpp's converter wrote the packaged Q4_1 file from the original checkpoint; transformers loaded our
    fp32 SmolLM2 from it undoing the q/k reordering. Reordering the loaded q_proj / k_proj again must give the
    file's de-quantised rows exactly."""
    from safetensors import safe_open

    stored = {t.name: t for t in packaged_gguf.tensors}
    with safe_open(hf_dynamic.smollm2_path() / "model.safetensors", "pt") as f:
        for proj, short, heads in (("q_proj", "attn_q", 9), ("k_proj", "attn_k", 3)):
            for layer in (0, 29):
                ours = interleave_rotary_rows(f.get_tensor(f"model.layers.{layer}.self_attn.{proj}.weight").numpy(),
                                              heads)
                t = stored[f"blk.{layer}.{short}.weight"]
                theirs = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ours.shape)
                assert np.array_equal(ours, theirs), (layer, proj)
                assert not np.array_equal(ours, f.get_tensor(f"model.layers.{layer}.self_attn.{proj}.weight").numpy())


@pytest.mark.parametrize("dtype,ggml_type", [("f32", "F32"), ("f16", "F16"), ("q8_0", "Q8_0")])
def test_stored_types_and_values(tokenizer, tmp_path, dtype, ggml_type):
    """Matrices are stored as dtype (de-quantised values equal gguf's own round trip), 1-D tensors in f32, and a
    tied model has no output.weight."""
    model = tiny_llama(num_hidden_layers=1, tie_word_embeddings=True)
    reader = gguf.GGUFReader(save_gguf(model, tokenizer, tmp_path / "m.gguf", dtype=dtype))
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    t = tensors["blk.0.ffn_up.weight"]
    assert t.tensor_type.name == ggml_type
    source = model.model.layers[0].mlp.up_proj.weight.detach().numpy()
    expected = source.astype(np.float16).astype(np.float32) if dtype == "f16" else source
    if dtype == "q8_0":
        expected = gguf.quants.dequantize(gguf.quants.quantize(source, gguf.GGMLQuantizationType.Q8_0),
                                          gguf.GGMLQuantizationType.Q8_0)
    stored = gguf.quants.dequantize(t.data, t.tensor_type).reshape(source.shape)
    assert np.array_equal(stored, expected)


# ------------------------------------------------------------------------------------------------ refusals
def _no_file_written(folder):
    return [p.name for p in folder.iterdir()] == []


@pytest.mark.parametrize("make,message", [
    (lambda: tiny_llama(hidden_act="gelu"), "hidden_act='gelu'"),
    (lambda: randomize(MistralForCausalLM(MistralConfig(**TINY, sliding_window=32))), "sliding_window=32"),
    (lambda: randomize(Qwen2ForCausalLM(Qwen2Config(**TINY, use_sliding_window=True))), "use_sliding_window"),
    (lambda: randomize(Qwen3ForCausalLM(Qwen3Config(**TINY))), "model_type='qwen3'"),
    (lambda: tiny_llama(rope_parameters=dict(rope_type="yarn", rope_theta=1e4, factor=2.0)), "rope_type.*'yarn'"),
    (lambda: tiny_llama(rope_parameters=dict(rope_type="default", rope_theta=1e4, partial_rotary_factor=0.5)),
     "partial_rotary_factor"),
])
def test_what_gguf_cannot_express_is_refused_before_writing(tokenizer, tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        save_gguf(make(), tokenizer, tmp_path / "m.gguf")
    assert _no_file_written(tmp_path)


def test_unknown_parameter_dtype_and_vocabulary_are_refused(tokenizer, tmp_path):
    model = tiny_llama(num_hidden_layers=1)
    with pytest.raises(ValueError, match=r"dtype must be one of \('f32', 'f16', 'q8_0'\), got 'q4_0'"):
        save_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="q4_0")
    model.model.norm.register_parameter("bias", torch.nn.Parameter(torch.zeros(64)))  # a norm bias: no GGUF name
    with pytest.raises(ValueError, match="'model.norm.bias'.*no GGUF tensor name"):
        save_gguf(model, tokenizer, tmp_path / "m.gguf")
    narrowed = tiny_llama(num_hidden_layers=1)
    narrowed.model.layers[0].self_attn.q_proj = torch.nn.Linear(64, 32, bias=False)  # 2 heads, config says 4
    with pytest.raises(ValueError, match=r"q_proj.weight has shape \(32, 64\).*layer 0 give \(64, 64\)"):
        save_gguf(narrowed, tokenizer, tmp_path / "m.gguf")
    with pytest.raises(ValueError, match=f"{len(tokenizer)} tokens but the model only 300 embedding rows"):
        save_gguf(tiny_llama(num_hidden_layers=1, vocab_size=300), tokenizer, tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="folder .* does not exist"):
        save_gguf(tiny_llama(num_hidden_layers=1), tokenizer, tmp_path / "missing" / "m.gguf")
    assert _no_file_written(tmp_path)


def test_unknown_pre_tokenizer_is_refused_and_can_be_named(tokenizer, tmp_path):
    folder = tmp_path / "tok"
    tokenizer.save_pretrained(folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{N}{1,2}"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    odd = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    out = tmp_path / "out"
    out.mkdir()
    model = tiny_llama(num_hidden_layers=1)
    with pytest.raises(ValueError, match=r"pre-tokenizer .*\\\\p\{N\}\{1,2\}.* tokenizer_pre="):
        save_gguf(model, odd, out / "m.gguf")
    assert _no_file_written(out)
    path = save_gguf(model, odd, out / "m.gguf", tokenizer_pre="gpt-2")
    assert gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == "gpt-2"


def test_write_is_atomic(tokenizer, tmp_path, monkeypatch):
    """A failure while writing leaves an existing file as it was and no temporary file behind."""
    target = tmp_path / "m.gguf"
    target.write_bytes(b"previous")

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_gguf(tiny_llama(num_hidden_layers=1), tokenizer, target)
    assert target.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["m.gguf"]
