"""Export a width of a slimmable network as a real, smaller checkpoint (``docs/slim.md``, "## Export").

- :func:`sliced_state_dict`: the model's state dict with every projection cut to the kept prefix at ``widths``;
- :func:`export_width`: a new model holding that state dict:

  * **uniform** widths → the model's own stock class (``BertFor*``, ``LlamaForCausalLM``, ...) with a smaller
    ``intermediate_size`` (and, for Llama, fewer ``num_attention_heads`` / ``num_key_value_heads`` with
    ``head_dim`` kept explicit); for a registered slimmable type (``slimmable_bert``, ``slimmable_llama``), the
    stock class it extends, with a stock config (``SlimmableModelMixin.stock_counterpart``). A uniform BERT width
    exports to the stock class only where it keeps every head: stock BERT computes its head size as
    ``hidden_size / num_attention_heads`` and transformers 5 has no ``prune_heads``;
  * **per-layer** widths of a Llama-family decoder → the ``dms_llama`` model type (per-layer heads and channels);
    per-layer widths of a BERT model, or a uniform one with fewer heads → the ``pruned_bert`` model type (per-layer
    heads of the full model's head size, per-layer FFN channels). Both are looked up through transformers' Auto
    classes (``AutoConfig.for_model(model_type, ...)``), which ``import hf_dynamic`` registers: a method package may
    not import a model package (``docs/architecture.md``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
import transformers
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


# The BERT classes a per-layer width exports to, as pruned_bert registers them (its AUTO_CLASSES).
_PRUNED_BERT_AUTO = {
    "BertModel": "AutoModel",
    "BertForSequenceClassification": "AutoModelForSequenceClassification",
    "BertForTokenClassification": "AutoModelForTokenClassification",
    "BertForQuestionAnswering": "AutoModelForQuestionAnswering",
}


def _registered_config(model_type: str, config, **fields):
    """``AutoConfig.for_model(model_type, **config's fields, **fields)``: the per-layer type's config carrying
    everything else of the stock ``config``; a clear error where ``import hf_dynamic`` has not registered it."""
    if model_type not in transformers.CONFIG_MAPPING:
        raise ValueError(f"this width exports to the {model_type} model type, which `import hf_dynamic` registers")
    kwargs = config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map"):
        kwargs.pop(key, None)
    kwargs.update(fields)
    return AutoConfig.for_model(model_type, **kwargs)


def export_width(model: nn.Module, widths) -> nn.Module:
    """A new model at ``widths`` whose logits equal ``model``'s at that width (module docstring); eval mode."""
    _require_slimmable(model)
    counts = resolve_widths(model, widths)
    layers = slim_layers(model)
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
            dms_config = _registered_config(
                "dms_llama", config,
                head_dim=head_dim,
                layer_num_attention_heads=[g * rep for g, _ in counts],
                layer_num_key_value_heads=[g for g, _ in counts],
                layer_intermediate_sizes=[c for _, c in counts],
            )
            new = AutoModelForCausalLM.from_config(dms_config)
    elif uniform and groups == layers[0].num_groups:
        config.intermediate_size = channels
        new = stock_class(config)
    else:
        # fewer heads, or per-layer widths: stock BERT cannot hold them (module docstring)
        auto_name = _PRUNED_BERT_AUTO.get(stock_class.__name__)
        if config.model_type != "bert" or auto_name is None:
            raise ValueError(
                f"widths={widths!r} ({counts} head / FFN counts per layer) drop heads or differ per layer, which "
                f"exports to the pruned_bert model type; it implements {sorted(_PRUNED_BERT_AUTO)}, got "
                f"{stock_class.__name__} (model_type={config.model_type!r}). Export a uniform width that keeps every "
                "head: {i: {'attention': 1.0, 'mlp': w}}"
            )
        pruned_config = _registered_config(
            "pruned_bert", config,
            head_dim=layers[0].head_in[0][2],
            layer_num_attention_heads=[g for g, _ in counts],
            layer_intermediate_sizes=[c for _, c in counts],
        )
        new = getattr(transformers, auto_name).from_config(pruned_config)
    missing, unexpected = new.load_state_dict(sliced_state_dict(model, widths), strict=False)
    tied = set(getattr(new, "all_tied_weights_keys", {}) or {})
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"export state dict mismatch: missing {missing}, unexpected {unexpected}")
    return new.to(next(model.parameters()).dtype).eval()
