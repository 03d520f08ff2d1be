"""``slimmable_bert``: BERT that runs at any width (slimmable networks; ``docs/slim.md``, "## Registered model
types"). Registered with the Auto classes on ``import hf_dynamic``."""

from .configuration_slimmable_bert import SlimmableBertConfig
from .modeling_slimmable_bert import (
    SlimmableBertForQuestionAnswering,
    SlimmableBertForSequenceClassification,
    SlimmableBertForTokenClassification,
    SlimmableBertModel,
    SlimmableBertPreTrainedModel,
)

CONFIG_CLASS = SlimmableBertConfig
AUTO_CLASSES = {
    "AutoModel": SlimmableBertModel,
    "AutoModelForSequenceClassification": SlimmableBertForSequenceClassification,
    "AutoModelForTokenClassification": SlimmableBertForTokenClassification,
    "AutoModelForQuestionAnswering": SlimmableBertForQuestionAnswering,
}
PUBLIC = {"SlimmableBertPreTrainedModel": SlimmableBertPreTrainedModel}
# What a saved checkpoint's model card says (hf_dynamic.sharing.model_card).
MODEL_CARD = {
    "method": "Slimmable BERT (slimmable networks / US-Nets, Yu et al. 2019): FFN channels and attention heads "
              "ordered by importance, so that every width is a prefix of each layer and runs as a smaller dense "
              "computation; `slim_width` is the width it loads at, `hf_dynamic.slim.set_width` changes it",
    "docs": "docs/slim.md",
    "stock_loading": "The stock BERT class with the same head (`BertForSequenceClassification`, ...) loads these "
                     "weights exactly too (the parameter names are the stock ones), but runs them at full "
                     "width only: the narrower widths need hf_dynamic or the remote code.",
    "fields": ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "slim_width"),
}

__all__ = ["SlimmableBertConfig", "SlimmableBertModel", "SlimmableBertForSequenceClassification",
           "SlimmableBertForTokenClassification", "SlimmableBertForQuestionAnswering", "SlimmableBertPreTrainedModel"]
