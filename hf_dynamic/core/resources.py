"""Resource counting (parameters, FLOPs) shared by every method, differentiable in the structure.

DMS (``docs/dms.md``, "## Resource loss") needs the resource ``R(e)`` of a model *as a function of its keep
ratios*: every width below may be a float tensor (a soft count: the sum of a soft mask) and the result is then
differentiable in it; given integer widths (the hard masks / an exported model) the formulas are exact counts.
``tests/dms/test_dms_export.py`` checks :func:`llama_param_count` against the real ``num_parameters()`` of exported
models, and ``tests/core/test_core_resources.py`` checks :func:`llama_forward_flops` against
``torch.utils.flop_counter``.

On CPU, ``FlopCounterMode`` does not book the fused SDPA kernel; compare with eager attention there.

Per-layer widths are sequences (or 1-D tensors) with one entry per decoder layer; a scalar broadcasts to every
layer. ``attention_present`` / ``mlp_present`` scale a layer's sub-block (its depth mask, 0 = removed with its
norm).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "llama_param_count", "llama_forward_flops", "bert_forward_flops", "measured_forward_flops", "count_parameters",
]


def _t(value, num_layers: int | None = None) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    t = t.to(torch.float64)
    if num_layers is not None:
        t = t.expand(num_layers) if t.dim() == 0 else t
        if t.shape != (num_layers,):
            raise ValueError(f"expected a scalar or {num_layers} per-layer values, got shape {tuple(t.shape)}")
    return t


def _widths(num_layers, hidden_size, *per_layer):
    """``hidden_size`` as a float64 scalar and each per-layer width as a float64 ``[num_layers]`` tensor."""
    return (_t(hidden_size), *(_t(value, num_layers) for value in per_layer))


def llama_param_count(
    *,
    vocab_size: int,
    hidden_size,
    head_dim: int,
    num_attention_heads,
    num_key_value_heads,
    intermediate_size,
    num_layers: int,
    attention_present=1.0,
    mlp_present=1.0,
    tie_word_embeddings: bool = False,
    attention_bias: bool = False,
    mlp_bias: bool = False,
    o_proj_bias: bool | None = None,
    head_norms: int = 0,
) -> torch.Tensor:
    """Parameter count of a Llama-family decoder (``LlamaForCausalLM`` layout), per-layer widths allowed.

    Counted: token embedding ``V·H``; per layer, if its attention is present, q/k/v/o projections
    ``H·d·(n_q + 2·n_kv) + n_q·d·H`` (+ biases ``d·(n_q + 2·n_kv) + H`` when ``attention_bias``) and the input
    RMSNorm ``H``; if its MLP is present, gate/up/down ``3·H·I`` (+ ``2·I + H`` when ``mlp_bias``) and the
    post-attention RMSNorm ``H``; final RMSNorm ``H``; the LM head ``V·H`` unless tied. ``o_proj_bias`` (default:
    ``attention_bias``) separates the output projection's bias (Qwen2 has q/k/v biases but none on ``o_proj``).
    ``head_norms`` per-head norms over ``head_dim`` (Qwen3's ``q_norm`` / ``k_norm``: 2) add ``head_norms · d`` to
    every present attention sub-block. Returns a float64 tensor, differentiable in any tensor argument (the
    resource ``R(e)`` of ``docs/dms.md``, "## Resource loss").
    """
    h, nq, nkv, inter, attn, mlp = _widths(
        num_layers, hidden_size, num_attention_heads, num_key_value_heads, intermediate_size, attention_present,
        mlp_present,
    )
    d = float(head_dim)
    attn_params = h * d * (nq + 2 * nkv) + nq * d * h + h + head_norms * d
    if attention_bias:
        attn_params = attn_params + d * (nq + 2 * nkv)
    if attention_bias if o_proj_bias is None else o_proj_bias:
        attn_params = attn_params + h
    mlp_params = 3 * h * inter + h
    if mlp_bias:
        mlp_params = mlp_params + 2 * inter + h
    total = vocab_size * h + h + (attn * attn_params).sum() + (mlp * mlp_params).sum()
    if not tie_word_embeddings:
        total = total + vocab_size * h
    return total


def llama_forward_flops(
    *,
    vocab_size: int,
    hidden_size,
    head_dim: int,
    num_attention_heads,
    num_key_value_heads,
    intermediate_size,
    num_layers: int,
    seq_len: int,
    batch_size: int = 1,
    attention_present=1.0,
    mlp_present=1.0,
) -> torch.Tensor:
    """Matmul FLOPs of one forward pass over ``batch_size × seq_len`` tokens (the convention of
    ``torch.utils.flop_counter.FlopCounterMode``: 2 per multiply-add, element-wise ops not counted).

    Per token: ``2·(weights of every linear layer, LM head included)``; per attention layer and sequence:
    ``2 · 2 · n_q · T² · d`` for ``QKᵀ`` and ``AV`` (full ``T×T`` scores, as the counter books SDPA / eager
    attention). Differentiable in tensor arguments like :func:`llama_param_count`.
    """
    h, nq, nkv, inter, attn, mlp = _widths(
        num_layers, hidden_size, num_attention_heads, num_key_value_heads, intermediate_size, attention_present,
        mlp_present,
    )
    d = float(head_dim)
    tokens = float(batch_size * seq_len)
    attn_linear = h * d * (nq + 2 * nkv) + nq * d * h
    attn_scores = 4.0 * nq * d * float(seq_len) ** 2 * batch_size
    per_layer = attn * (2 * tokens * attn_linear + attn_scores) + mlp * (2 * tokens * 3 * h * inter)
    return per_layer.sum() + 2 * tokens * vocab_size * h


def bert_forward_flops(
    *,
    hidden_size,
    head_dim: int,
    num_attention_heads,
    intermediate_size,
    num_layers: int,
    seq_len: int,
    batch_size: int = 1,
    pooler: bool = False,
    num_labels: int = 0,
) -> torch.Tensor:
    """Matmul FLOPs of one BERT-family encoder forward over ``batch_size × seq_len`` tokens (the
    ``FlopCounterMode`` convention of :func:`llama_forward_flops`: 2 per multiply-add; embeddings, LayerNorm,
    softmax and biases not counted). Per layer with ``n`` heads of size ``d`` and ``I`` FFN channels:

        2 · B·T · (4·H·n·d + 2·H·I)  +  2 · 2 · B · n · T² · d

    (the query/key/value/output projections, the two FFN projections, then ``QKᵀ`` and ``AV``); ``pooler`` adds
    the pooler's ``2·B·H²`` (one ``H×H`` dense on each sequence's first token) and ``num_labels`` a classifier on
    the pooled output, ``2·B·H·num_labels`` (``BertForSequenceClassification``). Other task heads are not counted.
    Per-layer ``num_attention_heads`` / ``intermediate_size`` (the widths of a slimmable or pruned encoder,
    ``docs/slim.md``) are sequences or 1-D tensors; differentiable in tensor arguments like
    :func:`llama_forward_flops`.
    """
    h, heads, inter = _widths(num_layers, hidden_size, num_attention_heads, intermediate_size)
    d = float(head_dim)
    tokens = float(batch_size * seq_len)
    per_layer = 2 * tokens * (4 * h * heads * d + 2 * h * inter) + 4.0 * heads * d * float(seq_len) ** 2 * batch_size
    total = per_layer.sum()
    if pooler:
        total = total + 2 * batch_size * h * h
    return total + 2 * batch_size * h * num_labels


def measured_forward_flops(model: nn.Module, *args, **kwargs) -> int:
    """FLOPs of ``model(*args, **kwargs)`` counted by ``torch.utils.flop_counter.FlopCounterMode`` (no grad)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*args, **kwargs)
    return int(counter.get_total_flops())


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters of ``model`` (tied weights counted once)."""
    seen = {}
    for p in model.parameters():
        seen[id(p)] = p.numel()
    return int(sum(seen.values()))
