"""Structured-pruning baselines for DMS comparisons, built on the same masks and export as DMS (``docs/dms.md``,
"## Baselines").

They prune attention heads (per the pruner's ``head_grouping``) and MLP channels (hidden size and depth are kept)
and differ in the element importance and in how many elements each layer keeps. With the *same* count in every
layer (LLM-Pruner's uniform setting, :func:`match_parameter_count`):

- :func:`magnitude_importance`: L2 norm of each element's weights (rows of q/k/v and columns of o for a head
  group; rows of gate/up and the column of down for an MLP channel);
- :func:`one_shot_taylor_importance`: first-order Taylor importance of the full model on calibration batches
  (LLM-Pruner-style, group level): the gradient of the loss w.r.t. an all-ones mask, ``(m·∂L/∂m)²``, averaged over
  the batches (a mean of squares per batch, where LLM-Pruner takes ``|Σ g·w|`` over the whole calibration set).
- :func:`wanda_sp_importance`: structured Wanda (Wanda-sp, as FLAP's baseline): ``Σ_i |W_ij| · ‖X_j‖₂`` over
  the weights that read a pruned input channel ``j`` of ``o_proj`` / ``down_proj`` (``‖X_j‖₂`` the channel's
  activation norm over the calibration tokens), summed over a head group's channels.

:func:`match_parameter_count` then sets the keep counts so the pruned model has (as nearly as the granularity
allows) a given number of parameters, and ``pruner.export()`` builds it.

With per-layer counts (a pruner built with ``uniform=False``; exported by ``DMSLlamaForCausalLM.from_pruned``):

- FLAP (An et al., AAAI 2024): :func:`flap_scores` is the fluctuation metric of each input channel ``j`` of
  ``o_proj`` / ``down_proj``, ``Var_t(X_tj) · ‖W_:,j‖²`` (sample variance over the calibration tokens times the
  squared norm of the weight column reading it), summed over a head group's channels;
  :func:`flap_prune` standardises the scores per layer and structure type, ranks every head group and MLP channel
  of the model *together* and keeps the best ones up to a parameter budget (so each layer gets its own widths);
  :func:`flap_compensation` gives the bias ``b = W_:,removed · mean(X_removed)`` that replaces the removed
  channels by their calibration mean (``dms_llama``'s ``output_proj_bias`` carries it);
- any criterion on a given per-layer structure (e.g. DMS's searched keep counts): set the importance, then the
  counts with ``pruner.topk[kind].set_keep_count(counts)``.

:func:`calibration_statistics` collects the activation statistics FLAP and Wanda-sp read.
"""

from __future__ import annotations

import torch
from scipy import optimize
from transformers.utils import logging


logger = logging.get_logger(__name__)

__all__ = [
    "magnitude_importance", "one_shot_taylor_importance", "match_parameter_count", "calibration_statistics",
    "wanda_sp_importance", "flap_scores", "flap_prune", "flap_compensation",
]


def _require(pruner, kinds=("heads", "mlp"), uniform=None, head_grouping=None):
    missing = [k for k in kinds if k not in pruner.topk]
    if missing or set(pruner.topk) - set(kinds):
        raise ValueError(f"baselines need a DMSPruner with prune={kinds}; got prune={tuple(pruner.topk)}")
    if uniform is not None and pruner.uniform != uniform:
        raise ValueError(f"this baseline needs a DMSPruner with uniform={uniform}, got uniform={pruner.uniform}")
    if head_grouping is not None and pruner.head_grouping != head_grouping:
        raise ValueError(
            f"this baseline scores KV head groups: it needs head_grouping={head_grouping!r}, got "
            f"{pruner.head_grouping!r}"
        )


@torch.no_grad()
def magnitude_importance(pruner) -> None:
    """Set each head group's / MLP channel's importance to the L2 norm of its weights."""
    _require(pruner)
    model, a = pruner.model[0], pruner.adapter
    d, L = pruner.head_dim, pruner.num_layers
    heads = torch.zeros_like(pruner.topk["heads"].importance).view(L, -1)
    mlp = torch.zeros_like(pruner.topk["mlp"].importance)

    def weight(layer, path):
        return layer.get_submodule(path).weight.float()

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


# ------------------------------------------------------------------------------------ activation-based criteria
@torch.no_grad()
def calibration_statistics(pruner, batches) -> dict:
    """Per-channel statistics of the inputs of every layer's ``o_proj`` and ``down_proj`` over calibration tokens,
    on the full model (every mask at one): ``{"attn": {...}, "mlp": {...}, "tokens": n}``, each with ``mean``,
    ``var`` (sample variance, ``n − 1`` in the denominator) and ``sq_norm`` (``Σ_t X_tj²``), float64 tensors of
    shape ``[layers, channels]``.

    ``batches`` yields ``input_ids`` tensors ``[batch, seq]`` (every position counts: no padding).
    """
    model, a = pruner.model[0], pruner.adapter
    layers = a.decoder_layers(model)
    sums = {kind: {"sum": [None] * len(layers), "sq": [None] * len(layers)} for kind in ("attn", "mlp")}
    count = [0]

    def hook(kind, i):
        def record(module, args):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            s = sums[kind]
            s["sum"][i] = x.sum(0) if s["sum"][i] is None else s["sum"][i] + x.sum(0)
            s["sq"][i] = x.pow(2).sum(0) if s["sq"][i] is None else s["sq"][i] + x.pow(2).sum(0)
            if kind == "attn" and i == 0:
                count[0] += x.shape[0]
        return record

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.get_submodule(a.o_proj).register_forward_pre_hook(hook("attn", i)))
        handles.append(layer.get_submodule(a.down_proj).register_forward_pre_hook(hook("mlp", i)))
    try:
        with pruner.full_model_scoring():  # masks at one: the statistics of the unpruned model
            for ids in batches:
                model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    n = count[0]
    if n < 2:
        raise ValueError(f"calibration_statistics needs at least 2 calibration tokens, got {n}")
    out = {"tokens": n}
    for kind, s in sums.items():
        total, sq = torch.stack(s["sum"]), torch.stack(s["sq"])
        mean = total / n
        out[kind] = {"mean": mean, "var": (sq - n * mean.pow(2)).clamp_min(0) / (n - 1), "sq_norm": sq}
    return out


def _column_weights(pruner):
    """Per layer: ``o_proj`` and ``down_proj`` weights (float64, ``[hidden, channels]``)."""
    model, a = pruner.model[0], pruner.adapter
    return [(layer.get_submodule(a.o_proj).weight.detach().double(),
             layer.get_submodule(a.down_proj).weight.detach().double()) for layer in a.decoder_layers(model)]


def _per_head_group(pruner, channel_scores: torch.Tensor) -> torch.Tensor:
    """``[L, n_q · head_dim]`` channel scores → ``[L, n_kv]``: the sum over each KV group's query-head channels."""
    L = channel_scores.shape[0]
    return channel_scores.reshape(L, pruner.num_kv_heads, -1).sum(-1)


@torch.no_grad()
def wanda_sp_importance(pruner, stats: dict) -> None:
    """Wanda-sp: set each KV head group's / MLP channel's importance to ``Σ_i |W_ij| · ‖X_j‖₂`` over the
    ``o_proj`` / ``down_proj`` columns ``j`` it owns (``stats`` from :func:`calibration_statistics`)."""
    _require(pruner, head_grouping="kv")
    weights = _column_weights(pruner)
    attn = torch.stack([o.abs().sum(0) for o, _ in weights]) * stats["attn"]["sq_norm"].sqrt()
    mlp = torch.stack([d.abs().sum(0) for _, d in weights]) * stats["mlp"]["sq_norm"].sqrt()
    pruner.set_importance("heads", _per_head_group(pruner, attn).float())
    pruner.set_importance("mlp", mlp.float())


@torch.no_grad()
def flap_scores(pruner, stats: dict) -> dict:
    """FLAP's fluctuation metric: ``{"heads": [L, n_kv], "mlp": [L, I]}`` (float64), a channel's
    ``Var(X_j) · ‖W_:,j‖²`` summed over a head group's channels (module docstring)."""
    _require(pruner, head_grouping="kv")
    weights = _column_weights(pruner)
    attn = stats["attn"]["var"] * torch.stack([o.pow(2).sum(0) for o, _ in weights])
    mlp = stats["mlp"]["var"] * torch.stack([d.pow(2).sum(0) for _, d in weights])
    return {"heads": _per_head_group(pruner, attn), "mlp": mlp}


def _standardise(scores: torch.Tensor) -> torch.Tensor:
    """Per row: ``(x − mean) / std`` (a row with no spread becomes zeros)."""
    std = scores.std(-1, keepdim=True)
    return (scores - scores.mean(-1, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std))


@torch.no_grad()
def flap_prune(pruner, stats: dict, target_params: int, extra_params: int = 0) -> dict:
    """FLAP's global structure: per-layer keep counts of head groups and MLP channels whose parameter count
    (plus ``extra_params``, e.g. the compensation biases) is nearest ``target_params``.

    Scores (:func:`flap_scores`) are standardised per layer and structure type and ranked over the whole model;
    each layer keeps its best head group and MLP channel whatever their rank (a layer keeps both sub-blocks), then
    the next best elements in global order are kept while they fit. Sets the importances (the standardised scores)
    and the keep counts; returns ``{"heads": [...], "mlp": [...], "params": count}`` (counts per layer).
    """
    _require(pruner, uniform=False, head_grouping="kv")
    scores = {kind: _standardise(v) for kind, v in flap_scores(pruner, stats).items()}
    for kind, v in scores.items():
        pruner.set_importance(kind, v.float())
    L = pruner.num_layers
    # every element in one list: (score, kind, layer); each layer's best head group and channel are always kept
    order = {kind: v.argsort(-1, descending=True) for kind, v in scores.items()}
    pool = []
    for kind, v in scores.items():
        for layer in range(L):
            for rank in range(1, v.shape[1]):
                pool.append((float(v[layer, order[kind][layer, rank]]), kind, layer))
    pool.sort(key=lambda e: -e[0])

    def counts_for(k):
        counts = {kind: torch.ones(L, dtype=torch.long) for kind in scores}
        for _, kind, layer in pool[:k]:
            counts[kind][layer] += 1
        return counts

    def params_for(k):
        counts = counts_for(k)
        saved = {kind: pruner.topk[kind].keep_ratio.clone() for kind in counts}
        for kind, c in counts.items():
            pruner.topk[kind].set_keep_count(c)
        total = int(pruner.resource(hard=True, kind="params")) + extra_params
        for kind, v in saved.items():
            pruner.topk[kind].keep_ratio.copy_(v)
        return total

    lo, hi = 0, len(pool)  # the largest prefix at or below the target, then the nearer of it and the next
    if params_for(0) > target_params:
        raise ValueError(f"target_params={target_params} is below the smallest FLAP structure ({params_for(0)})")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if params_for(mid) <= target_params:
            lo = mid
        else:
            hi = mid - 1
    k = lo
    if k < len(pool) and abs(params_for(k + 1) - target_params) < abs(params_for(k) - target_params):
        k += 1
    counts = counts_for(k)
    for kind, c in counts.items():
        pruner.topk[kind].set_keep_count(c)
    return {"heads": counts["heads"].tolist(), "mlp": counts["mlp"].tolist(), "params": params_for(k)}


@torch.no_grad()
def flap_compensation(pruner, stats: dict) -> dict:
    """FLAP's bias compensation for the pruner's hard structure: per layer ``b_o = W_o[:, removed] ·
    mean(X_removed)`` and ``b_down`` likewise (float64 ``[L, hidden]`` each, ``{"o_proj": ..., "down_proj": ...}``).

    Adding ``b`` to the pruned projection makes it output what the unpruned one outputs when the removed input
    channels hold their calibration mean.
    """
    _require(pruner, head_grouping="kv")
    structure = pruner.hard_structure()
    weights = _column_weights(pruner)
    d = pruner.head_dim
    out = {"o_proj": [], "down_proj": []}
    for i, (w_o, w_down) in enumerate(weights):
        kept_o = torch.zeros(w_o.shape[1], dtype=torch.bool)
        for h in structure.query_heads[i].tolist():
            kept_o[h * d:(h + 1) * d] = True
        kept_down = torch.zeros(w_down.shape[1], dtype=torch.bool)
        kept_down[structure.mlp_channels[i].cpu()] = True
        out["o_proj"].append(w_o[:, ~kept_o] @ stats["attn"]["mean"][i][~kept_o])
        out["down_proj"].append(w_down[:, ~kept_down] @ stats["mlp"]["mean"][i][~kept_down])
    return {k: torch.stack(v) for k, v in out.items()}
