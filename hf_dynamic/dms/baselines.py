"""Structured-pruning baselines for DMS comparisons, built on the same masks and export as DMS.

Both prune attention heads (per the pruner's ``head_grouping``) and MLP channels with the *same* count in every
layer (LLM-Pruner's uniform setting; hidden size and depth are kept) and differ only in the element importance:

- :func:`magnitude_importance`: L2 norm of each element's weights (rows of q/k/v and columns of o for a head
  group; rows of gate/up and the column of down for an MLP channel);
- :func:`one_shot_taylor_importance`: first-order Taylor importance of the full model on calibration batches
  (LLM-Pruner-style, group level): the gradient of the loss w.r.t. an all-ones mask, ``(m·∂L/∂m)²``, averaged over
  the batches (a mean of squares per batch, where LLM-Pruner takes ``|Σ g·w|`` over the whole calibration set).

:func:`match_parameter_count` then sets the keep counts so the pruned model has (as nearly as the granularity
allows) a given number of parameters, and ``pruner.export()`` builds it.
"""

from __future__ import annotations

import torch
from scipy import optimize
from transformers.utils import logging

from .adapters import get_module

logger = logging.get_logger(__name__)

__all__ = ["magnitude_importance", "one_shot_taylor_importance", "match_parameter_count"]


def _require(pruner, kinds=("heads", "mlp")):
    missing = [k for k in kinds if k not in pruner.topk]
    if missing or set(pruner.topk) - set(kinds):
        raise ValueError(f"baselines need a DMSPruner with prune={kinds}; got prune={tuple(pruner.topk)}")


@torch.no_grad()
def magnitude_importance(pruner) -> None:
    """Set each head group's / MLP channel's importance to the L2 norm of its weights."""
    _require(pruner)
    model, a = pruner.model[0], pruner.adapter
    d, L = pruner.head_dim, pruner.num_layers
    heads = torch.zeros_like(pruner.topk["heads"].importance).view(L, -1)
    mlp = torch.zeros_like(pruner.topk["mlp"].importance)

    def weight(layer, path):
        return get_module(layer, path).weight.float()

    for i, layer in enumerate(a.decoder_layers(model)):
        q = weight(layer, a.q_proj).view(pruner.num_heads, d, -1).pow(2).sum((1, 2))
        o = weight(layer, a.o_proj).view(-1, pruner.num_heads, d).pow(2).sum((0, 2))
        k = weight(layer, a.k_proj).view(pruner.num_kv_heads, d, -1).pow(2).sum((1, 2))
        v = weight(layer, a.v_proj).view(pruner.num_kv_heads, d, -1).pow(2).sum((1, 2))
        per_query = q + o  # [n_q]
        if pruner.head_grouping == "kv":
            heads[i] = (per_query.view(pruner.num_kv_heads, -1).sum(-1) + k + v).sqrt()
        else:
            heads[i] = per_query.sqrt()
        mlp[i] = (
            weight(layer, a.gate_proj).pow(2).sum(1) + weight(layer, a.up_proj).pow(2).sum(1)
            + weight(layer, a.down_proj).pow(2).sum(0)
        ).sqrt()
    pruner.set_importance("heads", heads)
    pruner.set_importance("mlp", mlp)


def one_shot_taylor_importance(pruner, batches) -> None:
    """First-order Taylor importance of the *full* model: mean over ``batches`` of ``(m·∂L/∂m)²`` at ``m = 1``.

    ``batches`` yields ``input_ids`` tensors (labels = inputs). Weight gradients are not needed and not kept.
    """
    _require(pruner)
    model = pruner.model[0]
    sums = {k: torch.zeros_like(op.importance) for k, op in pruner.topk.items()}
    n = 0
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with pruner.full_model_scoring(ema_decay=0.0):  # each backward sets c = (m·∂L/∂m)² of that batch
            for ids in batches:
                model(input_ids=ids, labels=ids).loss.backward()
                for k, op in pruner.topk.items():
                    sums[k] += op.importance
                n += 1
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    if n == 0:
        raise ValueError("one_shot_taylor_importance needs at least one calibration batch")
    for k, total in sums.items():
        pruner.set_importance(k, total / n)


def _params_for(pruner, heads: int, channels: int) -> int:
    op_h, op_m = pruner.topk["heads"], pruner.topk["mlp"]
    with torch.no_grad():
        saved = (op_h.keep_ratio.clone(), op_m.keep_ratio.clone())
        op_h.set_keep_count(heads)
        op_m.set_keep_count(channels)
        count = int(pruner.resource(hard=True, kind="params"))
        op_h.keep_ratio.copy_(saved[0])
        op_m.keep_ratio.copy_(saved[1])
    return count


@torch.no_grad()
def match_parameter_count(pruner, target_params: int) -> dict:
    """Uniform head and MLP keep counts whose parameter count is nearest ``target_params``.

    Heads and channels are kept in the same proportion (rounded), then the channel count is adjusted alone to get
    as close as possible. Returns ``{"heads": k_h, "mlp": k_m, "params": count}`` and sets the keep ratios.
    """
    _require(pruner)
    n_heads, n_mlp = pruner.topk["heads"].num_elements, pruner.topk["mlp"].num_elements

    def counts(r):
        return max(1, min(n_heads, round(r * n_heads))), max(1, min(n_mlp, round(r * n_mlp)))

    def excess(r):  # a step function of r, increasing; its sign change is the largest proportion that fits
        return _params_for(pruner, *counts(r)) - target_params - 0.5

    if excess(1.0) <= 0:
        ratio = 1.0
    elif excess(0.0) >= 0:
        ratio = 0.0
    else:
        ratio = optimize.bisect(excess, 0.0, 1.0, xtol=2.0**-30)
    heads, _ = counts(ratio)
    per_channel = _params_for(pruner, heads, 2) - _params_for(pruner, heads, 1)
    base = _params_for(pruner, heads, 1) - per_channel
    channels = max(1, min(n_mlp, round((target_params - base) / per_channel)))
    pruner.topk["heads"].set_keep_count(heads)
    pruner.topk["mlp"].set_keep_count(channels)
    params = _params_for(pruner, heads, channels)
    if abs(params - target_params) > per_channel:
        logger.warning(f"baseline: nearest parameter count {params} is far from the requested {target_params}")
    return {"heads": heads, "mlp": channels, "params": params}
