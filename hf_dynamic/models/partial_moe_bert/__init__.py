"""PartialMoEBert: BERT with PAD-Net partially dynamic MoE FFNs (``docs/pad.md``, "## Partially dynamic MoE").

Registered with the Auto classes on ``import hf_dynamic``.
"""

from .configuration_partial_moe_bert import PartialMoEBertConfig
from .modeling_partial_moe_bert import (
    PartialMoEBertForQuestionAnswering,
    PartialMoEBertForSequenceClassification,
    PartialMoEBertForTokenClassification,
    PartialMoEBertModel,
    PartialMoEBertPreTrainedModel,
)

CONFIG_CLASS = PartialMoEBertConfig
AUTO_CLASSES = {
    "AutoModel": PartialMoEBertModel,
    "AutoModelForSequenceClassification": PartialMoEBertForSequenceClassification,
    "AutoModelForTokenClassification": PartialMoEBertForTokenClassification,
    "AutoModelForQuestionAnswering": PartialMoEBertForQuestionAnswering,
}
PUBLIC = {"PartialMoEBertPreTrainedModel": PartialMoEBertPreTrainedModel}
# What a saved checkpoint's model card says (hf_dynamic.sharing.model_card).
MODEL_CARD = {
    "method": "PartialMoEBert: BERT whose FFNs are PAD-Net partially dynamic mixture-of-experts layers (a static "
              "shared part plus a small dynamic, routed part; He et al., arXiv 2211.05528)",
    "docs": "docs/pad.md",
    "fields": ("num_hidden_layers", "hidden_size", "num_experts", "num_experts_per_tok", "moe_layers", "dynamic_ratio",
               "partition_granularity", "pad_state"),
}
