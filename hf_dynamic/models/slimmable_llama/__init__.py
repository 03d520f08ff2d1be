"""``slimmable_llama``: a Llama decoder that runs at any width (slimmable networks; ``docs/slim.md``, "## Registered
model types"). Registered with the Auto classes on ``import hf_dynamic``."""

from .configuration_slimmable_llama import SlimmableLlamaConfig
from .modeling_slimmable_llama import SlimmableLlamaForCausalLM, SlimmableLlamaModel, SlimmableLlamaPreTrainedModel

CONFIG_CLASS = SlimmableLlamaConfig
AUTO_CLASSES = {"AutoModel": SlimmableLlamaModel, "AutoModelForCausalLM": SlimmableLlamaForCausalLM}
PUBLIC = {"SlimmableLlamaPreTrainedModel": SlimmableLlamaPreTrainedModel}
# What a saved checkpoint's model card says (hf_dynamic.sharing.model_card).
MODEL_CARD = {
    "method": "Slimmable Llama (slimmable networks / US-Nets, Yu et al. 2019): MLP channels and KV groups of "
              "attention heads ordered by importance, so that every width is a prefix of each layer and runs as a "
              "smaller dense computation; `slim_width` is the width it loads at, `hf_dynamic.slim.set_width` "
              "changes it",
    "docs": "docs/slim.md",
    "stock_loading": "The stock Llama class with the same head (`LlamaForCausalLM`, ...) loads these "
                     "weights exactly too (the parameter names are the stock ones), but runs them at full "
                     "width only: the narrower widths need hf_dynamic or the remote code.",
    "fields": ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
               "slim_width"),
}

__all__ = ["SlimmableLlamaConfig", "SlimmableLlamaModel", "SlimmableLlamaForCausalLM", "SlimmableLlamaPreTrainedModel"]
