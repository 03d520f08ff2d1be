"""Tiny random Llama-family models and structure helpers shared by the DMS tests (tests/dms, tests/core,
tests/models/dms_llama)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 64
TINY_LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True)


def tiny_llama(cls=LlamaForCausalLM, config_cls=LlamaConfig, random_norms=False, **overrides):
    """A tiny GQA model (4 query heads, 2 KV groups) in eval mode; ``random_norms`` draws the RMSNorm weights
    from U(0.5, 1.5) so that an export's norm rescaling matters."""
    model = cls(config_cls(**{**TINY_LLAMA, **overrides})).eval()
    if random_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.uniform_(0.5, 1.5)
    return model


def token_batch(n=2, t=12):
    return torch.randint(0, VOCAB, (n, t))


def set_structure(pruner, counts, layer_importance=None):
    """Random importances, then the given kept counts per kind (scalar or per-row)."""
    for kind, op in pruner.topk.items():
        pruner.set_importance(kind, torch.rand_like(op.importance))
    if layer_importance is not None:
        pruner.set_importance("layers", torch.tensor(layer_importance, dtype=torch.float32))
    with torch.no_grad():
        for kind, count in counts.items():
            pruner.topk[kind].set_keep_count(count)


def hard_logits(pruner, model, x):
    with torch.no_grad(), pruner.hard_masks():
        return model(x).logits
