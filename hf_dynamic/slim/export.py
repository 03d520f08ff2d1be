"""Export a width of a slimmable network as a real, smaller checkpoint (``docs/slim.md``, "## Export").

- :func:`sliced_state_dict`: the model's state dict with every projection cut to the kept prefix at ``widths``;
- :func:`export_width`: a new model holding that state dict:

  * **uniform** widths → the model's own stock class (``BertFor*``, ``LlamaForCausalLM``, ...) with a smaller
    ``intermediate_size`` (and, for Llama, fewer ``num_attention_heads`` / ``num_key_value_heads`` with
    ``head_dim`` kept explicit); for a registered slimmable type (``slimmable_bert``, ``slimmable_llama``), the
    stock class it extends, with a stock config (``SlimmableModelMixin.stock_counterpart``). Stock BERT computes its
    head size as ``hidden_size / num_attention_heads`` and transformers 5 has no ``prune_heads``, so a BERT export
    with fewer heads is refused;
  * **per-layer** widths of a Llama-family decoder → the ``dms_llama`` model type (per-layer heads and channels),
    looked up through transformers' Auto classes (``AutoConfig.for_model("dms_llama", ...)``), which
    ``import hf_dynamic`` registers: a method package may not import a model package (``docs/architecture.md``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from .modeling import SlimmableLinear, _require_slimmable, resolve_widths, slim_layers
from .registered import SlimmableModelMixin

__all__ = ["sliced_state_dict", "export_width"]


@torch.no_grad()
def sliced_state_dict(model: nn.Module, widths) -> dict[str, torch.Tensor]:
    """The state dict at ``widths``: each projection's weight ``W[:k_out, :k_in]`` and bias ``b[:k_out]`` (cloned,
    contiguous); other tensors are cloned unchanged."""
    _require_slimmable(model)
    counts = resolve_widths(model, widths)
    cuts: dict[int, tuple[int | None, int | None]] = {}
    for layer, (groups, channels) in zip(slim_layers(model), counts):
        for module, attr, rows in layer.head_in:
            cuts[id(getattr(module, attr))] = (groups * rows, None)
        cuts[id(layer.linear(layer.head_out))] = (None, groups * layer.cols_per_group)
        for slot in layer.ffn_in:
            cuts[id(layer.linear(slot))] = (channels, None)
        cuts[id(layer.linear(layer.ffn_out))] = (None, channels)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if not isinstance(module, SlimmableLinear):
            continue
        out_k, in_k = cuts[id(module)]
        weight = module.weight[: out_k] if out_k is not None else module.weight
        state[f"{name}.weight"] = (weight[:, :in_k] if in_k is not None else weight).detach().clone().contiguous()
        if module.bias is not None:
            bias = module.bias[:out_k] if out_k is not None else module.bias
            state[f"{name}.bias"] = bias.detach().clone().contiguous()
    return state


def _is_llama_family(model) -> bool:
    return hasattr(getattr(model, "base_model", model), "layers")


def export_width(model: nn.Module, widths) -> nn.Module:
    """A new model at ``widths`` whose logits equal ``model``'s at that width (module docstring); eval mode."""
    _require_slimmable(model)
    counts = resolve_widths(model, widths)
    layers = slim_layers(model)
    state = sliced_state_dict(model, widths)
    uniform = len(set(counts)) == 1
    # a registered slimmable type exports to the stock class it extends (docs/slim.md, "## Registered model types")
    stock_class, config = (model.stock_counterpart() if isinstance(model, SlimmableModelMixin)
                           else (type(model), copy.deepcopy(model.config)))
    groups, channels = counts[0]
    if _is_llama_family(model):
        rep = layers[0].head_in[0][2] // layers[0].head_in[1][2]
        head_dim = layers[0].head_in[1][2]
        if uniform:
            config.num_key_value_heads = groups
            config.num_attention_heads = groups * rep
            config.intermediate_size = channels
            config.head_dim = head_dim
            new = stock_class(config)
        else:
            kwargs = config.to_dict()
            for key in ("model_type", "architectures", "transformers_version", "auto_map"):
                kwargs.pop(key, None)
            kwargs.update(
                head_dim=head_dim,
                layer_num_attention_heads=[g * rep for g, _ in counts],
                layer_num_key_value_heads=[g for g, _ in counts],
                layer_intermediate_sizes=[c for _, c in counts],
            )
            try:
                dms_config = AutoConfig.for_model("dms_llama", **kwargs)
            except ValueError as error:
                raise ValueError(
                    "per-layer widths of a Llama-family model export to the dms_llama model type, which is "
                    "registered by `import hf_dynamic`"
                ) from error
            new = AutoModelForCausalLM.from_config(dms_config)
    else:
        if not uniform:
            raise ValueError(
                f"per-layer widths {counts} of a BERT-family model have no stock model type to export to "
                "(a stock BertConfig has one intermediate_size); export a uniform width"
            )
        if groups != layers[0].num_groups:
            raise ValueError(
                f"a BERT-family export keeps every attention head (stock BERT derives the head size from "
                f"hidden_size / num_attention_heads and transformers 5 has no prune_heads); widths={widths!r} keeps "
                f"{groups} of {layers[0].num_groups} heads: use {{i: {{'attention': 1.0, 'mlp': w}}}} per layer"
            )
        config.intermediate_size = channels
        new = stock_class(config)
    missing, unexpected = new.load_state_dict(state, strict=False)
    tied = set(getattr(new, "all_tied_weights_keys", {}) or {})
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"export state dict mismatch: missing {missing}, unexpected {unexpected}")
    return new.to(next(model.parameters()).dtype).eval()
