"""``pruned_bert``: BERT with per-layer widths, the export format of per-layer or head-dropping BERT widths of a
slimmable network (``docs/slim.md``, "## Export").

Each class is the stock transformers class (``BertModel``, ``BertForSequenceClassification``, ...): its constructor
builds the stock modules from the config (``num_attention_heads`` and ``intermediate_size`` of the full model),
then :meth:`PrunedBertPreTrainedModel.post_init` gives encoder layer ``i`` its own widths before the weights are
initialised. With ``h_i = layer_num_attention_heads[i]``, ``d = head_dim`` and ``I_i = layer_intermediate_sizes[i]``:

- ``attention.self.{query,key,value}``: ``Linear(hidden_size, h_i·d)``; ``attention.output.dense``:
  ``Linear(h_i·d, hidden_size)``; the attention's ``num_attention_heads = h_i`` and ``all_head_size = h_i·d``
  (``attention_head_size = d`` and ``scaling = d^-1/2`` are the stock values);
- ``intermediate.dense``: ``Linear(hidden_size, I_i)``; ``output.dense``: ``Linear(I_i, hidden_size)``.

The forward passes are BERT's own: ``BertSelfAttention.forward`` reshapes its projections to
``(..., -1, attention_head_size)`` and back to ``(..., -1)``, so the head count follows the projections' width.
That is not a documented contract of transformers; ``tests/models/pruned_bert`` compares a layer with fewer heads
to multi-head attention computed from its weights, so a transformers release that reads the head count from the
config in the forward fails that test. Parameter names are the stock ones: ``sliced_state_dict`` of a slimmable
BERT loads straight into this model. Cross-attention (a BERT decoder's ``crossattention``) keeps every head.
A fresh construction allocates the full-width projections for a moment; ``from_pretrained`` builds on the meta
device, so loading pays nothing for them.
"""

from torch import nn
from transformers.models.bert.modeling_bert import (
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertPreTrainedModel,
)

from ...sharing import HubSharingMixin
from .configuration_pruned_bert import PrunedBertConfig

__all__ = ["PrunedBertPreTrainedModel", "PrunedBertModel", "PrunedBertForSequenceClassification",
           "PrunedBertForTokenClassification", "PrunedBertForQuestionAnswering"]


def _linear_like(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """A new ``nn.Linear`` of the given size on ``old``'s device and dtype, with a bias if ``old`` has one."""
    return nn.Linear(in_features, out_features, bias=old.bias is not None, device=old.weight.device,
                     dtype=old.weight.dtype)


def resize_layer_(layer: nn.Module, heads: int, head_dim: int, channels: int) -> None:
    """Give a stock ``BertLayer`` ``heads`` attention heads of size ``head_dim`` and ``channels`` FFN channels (new,
    uninitialised projections where a size differs; module docstring)."""
    attention = layer.attention.self
    width = heads * head_dim
    if attention.query.out_features != width:
        hidden = attention.query.in_features
        for name in ("query", "key", "value"):
            setattr(attention, name, _linear_like(getattr(attention, name), hidden, width))
        output = layer.attention.output
        output.dense = _linear_like(output.dense, width, output.dense.out_features)
    attention.num_attention_heads = heads
    attention.all_head_size = width
    if layer.intermediate.dense.out_features != channels:
        layer.intermediate.dense = _linear_like(layer.intermediate.dense, layer.intermediate.dense.in_features,
                                                channels)
        layer.output.dense = _linear_like(layer.output.dense, channels, layer.output.dense.out_features)


class PrunedBertPreTrainedModel(HubSharingMixin, BertPreTrainedModel):
    config_class = PrunedBertConfig
    config: PrunedBertConfig

    def post_init(self):
        """Every encoder layer at its widths (:func:`resize_layer_`), then ``PreTrainedModel.post_init`` (weight
        init of the new projections, tied weights, the legacy ``gradient_checkpointing`` flag). A head class's
        inner ``BertModel`` is the stock one, so the layers are resized by the outer ``post_init``; the layer
        modules themselves are kept."""
        config = self.config
        for i, layer in enumerate(self.base_model.encoder.layer):
            resize_layer_(layer, config.layer_num_attention_heads[i], config.head_dim,
                          config.layer_intermediate_sizes[i])
        super().post_init()


class PrunedBertModel(PrunedBertPreTrainedModel, BertModel):
    """``BertModel`` with per-layer widths."""


class PrunedBertForSequenceClassification(PrunedBertPreTrainedModel, BertForSequenceClassification):
    """``BertForSequenceClassification`` with per-layer widths."""


class PrunedBertForTokenClassification(PrunedBertPreTrainedModel, BertForTokenClassification):
    """``BertForTokenClassification`` with per-layer widths."""


class PrunedBertForQuestionAnswering(PrunedBertPreTrainedModel, BertForQuestionAnswering):
    """``BertForQuestionAnswering`` with per-layer widths."""
