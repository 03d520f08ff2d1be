"""``pruned_bert``: BERT with per-layer widths (attention heads, FFN channels), what a per-layer or head-dropping
BERT width of a slimmable network exports to (``hf_dynamic.slim.export_width``; ``docs/slim.md``, "## Export").
Registered with the Auto classes on ``import hf_dynamic``."""

from .configuration_pruned_bert import PrunedBertConfig
from .modeling_pruned_bert import (
    PrunedBertForQuestionAnswering,
    PrunedBertForSequenceClassification,
    PrunedBertForTokenClassification,
    PrunedBertModel,
    PrunedBertPreTrainedModel,
)

CONFIG_CLASS = PrunedBertConfig
AUTO_CLASSES = {
    "AutoModel": PrunedBertModel,
    "AutoModelForSequenceClassification": PrunedBertForSequenceClassification,
    "AutoModelForTokenClassification": PrunedBertForTokenClassification,
    "AutoModelForQuestionAnswering": PrunedBertForQuestionAnswering,
}
PUBLIC = {"PrunedBertPreTrainedModel": PrunedBertPreTrainedModel}
# What a saved checkpoint's model card says (hf_dynamic.sharing.model_card).
MODEL_CARD = {
    "method": "Pruned BERT: a BERT encoder whose layers have their own widths (attention heads of a fixed size, FFN "
              "channels), exported from a slimmable network at a per-layer or head-dropping width",
    "docs": "docs/slim.md",
    "fields": ("num_hidden_layers", "hidden_size", "head_dim", "layer_num_attention_heads",
               "layer_intermediate_sizes"),
}

__all__ = ["PrunedBertConfig", "PrunedBertModel", "PrunedBertForSequenceClassification",
           "PrunedBertForTokenClassification", "PrunedBertForQuestionAnswering", "PrunedBertPreTrainedModel"]
