"""``dms_llama``: the per-layer-width Llama that a non-uniform DMS search exports to
(``DMSLlamaForCausalLM.from_pruned(pruner)``; ``docs/dms.md``, "## Search and export")."""

from .configuration_dms_llama import DMSLlamaConfig
from .modeling_dms_llama import DMSLlamaForCausalLM, DMSLlamaModel, DMSLlamaPreTrainedModel

CONFIG_CLASS = DMSLlamaConfig
AUTO_CLASSES = {"AutoModel": DMSLlamaModel, "AutoModelForCausalLM": DMSLlamaForCausalLM}
PUBLIC = {"DMSLlamaPreTrainedModel": DMSLlamaPreTrainedModel}
# What a saved checkpoint's model card says (hf_dynamic.sharing.model_card).
MODEL_CARD = {
    "method": "DMS-pruned Llama: a Llama decoder whose layers have their own widths (query heads, KV heads, MLP "
              "channels), exported by a differentiable model-scaling search",
    "docs": "docs/dms.md",
    "fields": ("num_hidden_layers", "hidden_size", "layer_num_attention_heads", "layer_num_key_value_heads",
               "layer_intermediate_sizes"),
}

__all__ = ["DMSLlamaConfig", "DMSLlamaModel", "DMSLlamaForCausalLM", "DMSLlamaPreTrainedModel"]
