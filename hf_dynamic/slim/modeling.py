"""Nested widths: importance ordering, slimmable Linear layers and the width selection (``docs/slim.md``).

:func:`make_slimmable` turns a BERT-family encoder or a Llama-family decoder into a slimmable network in place:

1. **order** every layer's FFN channels and attention heads (whole KV groups under GQA) by importance (magnitude:
   :func:`ffn_channel_importance`, :func:`head_group_importance`; or first-order Taylor from calibration batches:
   :func:`taylor_importance`), most important first, by permuting the weights
   (a function-preserving reparametrisation: the rows of the input projections and the columns of the output
   projection move together), so that every width is a prefix;
2. **swap** the projections for :class:`SlimmableLinear` modules that share the same ``Parameter`` objects (the
   parameter names, the state dict and an optimizer built afterwards are unchanged) and compute
   ``F.linear(x, W[:k_out, :k_in], b[:k_out])`` at the active width: a smaller dense computation, not a mask.

:func:`set_width` / :func:`width` choose the width: one multiplier ``w`` for every layer, or a per-layer dict.
A multiplier keeps ``round_half_up(w · n)`` units of ``n`` (FFN channels, or KV groups of heads).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.importance import snip_score
from ..core.validation import check_bool, check_choice, check_number

__all__ = [
    "SlimmableLinear",
    "SlimLayer",
    "slim_layers",
    "make_slimmable",
    "order_by_importance_",
    "is_slimmable",
    "set_width",
    "get_width",
    "width",
    "resolve_widths",
    "width_counts",
    "units_at",
    "ffn_channel_importance",
    "head_group_importance",
    "taylor_importance",
]


class SlimmableLinear(nn.Linear):
    """``nn.Linear`` computing ``F.linear(x, W[:out_k, :in_k], b[:out_k])`` (``docs/slim.md``, "## Nested widths").

    ``active_out`` / ``active_in`` (``None``: the full size) are the kept prefix of the output rows and of the
    input columns; the input ``x`` must already have ``in_k`` features (the previous sliced layer produced them).
    """

    active_out: int | None
    active_in: int | None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "SlimmableLinear":
        """A SlimmableLinear sharing ``linear``'s weight and bias ``Parameter`` objects (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        new.active_out = None
        new.active_in = None
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if self.active_out is not None:
            weight = weight[: self.active_out]
            bias = None if bias is None else bias[: self.active_out]
        if self.active_in is not None:
            weight = weight[:, : self.active_in]
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, active_out={self.active_out}, active_in={self.active_in}"


@dataclass
class SlimLayer:
    """One transformer layer's prunable projections (the owning modules and attribute names).

    ``head_in``: query/key/value projections as ``(module, attr, rows_per_group)``; ``head_out``: the attention
    output projection (``(module, attr)``, its input columns are sliced, ``cols_per_group`` per group);
    ``ffn_in``: the FFN input projections (``(module, attr)``); ``ffn_out``: the FFN output projection.
    """

    head_in: list
    head_out: tuple
    cols_per_group: int
    num_groups: int
    ffn_in: list
    ffn_out: tuple
    intermediate_size: int

    def linear(self, slot) -> nn.Linear:
        return getattr(slot[0], slot[1])


def _bert_layer(layer) -> SlimLayer | None:
    attn = getattr(getattr(layer, "attention", None), "self", None)
    if attn is None or not all(hasattr(attn, n) for n in ("query", "key", "value", "attention_head_size")):
        return None
    size, heads = attn.attention_head_size, attn.num_attention_heads
    return SlimLayer(
        head_in=[(attn, n, size) for n in ("query", "key", "value")],
        head_out=(layer.attention.output, "dense"), cols_per_group=size, num_groups=heads,
        ffn_in=[(layer.intermediate, "dense")], ffn_out=(layer.output, "dense"),
        intermediate_size=layer.intermediate.dense.out_features,
    )


def _llama_layer(layer) -> SlimLayer | None:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return None
    if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        return None
    head_dim = attn.head_dim
    num_kv = attn.k_proj.out_features // head_dim
    rep = attn.q_proj.out_features // head_dim // num_kv
    return SlimLayer(
        head_in=[(attn, "q_proj", rep * head_dim), (attn, "k_proj", head_dim), (attn, "v_proj", head_dim)],
        head_out=(attn, "o_proj"), cols_per_group=rep * head_dim, num_groups=num_kv,
        ffn_in=[(mlp, "gate_proj"), (mlp, "up_proj")], ffn_out=(mlp, "down_proj"),
        intermediate_size=mlp.up_proj.out_features,
    )


def slim_layers(model: nn.Module) -> list[SlimLayer]:
    """The model's transformer layers as :class:`SlimLayer` s (BERT family: ``encoder.layer``; Llama family:
    ``model.layers``). ``TypeError`` for any other architecture."""
    base = getattr(model, "base_model", model)
    encoder = getattr(base, "encoder", None)
    if encoder is not None and hasattr(encoder, "layer"):
        layers = [_bert_layer(layer) for layer in encoder.layer]
    elif hasattr(base, "layers"):
        layers = [_llama_layer(layer) for layer in base.layers]
    else:
        layers = [None]
    if not layers or any(layer is None for layer in layers):
        raise TypeError(
            f"{type(model).__name__} is not a BERT-family encoder (encoder.layer[i].attention.self.query, ...) or a "
            "Llama-family decoder (layers[i].self_attn.q_proj, layers[i].mlp.gate_proj, ...): slimming supports "
            "those two layouts (docs/slim.md)"
        )
    return layers


# --- importance (magnitude) -------------------------------------------------------------------------------------
def ffn_channel_importance(layer: SlimLayer) -> torch.Tensor:
    """``s_j = sqrt(Σ_in ‖W_in[j, :]‖²) · ‖W_out[:, j]‖`` for every FFN channel ``j`` (``docs/slim.md``)."""
    w_in = torch.stack([layer.linear(s).weight.detach().float().pow(2).sum(1) for s in layer.ffn_in]).sum(0)
    w_out = layer.linear(layer.ffn_out).weight.detach().float().pow(2).sum(0)
    return (w_in * w_out).sqrt()


def head_group_importance(layer: SlimLayer) -> torch.Tensor:
    """``s_g = ‖[W_q; W_k; W_v] rows of group g‖_F · ‖W_o columns of group g‖_F`` for every head (BERT) or KV
    group of heads (GQA) ``g`` (``docs/slim.md``)."""
    g = layer.num_groups
    w_in = sum(layer.linear(s).weight.detach().float().pow(2).reshape(g, -1).sum(1) for s in layer.head_in)
    w_out = layer.linear(layer.head_out).weight.detach().float().pow(2).reshape(-1, g, layer.cols_per_group)
    return (w_in * w_out.sum((0, 2))).sqrt()


def _permute_rows_(linear: nn.Linear, order: torch.Tensor, block: int) -> None:
    index = (order[:, None] * block + torch.arange(block)).reshape(-1).to(linear.weight.device)
    linear.weight.copy_(linear.weight[index])
    if linear.bias is not None:
        linear.bias.copy_(linear.bias[index])


def _permute_cols_(linear: nn.Linear, order: torch.Tensor, block: int) -> None:
    index = (order[:, None] * block + torch.arange(block)).reshape(-1).to(linear.weight.device)
    linear.weight.copy_(linear.weight[:, index])


def taylor_importance(model: nn.Module, calibration_batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """First-order Taylor importance per layer: ``(head-group scores, FFN-channel scores)`` (``docs/slim.md``).

    A unit ``u`` (FFN channel, head / KV group) feeds the layer's output projection ``y = W_out h``; gating it with
    ``m_u`` (1 when kept) gives ``∂L/∂m_u = Σ_{i, c ∈ u} W_out[i, c] · G[i, c]`` with ``G = ∂L/∂W_out`` summed over
    the calibration batches, exactly. The score is its SNIP magnitude ``|∂L/∂m_u|``
    (:func:`hf_dynamic.core.importance.snip_score`): the first-order loss change of removing the unit. ``L`` is the
    model's own loss (each batch needs its ``labels``); gradients go through ``torch.autograd.grad`` only, so the
    parameters' ``.grad`` are left untouched.
    """
    layers = slim_layers(model)
    outs = [layer.linear(layer.head_out).weight for layer in layers] + [layer.linear(layer.ffn_out).weight
                                                                         for layer in layers]
    grads = [torch.zeros_like(w, dtype=torch.float32) for w in outs]
    seen = 0
    for batch in calibration_batches:
        loss = model(**batch).loss
        if loss is None:
            raise ValueError("calibration_batches must give the model a loss (include 'labels' in each batch)")
        for total, g in zip(grads, torch.autograd.grad(loss, outs, allow_unused=True)):
            if g is not None:
                total += g.float()
        seen += 1
    if seen == 0:
        raise ValueError("calibration_batches is empty: the Taylor importance needs at least one batch")
    n = len(layers)
    scores = []
    for i, layer in enumerate(layers):
        head = (outs[i].detach().float() * grads[i]).reshape(-1, layer.num_groups, layer.cols_per_group).sum((0, 2))
        ffn = (outs[n + i].detach().float() * grads[n + i]).sum(0)
        scores.append((snip_score(head), snip_score(ffn)))
    return scores


@torch.no_grad()
def _reorder_(layer: SlimLayer, head_scores: torch.Tensor, ffn_scores: torch.Tensor) -> None:
    ffn_order = torch.argsort(ffn_scores, descending=True, stable=True)
    for slot in layer.ffn_in:
        _permute_rows_(layer.linear(slot), ffn_order, 1)
    _permute_cols_(layer.linear(layer.ffn_out), ffn_order, 1)
    head_order = torch.argsort(head_scores, descending=True, stable=True)
    for module, attr, rows in layer.head_in:
        _permute_rows_(getattr(module, attr), head_order, rows)
    _permute_cols_(layer.linear(layer.head_out), head_order, layer.cols_per_group)


def order_by_importance_(model: nn.Module, importance: str = "magnitude", calibration_batches=None) -> nn.Module:
    """Step 1 of :func:`make_slimmable` alone: permute every layer's FFN channels and head groups by descending
    importance, in place (a function-preserving reparametrisation); returns ``model``.

    Works on a plain model and on a slimmable one (``SlimmableLinear`` is an ``nn.Linear``), whose Taylor scores
    are then taken at full width. ``importance`` / ``calibration_batches`` as in :func:`make_slimmable`.
    """
    check_choice("importance", importance, ("magnitude", "taylor"))
    if importance == "taylor" and calibration_batches is None:
        raise ValueError("importance='taylor' needs calibration_batches (model inputs with labels)")
    layers = slim_layers(model)
    if importance == "taylor":
        with width(model, 1.0) if is_slimmable(model) else contextlib.nullcontext():
            scores = taylor_importance(model, calibration_batches)
    else:
        scores = [(head_group_importance(layer), ffn_channel_importance(layer)) for layer in layers]
    for layer, (head_scores, ffn_scores) in zip(layers, scores):
        _reorder_(layer, head_scores, ffn_scores)
    return model


def is_slimmable(model: nn.Module) -> bool:
    """Whether :func:`make_slimmable` has been applied to ``model``."""
    return any(isinstance(m, SlimmableLinear) for m in model.modules())


def make_slimmable(model: nn.Module, reorder: bool = True, importance: str = "magnitude",
                   calibration_batches=None) -> nn.Module:
    """Make ``model`` slimmable in place (module docstring) and return it, at full width.

    ``importance``: ``"magnitude"`` (data-free: :func:`ffn_channel_importance`, :func:`head_group_importance`) or
    ``"taylor"`` (:func:`taylor_importance` over ``calibration_batches``, an iterable of model-input dicts with
    ``labels``). ``reorder=False`` skips the ordering (for a checkpoint saved already ordered, e.g. after slimmable
    training: the order is part of the weights). Applying it twice is an error.
    """
    check_bool("reorder", reorder)
    check_choice("importance", importance, ("magnitude", "taylor"))
    if importance == "taylor" and reorder and calibration_batches is None:
        raise ValueError("importance='taylor' needs calibration_batches (model inputs with labels)")
    if is_slimmable(model):
        raise ValueError(f"{type(model).__name__} is already slimmable (make_slimmable was applied)")
    layers = slim_layers(model)
    if reorder:
        order_by_importance_(model, importance, calibration_batches)
    for layer in layers:
        for module, attr, *_ in [*layer.head_in, layer.head_out, *layer.ffn_in, layer.ffn_out]:
            setattr(module, attr, SlimmableLinear.from_linear(getattr(module, attr)))
    return model


# --- width selection ---------------------------------------------------------------------------------------------
def units_at(multiplier: float, total: int, field: str, what: str = "units") -> int:
    """``round_half_up(multiplier · total)`` units; ``ValueError`` naming ``field`` when that is 0."""
    k = int(math.floor(multiplier * total + 0.5))
    if k < 1:
        raise ValueError(f"{field}={multiplier!r} keeps 0 of {total} {what} (needs >= {0.5 / total:.4g})")
    return k


def _check_multiplier(field: str, value) -> float:
    check_number(field, value, gt=0, le=1)
    return float(value)


def resolve_widths(model: nn.Module, widths) -> list[tuple[int, int]]:
    """Per layer ``(kept head groups, kept FFN channels)`` for ``widths``, checked before anything changes.

    ``widths``: a multiplier in (0, 1] for every layer and both sub-blocks; or a dict ``{layer index: multiplier}``
    or ``{layer index: {"attention": a, "mlp": m}}`` (unlisted layers stay at full width).
    """
    return width_counts(widths, [(layer.num_groups, layer.intermediate_size) for layer in slim_layers(model)])


def width_counts(widths, sizes: list[tuple[int, int]], field: str | None = None) -> list[tuple[int, int]]:
    """:func:`resolve_widths` for layers of ``sizes`` (per layer ``(head groups, FFN channels)``), without a model
    (a config checks its default width with it). ``field`` names ``widths`` in the errors (default: ``width`` for a
    multiplier, ``widths`` for a dict)."""
    per_layer: list = [(1.0, 1.0)] * len(sizes)
    if isinstance(widths, Mapping):
        field = field or "widths"
        for key, value in widths.items():
            if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < len(sizes):
                raise ValueError(f"{field} has unknown layer {key!r} (the model has layers 0..{len(sizes) - 1})")
            if isinstance(value, Mapping):
                unknown = set(value) - {"attention", "mlp"}
                if unknown:
                    raise ValueError(f"{field}[{key}] has unknown keys {sorted(unknown, key=repr)} (allowed: "
                                     "'attention', 'mlp')")
                a = _check_multiplier(f"{field}[{key}]['attention']", value.get("attention", 1.0))
                m = _check_multiplier(f"{field}[{key}]['mlp']", value.get("mlp", 1.0))
            else:
                a = m = _check_multiplier(f"{field}[{key}]", value)
            per_layer[key] = (a, m)
        name = field + "[{i}]"
    else:
        name = field or "width"
        w = _check_multiplier(name, widths)
        per_layer = [(w, w)] * len(sizes)
    return [
        (units_at(a, groups, name.format(i=i), f"attention head groups of layer {i}"),
         units_at(m, channels, name.format(i=i), f"FFN channels of layer {i}"))
        for i, ((groups, channels), (a, m)) in enumerate(zip(sizes, per_layer))
    ]


def _require_slimmable(model):
    if not is_slimmable(model):
        raise ValueError(f"{type(model).__name__} is not slimmable: call hf_dynamic.slim.make_slimmable(model) first")


def _apply(model, counts) -> None:
    for layer, (groups, channels) in zip(slim_layers(model), counts):
        full_groups = groups == layer.num_groups
        for module, attr, rows in layer.head_in:
            getattr(module, attr).active_out = None if full_groups else groups * rows
        layer.linear(layer.head_out).active_in = None if full_groups else groups * layer.cols_per_group
        full_ffn = channels == layer.intermediate_size
        for slot in layer.ffn_in:
            layer.linear(slot).active_out = None if full_ffn else channels
        layer.linear(layer.ffn_out).active_in = None if full_ffn else channels


def get_width(model: nn.Module) -> list[tuple[int, int]]:
    """The active ``(head groups, FFN channels)`` of every layer."""
    _require_slimmable(model)
    out = []
    for layer in slim_layers(model):
        heads = layer.linear(layer.head_out).active_in
        ffn = layer.linear(layer.ffn_out).active_in
        out.append((layer.num_groups if heads is None else heads // layer.cols_per_group,
                    layer.intermediate_size if ffn is None else ffn))
    return out


def set_width(model: nn.Module, widths) -> list[tuple[int, int]]:
    """Run ``model`` at ``widths`` from now on (see :func:`resolve_widths`); returns the per-layer unit counts."""
    _require_slimmable(model)
    counts = resolve_widths(model, widths)
    _apply(model, counts)
    return counts


@contextlib.contextmanager
def width(model: nn.Module, widths):
    """``with width(model, 0.5): ...`` runs the block at ``widths`` and restores the previous width after."""
    _require_slimmable(model)
    counts = resolve_widths(model, widths)
    previous = get_width(model)
    _apply(model, counts)
    try:
        yield counts
    finally:
        _apply(model, previous)
