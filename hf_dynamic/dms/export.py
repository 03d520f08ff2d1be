"""Export of a DMS search (METHODS.md §3): slice the kept elements out of a Llama-family model.

Two targets:

- :func:`export_uniform`: every kept layer has the same widths → the original stock class (``LlamaForCausalLM``)
  with a smaller config; loads with plain transformers, no hf_dynamic needed.
- :func:`export_per_layer`: per-layer widths → ``DMSLlamaForCausalLM`` (``model_type="dms_llama"``).

Hidden-size pruning under RMSNorm: the masked model normalises over all ``H`` channels (the masked ones are zero),
the exported one over the ``H'`` kept ones; ``w·x/sqrt(Σx²/H + ε) = w'·x/sqrt(Σx²/H' + ε')`` holds exactly with
``w' = w·sqrt(H/H')`` and ``ε' = ε·H/H'`` (:func:`rescale_rmsnorm`), so every RMSNorm weight is rescaled and
``rms_norm_eps`` becomes ``ε·H/H'``.
"""

from __future__ import annotations

import copy
import math

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["export_uniform", "export_per_layer", "rescale_rmsnorm", "uniformity_report", "slice_state_dict"]


def rescale_rmsnorm(weight: torch.Tensor, eps: float, full: int, kept: int) -> tuple[torch.Tensor, float]:
    """RMSNorm over ``kept`` of ``full`` channels (METHODS.md §3): ``w' = w·sqrt(H/H')``, ``ε' = ε·H/H'``."""
    return weight * math.sqrt(full / kept), eps * full / kept


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)[None, :]).flatten()


def _slice_linear(out, sd, src, dst, rows, cols):
    """Copy the ``rows`` (output features) x ``cols`` (input features) block of linear ``src`` into ``out[dst]``;
    its bias, when present, keeps the same ``rows``."""
    out[dst + ".weight"] = sd[src + ".weight"][rows][:, cols]
    if src + ".bias" in sd:
        out[dst + ".bias"] = sd[src + ".bias"][rows]


def slice_state_dict(model, structure, keep_layers: list[int]) -> dict:
    """State dict of the pruned model: kept hidden channels, heads, MLP channels, layers (renumbered)."""
    config = model.config
    H = config.hidden_size
    hidden = structure.hidden
    Hp = int(hidden.numel())
    head_dim = getattr(config, "head_dim", None) or H // config.num_attention_heads
    eps = config.rms_norm_eps
    sd = model.state_dict()
    out = {}

    def norm(key):
        w, _ = rescale_rmsnorm(sd[key][hidden], eps, H, Hp)
        return w

    out["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"][:, hidden]
    out["model.norm.weight"] = norm("model.norm.weight")
    if "lm_head.weight" in sd:
        out["lm_head.weight"] = sd["lm_head.weight"][:, hidden]
    for new, old in enumerate(keep_layers):
        src, dst = f"model.layers.{old}.", f"model.layers.{new}."
        if structure.attention_present[old]:
            q = _head_rows(structure.query_heads[old], head_dim)
            kv = _head_rows(structure.kv_heads[old], head_dim)
            out[dst + "input_layernorm.weight"] = norm(src + "input_layernorm.weight")
            for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                _slice_linear(out, sd, src + f"self_attn.{name}", dst + f"self_attn.{name}", rows, hidden)
            _slice_linear(out, sd, src + "self_attn.o_proj", dst + "self_attn.o_proj", hidden, q)
        if structure.mlp_present[old]:
            ch = structure.mlp_channels[old]
            out[dst + "post_attention_layernorm.weight"] = norm(src + "post_attention_layernorm.weight")
            for name in ("gate_proj", "up_proj"):
                _slice_linear(out, sd, src + f"mlp.{name}", dst + f"mlp.{name}", ch, hidden)
            _slice_linear(out, sd, src + "mlp.down_proj", dst + "mlp.down_proj", hidden, ch)
    return {k: v.clone().contiguous() for k, v in out.items()}


def uniformity_report(structure) -> list[str]:
    """Why a structure is not uniform (empty list when a stock Llama config can express it)."""
    problems = []
    L = len(structure.attention_present)
    partial = [i for i in range(L) if structure.attention_present[i] != structure.mlp_present[i]]
    if partial:
        problems.append(f"{len(partial)} layer(s) keep only one of attention/MLP: {partial}")
    attn = [i for i in range(L) if structure.attention_present[i]]
    mlp = [i for i in range(L) if structure.mlp_present[i]]
    for name, values in (
        ("query heads", [int(structure.query_heads[i].numel()) for i in attn]),
        ("KV heads", [int(structure.kv_heads[i].numel()) for i in attn]),
        ("MLP channels", [int(structure.mlp_channels[i].numel()) for i in mlp]),
    ):
        if values and min(values) != max(values):
            problems.append(
                f"{name} per layer range {min(values)}..{max(values)} (spread {max(values) - min(values)}, "
                f"{len(set(values))} distinct values)"
            )
    return problems


def _new_config(config, config_class, **updates):
    data = config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version"):
        data.pop(key, None)
    data.update(updates)
    return config_class.from_dict(data)


def _finish(model, new_model, state_dict, dtype):
    missing, unexpected = new_model.load_state_dict(state_dict, strict=False)
    tied = {"lm_head.weight"} if getattr(new_model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"export produced a mismatched state dict: missing={missing}, unexpected={unexpected}")
    new_model.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        new_model.generation_config = copy.deepcopy(model.generation_config)
    param = next(model.parameters())
    new_model.to(device=param.device, dtype=dtype or param.dtype)
    new_model.eval()
    return new_model


@torch.no_grad()
def export_uniform(model, structure, dtype=None):
    """The stock model class at the kept widths (ValueError if the structure is not uniform)."""
    problems = uniformity_report(structure)
    config = model.config
    keep_layers = [i for i, (a, m) in enumerate(zip(structure.attention_present, structure.mlp_present)) if a and m]
    if not keep_layers:
        problems.append("no layer keeps both its attention and its MLP")
    Hp = int(structure.hidden.numel())
    if keep_layers and not problems:
        nq = int(structure.query_heads[keep_layers[0]].numel())
        if Hp % nq:
            problems.append(
                f"hidden size {Hp} is not a multiple of the {nq} kept query heads (LlamaConfig requires it)"
            )
    if problems:
        raise ValueError(
            "export(uniform=True) needs the same widths in every layer; the hard masks are not uniform: "
            + "; ".join(problems)
            + ". Search with DMSPruner(..., uniform=True) or export(uniform=False)."
        )
    first = keep_layers[0]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    updates = dict(
        hidden_size=Hp,
        num_attention_heads=int(structure.query_heads[first].numel()),
        num_key_value_heads=int(structure.kv_heads[first].numel()),
        head_dim=head_dim,
        intermediate_size=int(structure.mlp_channels[first].numel()),
        num_hidden_layers=len(keep_layers),
        rms_norm_eps=rescale_rmsnorm(torch.ones(1), config.rms_norm_eps, config.hidden_size, Hp)[1],
    )
    if isinstance(getattr(config, "layer_types", None), list):
        updates["layer_types"] = [config.layer_types[i] for i in keep_layers]
    new_config = _new_config(config, type(config), **updates)
    new_config.architectures = [type(model).__name__]
    new_model = type(model)(new_config)
    return _finish(model, new_model, slice_state_dict(model, structure, keep_layers), dtype)


@torch.no_grad()
def export_per_layer(model, structure, dtype=None):
    """``DMSLlamaForCausalLM`` with each layer's kept widths (a missing sub-block has width 0)."""
    from ..models.dms_llama import DMSLlamaConfig, DMSLlamaForCausalLM

    config = model.config
    if config.model_type != "llama":
        raise ValueError(
            f"export(uniform=False) builds a dms_llama model, which implements the Llama architecture; "
            f"got model_type={config.model_type!r} (use export(uniform=True))"
        )
    L = config.num_hidden_layers
    Hp = int(structure.hidden.numel())
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q = [int(structure.query_heads[i].numel()) if structure.attention_present[i] else 0 for i in range(L)]
    kv = [int(structure.kv_heads[i].numel()) if structure.attention_present[i] else 0 for i in range(L)]
    inter = [int(structure.mlp_channels[i].numel()) if structure.mlp_present[i] else 0 for i in range(L)]
    new_config = _new_config(
        config,
        DMSLlamaConfig,
        hidden_size=Hp,
        head_dim=head_dim,
        rms_norm_eps=rescale_rmsnorm(torch.ones(1), config.rms_norm_eps, config.hidden_size, Hp)[1],
        layer_num_attention_heads=q,
        layer_num_key_value_heads=kv,
        layer_intermediate_sizes=inter,
    )
    new_config.architectures = ["DMSLlamaForCausalLM"]
    new_model = DMSLlamaForCausalLM(new_config)
    return _finish(model, new_model, slice_state_dict(model, structure, list(range(L))), dtype)
