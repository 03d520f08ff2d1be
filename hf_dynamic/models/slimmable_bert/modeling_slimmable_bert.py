"""``slimmable_bert``: BERT whose FFN channels and attention heads are ordered by importance, so that it runs at
any width as a smaller dense computation (``docs/slim.md``, "## Registered model types").

Each class is the stock transformers class (``BertModel``, ``BertForSequenceClassification``, ...) plus
:class:`~hf_dynamic.slim.registered.SlimmableModelMixin`: after construction (and so after ``from_pretrained``)
the projections are ``SlimmableLinear`` modules sharing the stock parameters, and the width is
``config.slim_width``. Parameter names are the stock ones: a stock BERT state dict loads as it is, and
``from_dense`` orders a stock model's units by importance first.
"""

from transformers.models.bert.modeling_bert import (
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertPreTrainedModel,
)

from ...sharing import HubSharingMixin
from ...slim.registered import SlimmableModelMixin
from .configuration_slimmable_bert import SlimmableBertConfig

__all__ = ["SlimmableBertPreTrainedModel", "SlimmableBertModel", "SlimmableBertForSequenceClassification",
           "SlimmableBertForTokenClassification", "SlimmableBertForQuestionAnswering"]


class SlimmableBertPreTrainedModel(HubSharingMixin, SlimmableModelMixin, BertPreTrainedModel):
    config_class = SlimmableBertConfig
    config: SlimmableBertConfig


class SlimmableBertModel(SlimmableBertPreTrainedModel, BertModel):
    """``BertModel`` at ``config.slim_width``."""

    stock_class = BertModel


class SlimmableBertForSequenceClassification(SlimmableBertPreTrainedModel, BertForSequenceClassification):
    """``BertForSequenceClassification`` at ``config.slim_width``."""

    stock_class = BertForSequenceClassification


class SlimmableBertForTokenClassification(SlimmableBertPreTrainedModel, BertForTokenClassification):
    """``BertForTokenClassification`` at ``config.slim_width``."""

    stock_class = BertForTokenClassification


class SlimmableBertForQuestionAnswering(SlimmableBertPreTrainedModel, BertForQuestionAnswering):
    """``BertForQuestionAnswering`` at ``config.slim_width``."""

    stock_class = BertForQuestionAnswering
