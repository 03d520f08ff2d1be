"""``slimmable_llama``: a Llama decoder whose MLP channels and KV groups of attention heads are ordered by
importance, so that it runs at any width as a smaller dense computation (``docs/slim.md``, "## Registered model
types").

Each class is the stock transformers class (``LlamaModel``, ``LlamaForCausalLM``) plus
:class:`~hf_dynamic.slim.registered.SlimmableModelMixin`: after construction (and so after ``from_pretrained``)
the projections are ``SlimmableLinear`` modules sharing the stock parameters, and the width is
``config.slim_width``. Parameter names are the stock ones: a stock Llama state dict loads as it is, and
``from_dense`` orders a stock model's units by importance first. Forward passes, the KV cache and generation are
Llama's own (attention reshapes with ``-1`` heads, so fewer query/key/value rows are fewer heads).
"""

from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel

from ...sharing import HubSharingMixin
from ...slim.registered import SlimmableModelMixin
from .configuration_slimmable_llama import SlimmableLlamaConfig

__all__ = ["SlimmableLlamaPreTrainedModel", "SlimmableLlamaModel", "SlimmableLlamaForCausalLM"]


class SlimmableLlamaPreTrainedModel(HubSharingMixin, SlimmableModelMixin, LlamaPreTrainedModel):
    config_class = SlimmableLlamaConfig
    config: SlimmableLlamaConfig


class SlimmableLlamaModel(SlimmableLlamaPreTrainedModel, LlamaModel):
    """``LlamaModel`` at ``config.slim_width``."""

    stock_class = LlamaModel


class SlimmableLlamaForCausalLM(SlimmableLlamaPreTrainedModel, LlamaForCausalLM):
    """``LlamaForCausalLM`` at ``config.slim_width`` (generation inherited)."""

    stock_class = LlamaForCausalLM
