"""Tokenizer metadata of a GGUF file, built from a transformers tokenizer with the ``gguf`` package's own
vocabulary readers (``docs/gguf.md``, "## Tokenizer").

llama.cpp re-implements tokenization in C++: a GGUF file carries the token strings, their types, the BPE merges,
the special-token ids, whether BOS / EOS are added, the chat template, and the *name* of a pre-tokenizer (the regex
that splits text into words before BPE runs) which llama.cpp maps to its own built-in regexes. The tokenizer is
written to a temporary folder with ``save_pretrained`` and read back by ``gguf.vocab.BpeVocab`` (tokens and added
tokens) and ``gguf.vocab.SpecialVocab`` (merges, special ids, add-BOS/EOS flags, chat template); this module only
adds what those readers leave to the converter: the token types of added tokens (special ones are CONTROL, the
others USER_DEFINED), padding tokens up to the model's embedding rows, the add-BOS/EOS flags as the tokenizer
behaves, and the pre-tokenizer name, recognised from the ``pre_tokenizer`` section of ``tokenizer.json``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf

__all__ = ["PRE_TOKENIZERS", "GGUFVocab", "gguf_vocab", "pre_tokenizer_name"]

# The split regexes of the Llama-3 and Qwen2 tokenizers (tokenizer.json, "Split" pre-tokenizer). They differ in
# how digits are grouped: up to three digits per piece for Llama 3, one digit per piece for Qwen2.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Pre-tokenizer of tokenizer.json (in a canonical form, see _canonical_pre_tokenizer) -> llama.cpp's name for the
# same splitting (tokenizer.ggml.pre). "gpt-2": GPT-2's byte-level regex alone; "smollm": every digit on its own,
# then GPT-2's regex (llama.cpp gives "smollm" / "starcoder" that pair of regexes); "llama-bpe" and "qwen2": their
# Split regex followed by a byte-level mapping without a regex of its own.
PRE_TOKENIZERS: dict[tuple, str] = {
    (("ByteLevel", True),): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "smollm",
    (("Split", _LLAMA3_SPLIT), ("ByteLevel", False)): "llama-bpe",
    (("Split", _QWEN2_SPLIT), ("ByteLevel", False)): "qwen2",
}


def _canonical_pre_tokenizer(spec: dict | None) -> tuple:
    """``tokenizer.json``'s ``pre_tokenizer`` as a tuple of ``(type, key)`` steps; ValueError for a step that
    changes the text in a way no llama.cpp pre-tokenizer does (a prefix space, a non-isolating split, ...)."""
    if spec is None:
        raise ValueError("tokenizer: its tokenizer.json has no pre_tokenizer; GGUF needs a byte-level BPE one")
    steps = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    out = []
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel":
            if step.get("add_prefix_space"):
                raise ValueError("tokenizer: a ByteLevel pre-tokenizer with add_prefix_space=True has no GGUF form")
            out.append((kind, bool(step.get("use_regex", True))))
        elif kind == "Digits":
            out.append((kind, bool(step.get("individual_digits"))))
        elif kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            out.append((kind, (step.get("pattern") or {}).get("Regex")))
        else:
            raise ValueError(f"tokenizer: pre-tokenizer step {json.dumps(step)[:200]} has no GGUF form")
    return tuple(out)


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's pre-tokenizer name (``tokenizer.ggml.pre``) for a parsed ``tokenizer.json``; ValueError naming
    the pre-tokenizer when it is none of :data:`PRE_TOKENIZERS`."""
    spec = tokenizer_json.get("pre_tokenizer")
    name = PRE_TOKENIZERS.get(_canonical_pre_tokenizer(spec))
    if name is None:
        raise ValueError(
            f"tokenizer: pre-tokenizer {json.dumps(spec)[:300]} is not one llama.cpp implements under a known name "
            f"(recognised: {sorted(set(PRE_TOKENIZERS.values()))}); pass tokenizer_pre=<llama.cpp name> if you "
            "know its equivalent"
        )
    return name


@dataclass
class GGUFVocab:
    """Everything ``save_gguf`` writes about the tokenizer (``special`` is a ``gguf.vocab.SpecialVocab``)."""

    model: str
    pre: str
    tokens: list[str | bytes]
    token_types: list[int]
    special: gguf.vocab.SpecialVocab
    added_padding: int = 0

    def add_to_gguf(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_add_space_prefix(False)
        self.special.add_to_gguf(writer, quiet=True)


def _adds_special(tokenizer) -> tuple[bool, bool]:
    """Whether ``tokenizer(text)`` puts BOS in front / EOS at the end (observed, not read from a flag)."""
    text = "a b"
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tokenizer(text)["input_ids"]
    bos = tokenizer.bos_token_id is not None and len(full) > len(plain) and full[0] == tokenizer.bos_token_id
    eos = tokenizer.eos_token_id is not None and len(full) > len(plain) and full[-1] == tokenizer.eos_token_id
    return bos, eos


def gguf_vocab(tokenizer, n_vocab: int, tokenizer_pre: str | None = None) -> GGUFVocab:
    """The GGUF tokenizer metadata of ``tokenizer`` for a model with ``n_vocab`` embedding rows.

    ValueError (before anything is written) when the tokenizer is not a byte-level BPE one with a
    ``tokenizer.json``, has a normalizer, has a pre-tokenizer llama.cpp has no name for (unless ``tokenizer_pre``
    names it), or has more tokens than the model has embedding rows. Rows beyond the tokenizer are named
    ``[PAD<i>]`` with type UNUSED, as llama.cpp's own converter does.
    """
    if not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")
    with tempfile.TemporaryDirectory(prefix="hf-dynamic-gguf-vocab-") as tmp:
        folder = Path(tmp)
        tokenizer.save_pretrained(folder)
        if not (folder / "tokenizer.json").is_file():
            raise ValueError(
                f"tokenizer: {type(tokenizer).__name__} saved no tokenizer.json; GGUF export needs a fast "
                "(tokenizers-backed) byte-level BPE tokenizer"
            )
        tokenizer_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        if tokenizer_json.get("normalizer") is not None:
            raise ValueError(f"tokenizer: normalizer {tokenizer_json['normalizer'].get('type')!r} has no GGUF form")
        try:
            bpe = gguf.vocab.BpeVocab(folder)
        except FileNotFoundError as err:  # BpeVocab's way of saying "not a GPT-2 style byte-level BPE"
            model_type = tokenizer_json.get("model", {}).get("type")
            raise ValueError(
                f"tokenizer: model type {model_type!r} is not a byte-level BPE tokenizer, the only kind save_gguf "
                f"writes ({err})"
            ) from None
        pre = tokenizer_pre if tokenizer_pre is not None else pre_tokenizer_name(tokenizer_json)
        special = gguf.vocab.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    entries = list(bpe.all_tokens())
    if len(entries) > n_vocab:
        raise ValueError(
            f"tokenizer has {len(entries)} tokens but the model only {n_vocab} embedding rows (config.vocab_size)"
        )
    tokens = [text for text, _, _ in entries]
    types = [int(kind) for _, _, kind in entries]
    for token_id, added in tokenizer.added_tokens_decoder.items():
        if token_id < len(types):
            types[token_id] = int(gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED)
    padding = n_vocab - len(tokens)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
    types += [int(gguf.TokenType.UNUSED)] * padding
    add_bos, add_eos = _adds_special(tokenizer)
    special.add_special_token["bos"] = add_bos
    special.add_special_token["eos"] = add_eos
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        special.chat_template = tokenizer.chat_template
    return GGUFVocab(bpe.tokenizer_model, pre, tokens, types, special, added_padding=padding)
