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
