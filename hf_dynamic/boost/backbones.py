"""How boosted early exits run an encoder one layer at a time (docs/boost.md, "## Backbones").

Full and anytime mode need none of this: the backbone runs its own ``forward`` and forward hooks on its layer
modules read (and, for gradient rescaling, reweight) the layer outputs. Dynamic mode removes samples from the batch
between layers, which a backbone's own ``forward`` cannot do, so it runs the backbone's public sub-modules itself:
embeddings, then each layer with the arguments that architecture's layers take. Those arguments differ per
architecture (a BERT layer takes an attention mask, a ModernBERT layer also its rotary position embeddings and a
sliding-window mask every other layer), so they are written down once per architecture in an
:class:`BackboneAdapter` and looked up by the backbone config's ``model_type``
(:func:`get_backbone_adapter`); an architecture without an adapter is refused with a ``ValueError`` naming it.
:func:`register_backbone_adapter` adds one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask

LayerArguments = Callable[[int], dict]  # layer index -> keyword arguments of that layer's call


class BackboneAdapter:
    """One encoder architecture's layer-by-layer run.

    Subclasses set ``layers_path`` (the ``nn.ModuleList`` of layers, a dotted path inside the base model),
    ``attention_path`` (inside a layer, the module whose output ``[1]`` is the attention weights) and
    ``takes_token_type_ids``, and implement :meth:`embed` and :meth:`layer_arguments`; :meth:`final` maps the last
    layer's output to the backbone's ``last_hidden_state`` (identity unless the architecture adds a final norm).
    """

    model_types: tuple = ()
    layers_path: str = ""
    attention_path: str = ""
    takes_token_type_ids: bool = False

    def layers(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.get_submodule(self.layers_path)

    def attention_modules(self, backbone: nn.Module) -> list:
        """The module of each layer whose output ``[1]`` holds that layer's attention weights."""
        return [layer.get_submodule(self.attention_path) for layer in self.layers(backbone)]

    def embed(self, backbone, input_ids, inputs_embeds, token_type_ids, position_ids) -> torch.Tensor:
        raise NotImplementedError

    def layer_arguments(self, backbone, hidden_states, attention_mask, position_ids) -> LayerArguments:
        """The keyword arguments of each layer's call for this batch (``attention_mask``: the 2-D padding mask)."""
        raise NotImplementedError

    def final(self, backbone, hidden_states) -> torch.Tensor:
        return hidden_states


def _padding_mask(backbone, hidden_states, attention_mask):
    """The backbone's bidirectional attention mask for its attention implementation (transformers' own helper)."""
    return create_bidirectional_mask(config=backbone.config, inputs_embeds=hidden_states, attention_mask=attention_mask)


class BertAdapter(BackboneAdapter):
    """BERT and the encoders built on its layer (RoBERTa, XLM-RoBERTa, CamemBERT, hf_dynamic's PartialMoEBert):
    ``embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)``, then ``layer(h, attention_mask)``."""

    model_types = ("bert", "roberta", "xlm-roberta", "camembert", "partial_moe_bert")
    layers_path = "encoder.layer"
    attention_path = "attention.self"
    takes_token_type_ids = True

    def embed(self, backbone, input_ids, inputs_embeds, token_type_ids, position_ids):
        return backbone.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                                   inputs_embeds=inputs_embeds)

    def layer_arguments(self, backbone, hidden_states, attention_mask, position_ids):
        mask = _padding_mask(backbone, hidden_states, attention_mask)
        return lambda index: {"attention_mask": mask}


class DistilBertAdapter(BackboneAdapter):
    """DistilBERT: ``embeddings(input_ids, inputs_embeds, position_ids)``, then ``layer(h, attention_mask)``."""

    model_types = ("distilbert",)
    layers_path = "transformer.layer"
    attention_path = "attention"

    def embed(self, backbone, input_ids, inputs_embeds, token_type_ids, position_ids):
        return backbone.embeddings(input_ids, inputs_embeds, position_ids)

    def layer_arguments(self, backbone, hidden_states, attention_mask, position_ids):
        mask = _padding_mask(backbone, hidden_states, attention_mask)
        return lambda index: {"attention_mask": mask}


class ModernBertAdapter(BackboneAdapter):
    """ModernBERT: ``embeddings(input_ids, inputs_embeds)``; each layer takes the mask and the rotary position
    embeddings of its attention type (``config.layer_types``: global, or a sliding window); the last layer's output
    goes through ``final_norm``."""

    model_types = ("modernbert",)
    layers_path = "layers"
    attention_path = "attn"

    def embed(self, backbone, input_ids, inputs_embeds, token_type_ids, position_ids):
        return backbone.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)

    def layer_arguments(self, backbone, hidden_states, attention_mask, position_ids):
        if position_ids is None:
            position_ids = torch.arange(hidden_states.shape[1], device=hidden_states.device).unsqueeze(0)
        mask_kwargs = {"config": backbone.config, "inputs_embeds": hidden_states, "attention_mask": attention_mask}
        masks = {"full_attention": create_bidirectional_mask(**mask_kwargs),
                 "sliding_attention": create_bidirectional_sliding_window_mask(**mask_kwargs)}
        layer_types = backbone.config.layer_types
        rotary = {kind: backbone.rotary_emb(hidden_states, position_ids, kind) for kind in set(layer_types)}
        return lambda index: {"attention_mask": masks[layer_types[index]],
                              "position_embeddings": rotary[layer_types[index]]}

    def final(self, backbone, hidden_states):
        return backbone.final_norm(hidden_states)


_ADAPTERS: dict[str, BackboneAdapter] = {}


def register_backbone_adapter(adapter: BackboneAdapter) -> None:
    """Make boosted exits accept the backbones whose ``model_type`` is in ``adapter.model_types``."""
    if not isinstance(adapter, BackboneAdapter) or not adapter.model_types:
        raise TypeError(f"adapter must be a BackboneAdapter naming its model_types, got {adapter!r}")
    for model_type in adapter.model_types:
        _ADAPTERS[model_type] = adapter


for _adapter in (BertAdapter(), DistilBertAdapter(), ModernBertAdapter()):
    register_backbone_adapter(_adapter)


def get_backbone_adapter(model_type: str) -> BackboneAdapter:
    """The adapter of a backbone ``model_type``; ``ValueError`` naming it and the supported ones otherwise."""
    adapter = _ADAPTERS.get(model_type)
    if adapter is None:
        raise ValueError(
            f"backbone model_type {model_type!r} has no boosted-exit adapter (supported: {sorted(_ADAPTERS)}); "
            "write a hf_dynamic.boost.backbones.BackboneAdapter for it and register it with "
            "register_backbone_adapter (docs/boost.md, \"## Backbones\")"
        )
    return adapter


__all__ = [
    "BackboneAdapter",
    "BertAdapter",
    "DistilBertAdapter",
    "ModernBertAdapter",
    "get_backbone_adapter",
    "register_backbone_adapter",
]
