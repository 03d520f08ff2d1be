"""``dms_llama``: the per-layer-width Llama that a non-uniform DMS search exports to
(``DMSLlamaForCausalLM.from_pruned(pruner)``; ``docs/dms.md``, "## Search and export")."""

from .configuration_dms_llama import DMSLlamaConfig
from .modeling_dms_llama import DMSLlamaForCausalLM, DMSLlamaModel, DMSLlamaPreTrainedModel

CONFIG_CLASS = DMSLlamaConfig
AUTO_CLASSES = {"AutoModel": DMSLlamaModel, "AutoModelForCausalLM": DMSLlamaForCausalLM}
PUBLIC = {"DMSLlamaPreTrainedModel": DMSLlamaPreTrainedModel}

__all__ = ["DMSLlamaConfig", "DMSLlamaModel", "DMSLlamaForCausalLM", "DMSLlamaPreTrainedModel"]
