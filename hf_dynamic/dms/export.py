"""Export of a DMS search (``docs/dms.md``, "## Search and export"): slice the kept elements out of a Llama-family
model (module paths from :mod:`hf_dynamic.dms.adapters`).

- :func:`export_uniform`: every kept layer has the same widths → the original stock class (``LlamaForCausalLM``,
  ``MistralForCausalLM``, ``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``) with a smaller config; loads with plain
  transformers, no hf_dynamic needed.
- per-layer widths are a model type of their own: ``hf_dynamic.DMSLlamaForCausalLM.from_pruned(pruner)`` builds
  one from :func:`pruned_config`, :func:`slice_state_dict` and :func:`finish_export`.

Both start from :func:`searched_structure`: the indices the pruner's hard masks keep (:class:`HardStructure`).

Hidden-size pruning under RMSNorm: the masked model normalises over all ``H`` channels (the masked ones are zero),
the exported one over the ``H'`` kept ones; ``w·x/sqrt(Σx²/H + ε) = w'·x/sqrt(Σx²/H' + ε')`` holds exactly with
``w' = w·sqrt(H/H')`` and ``ε' = ε·H/H'`` (:func:`rescale_rmsnorm`), so every RMSNorm weight is rescaled and
``rms_norm_eps`` becomes ``ε·H/H'``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from transformers.utils import logging

from .adapters import adapter_for, head_dim

logger = logging.get_logger(__name__)

__all__ = [
    "HardStructure", "export_uniform", "finish_export", "hard_structure", "pruned_config", "rescale_rmsnorm",
    "searched_structure", "slice_state_dict", "uniformity_report",
]


@dataclass
class HardStructure:
    """What the hard masks keep: index tensors (sorted) per layer, and which sub-blocks survive."""

    hidden: torch.Tensor
    attention_present: list[bool]
    mlp_present: list[bool]
    query_heads: list[torch.Tensor]
    kv_heads: list[torch.Tensor]
    mlp_channels: list[torch.Tensor]


def hard_structure(pruner) -> HardStructure:
    """Indices kept by ``pruner``'s hard masks (the structure an export builds); an unsearched kind keeps all."""
    masks = pruner.masks("hard")
    L, dev = pruner.num_layers, pruner.topk[pruner.prune[0]].importance.device

    def idx(m):
        return torch.nonzero(m > 0.5, as_tuple=False).flatten()

    hidden = idx(masks["hidden"]) if "hidden" in masks else torch.arange(pruner.hidden_size, device=dev)
    attn = [bool(v > 0.5) for v in masks["attn_block"]] if "attn_block" in masks else [True] * L
    mlp = [bool(v > 0.5) for v in masks["mlp_block"]] if "mlp_block" in masks else [True] * L
    full_q, full_kv = torch.arange(pruner.num_heads, device=dev), torch.arange(pruner.num_kv_heads, device=dev)
    q = [idx(masks["heads_q"][i]) if "heads_q" in masks else full_q for i in range(L)]
    kv = [idx(masks["heads_kv"][i]) if "heads_kv" in masks else full_kv for i in range(L)]
    full_i = torch.arange(pruner.intermediate_size, device=dev)
    ch = [idx(masks["mlp"][i]) if "mlp" in masks else full_i for i in range(L)]
    return HardStructure(hidden, attn, mlp, q, kv, ch)


def searched_structure(pruner) -> HardStructure:
    """:func:`hard_structure`, after checking that a search ran (what every export starts from)."""
    if pruner.num_search_steps == 0:
        raise ValueError(
            "export() before any search step: no Taylor importance has been accumulated yet (run at least one "
            "forward/backward pass with the pruner attached, or set importances explicitly)"
        )
    return hard_structure(pruner)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32 and narrower floats, fp64 for fp64: exports compute at this precision and cast once, at the
    end (docs/dms.md, "## Mixed precision")."""
    return torch.promote_types(dtype, torch.float32)


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(_compute_dtype(tensor.dtype))


def rescale_rmsnorm(weight: torch.Tensor, eps: float, full: int, kept: int) -> tuple[torch.Tensor, float]:
    """RMSNorm over ``kept`` of ``full`` channels: ``w' = w·sqrt(H/H')``, ``ε' = ε·H/H'``; ``w'`` is computed and
    returned in fp32 (fp64 for fp64 ``weight``), the export casts it to the model's dtype once."""
    return _upcast(weight) * math.sqrt(full / kept), eps * full / kept


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)[None, :]).flatten()


def _slice_linear(out, sd, src, dst, rows, cols):
    """Copy the ``rows`` (output features) x ``cols`` (input features) block of linear ``src`` into ``out[dst]``;
    its bias, when present, keeps the same ``rows``."""
    out[dst + ".weight"] = sd[src + ".weight"][rows][:, cols]
    if src + ".bias" in sd:
        out[dst + ".bias"] = sd[src + ".bias"][rows]


def slice_state_dict(model, structure, keep_layers: list[int], adapter=None) -> dict:
    """State dict of the pruned model: kept hidden channels, heads, MLP channels, layers (renumbered).

    Keys follow ``adapter``'s module paths (default: the model's own adapter). Per-head norms over ``head_dim``
    (Qwen3's ``q_norm`` / ``k_norm``) are copied unchanged, but they read the config's ``rms_norm_eps``, which the
    export rescales to ``ε·H/H'``: the projections they normalise (q and k) are scaled by ``sqrt(H/H')``, and as
    ``RMSNorm(α·q; ε·α²) = RMSNorm(q; ε)`` the per-head norms compute exactly what they computed before.
    """
    adapter = adapter or adapter_for(model)
    config = model.config
    H = config.hidden_size
    hidden = structure.hidden
    Hp = int(hidden.numel())
    d = head_dim(config)
    eps = getattr(config, adapter.norm_eps)
    sd = model.state_dict()
    out = {}

    def norm(key):
        w, _ = rescale_rmsnorm(sd[key + ".weight"][hidden], eps, H, Hp)
        return w

    embed, final_norm, lm_head = adapter.embed_tokens, adapter.final_norm, adapter.lm_head
    out[embed + ".weight"] = sd[embed + ".weight"][:, hidden]
    out[final_norm + ".weight"] = norm(final_norm)
    if lm_head + ".weight" in sd:
        out[lm_head + ".weight"] = sd[lm_head + ".weight"][:, hidden]
    for new, old in enumerate(keep_layers):
        src, dst = f"{adapter.layers}.{old}.", f"{adapter.layers}.{new}."
        if structure.attention_present[old]:
            q = _head_rows(structure.query_heads[old], d)
            kv = _head_rows(structure.kv_heads[old], d)
            out[dst + adapter.attention_norm + ".weight"] = norm(src + adapter.attention_norm)
            for path, rows in zip(adapter.attention_linears, (q, kv, kv)):
                _slice_linear(out, sd, src + path, dst + path, rows, hidden)
            _slice_linear(out, sd, src + adapter.o_proj, dst + adapter.o_proj, hidden, q)
            for path in adapter.head_norms:
                out[dst + path + ".weight"] = sd[src + path + ".weight"]
            for path in adapter.head_normed_projections:  # keeps the per-head norms exact under ε' = ε·H/H'
                for suffix in (".weight", ".bias"):
                    if dst + path + suffix in out:
                        out[dst + path + suffix] = _upcast(out[dst + path + suffix]) * math.sqrt(H / Hp)
        if structure.mlp_present[old]:
            ch = structure.mlp_channels[old]
            out[dst + adapter.mlp_norm + ".weight"] = norm(src + adapter.mlp_norm)
            for path in adapter.mlp_input_linears:
                _slice_linear(out, sd, src + path, dst + path, ch, hidden)
            _slice_linear(out, sd, src + adapter.down_proj, dst + adapter.down_proj, hidden, ch)
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


def pruned_config(model, structure, config_class, adapter=None, **updates):
    """``config_class`` built from ``model.config`` at the pruned hidden size (``rms_norm_eps`` rescaled, see
    :func:`rescale_rmsnorm`), with an explicit ``head_dim``, ``use_cache=True`` (a search usually runs with the
    cache off; the exported model is for inference) and ``updates``."""
    adapter = adapter or adapter_for(model)
    config = model.config
    Hp = int(structure.hidden.numel())
    eps = rescale_rmsnorm(torch.ones(1), getattr(config, adapter.norm_eps), config.hidden_size, Hp)[1]
    data = config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version"):
        data.pop(key, None)
    data.update(hidden_size=Hp, head_dim=head_dim(config), use_cache=True, **{adapter.norm_eps: eps})
    data.update(updates)
    return config_class.from_dict(data)


def finish_export(model, new_model, state_dict, dtype=None):
    """Load ``state_dict`` into ``new_model`` (strict but for a tied LM head), copy ``model``'s generation config,
    move to ``model``'s device and ``dtype`` (default: ``model``'s), eval mode.

    ``new_model`` is loaded at the compute precision of ``model``'s dtype (fp32, or fp64 for an fp64 model: the
    sliced weights exactly, the rescaled norms as computed) and cast to ``dtype`` once, so every exported weight is
    the correctly rounded value of its exact one (``docs/dms.md``, "## Mixed precision")."""
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r} ({type(dtype).__name__})")
    param = next(model.parameters())
    new_model.to(_compute_dtype(param.dtype))
    missing, unexpected = new_model.load_state_dict(state_dict, strict=False)
    tied = {"lm_head.weight"} if getattr(new_model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"export produced a mismatched state dict: missing={missing}, unexpected={unexpected}")
    new_model.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        new_model.generation_config = copy.deepcopy(model.generation_config)
    new_model.to(device=param.device, dtype=dtype or param.dtype)
    new_model.eval()
    return new_model


@torch.no_grad()
def export_uniform(model, structure, adapter=None, dtype=None):
    """The stock model class at the kept widths (ValueError if the structure is not uniform)."""
    adapter = adapter or adapter_for(model)
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
            + ". Search with DMSPruner(..., uniform=True), or export per-layer widths with "
            "hf_dynamic.DMSLlamaForCausalLM.from_pruned(pruner)."
        )
    first = keep_layers[0]
    updates = dict(
        num_attention_heads=int(structure.query_heads[first].numel()),
        num_key_value_heads=int(structure.kv_heads[first].numel()),
        intermediate_size=int(structure.mlp_channels[first].numel()),
        num_hidden_layers=len(keep_layers),
    )
    if isinstance(getattr(config, "layer_types", None), list):
        updates["layer_types"] = [config.layer_types[i] for i in keep_layers]
    new_config = pruned_config(model, structure, type(config), adapter, **updates)
    new_config.architectures = [type(model).__name__]
    new_model = type(model)(new_config)
    return finish_export(model, new_model, slice_state_dict(model, structure, keep_layers, adapter), dtype)
