"""``dms_llama``: Llama with per-layer widths, the export format of a non-uniform DMS search (``docs/dms.md``,
"## Search and export").

The modules are transformers' Llama modules built at the widths of :class:`DMSLlamaConfig`; their forward passes
are Llama's own (``LlamaAttention.forward``, ``LlamaMLP.forward``, ``LlamaModel.forward``), so a layer with the
full widths computes exactly what ``LlamaDecoderLayer`` computes. The attention, MLP and decoder layer call their
Llama parent's ``__init__`` and then swap in the projections at their own widths (on a fresh construction the
parent's full-width modules exist for a moment; ``from_pretrained`` builds on the meta device, so loading pays
nothing for them). :class:`DMSLlamaModel` and :class:`DMSLlamaForCausalLM` build their modules themselves (the
attributes ``LlamaModel`` / ``LlamaForCausalLM`` set, which a test compares) and call ``post_init()`` once, when
every module exists: the Llama constructors would run ``post_init()`` first, which consumes a legacy
``gradient_checkpointing=True`` config flag on layers that are then replaced. Recorded outputs (hidden states,
attentions) are Llama's: transformers matches its ``_can_record_outputs`` classes with ``isinstance``, and our
layer and attention subclass Llama's. Parameter names are Llama's, so a pruned ``LlamaForCausalLM`` state dict slices straight into this model
(:meth:`DMSLlamaForCausalLM.from_pruned`). A layer may lack its attention sub-block (0 heads) and/or its MLP
(0 channels); its RMSNorm goes with it. KV-cache slots are numbered over the layers that have attention, so
``DynamicCache.get_seq_length()`` (which reads slot 0) stays correct when layer 0 has no attention.
"""

from typing import Unpack

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)
from transformers.utils import TransformersKwargs

from ...dms.export import finish_export, pruned_config, slice_state_dict
from ...sharing import HubSharingMixin
from .configuration_dms_llama import DMSLlamaConfig

__all__ = ["DMSLlamaPreTrainedModel", "DMSLlamaModel", "DMSLlamaForCausalLM"]


class DMSLlamaAttention(LlamaAttention):
    """``LlamaAttention`` with ``num_heads`` query heads and ``num_kv_heads`` KV heads (its forward is Llama's)."""

    def __init__(self, config: DMSLlamaConfig, cache_idx: int, num_heads: int, num_kv_heads: int):
        super().__init__(config, layer_idx=cache_idx)
        self.num_key_value_groups = num_heads // num_kv_heads
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * self.head_dim, config.hidden_size, bias=bias or config.output_proj_bias)


class DMSLlamaMLP(LlamaMLP):
    """``LlamaMLP`` with ``intermediate_size`` channels (its forward is Llama's)."""

    def __init__(self, config: DMSLlamaConfig, intermediate_size: int):
        super().__init__(config)
        self.intermediate_size = intermediate_size
        self.gate_proj = nn.Linear(self.hidden_size, intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(self.hidden_size, intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(intermediate_size, self.hidden_size, bias=config.mlp_bias or config.output_proj_bias)


class DMSLlamaDecoderLayer(LlamaDecoderLayer):
    """A Llama decoder layer whose attention and MLP sub-blocks may be absent (``y = x`` for a missing one)."""

    def __init__(self, config: DMSLlamaConfig, layer_idx: int, cache_idx: int):
        super().__init__(config, layer_idx)
        heads = config.layer_num_attention_heads[layer_idx]
        kv_heads = config.layer_num_key_value_heads[layer_idx]
        inter = config.layer_intermediate_sizes[layer_idx]
        self.self_attn = DMSLlamaAttention(config, cache_idx, heads, kv_heads) if heads > 0 else None
        if heads == 0:
            self.input_layernorm = None
        self.mlp = DMSLlamaMLP(config, inter) if inter > 0 else None
        if inter == 0:
            self.post_attention_layernorm = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        if self.self_attn is not None:
            residual = hidden_states
            hidden_states, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            hidden_states = residual + hidden_states
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class DMSLlamaPreTrainedModel(HubSharingMixin, LlamaPreTrainedModel):
    config_class = DMSLlamaConfig
    config: DMSLlamaConfig
    _no_split_modules = ["DMSLlamaDecoderLayer"]


class DMSLlamaModel(DMSLlamaPreTrainedModel, LlamaModel):
    """``LlamaModel`` with :class:`DMSLlamaDecoderLayer` layers (forward inherited from ``LlamaModel``)."""

    def __init__(self, config: DMSLlamaConfig):
        # LlamaModel.__init__ is skipped: its post_init() would run before our layers exist (see the module doc)
        super(LlamaModel, self).__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        layers, cache_idx = [], 0
        for layer_idx in range(config.num_hidden_layers):
            layers.append(DMSLlamaDecoderLayer(config, layer_idx, cache_idx))
            cache_idx += int(config.layer_num_attention_heads[layer_idx] > 0)
        self.layers = nn.ModuleList(layers)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class DMSLlamaForCausalLM(DMSLlamaPreTrainedModel, LlamaForCausalLM):
    """``LlamaForCausalLM`` over :class:`DMSLlamaModel` (forward and generation inherited)."""

    def __init__(self, config: DMSLlamaConfig):
        # LlamaForCausalLM.__init__ is skipped: it would build (and post_init) a full LlamaModel first
        super(LlamaForCausalLM, self).__init__(config)
        self.model = DMSLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    @torch.no_grad()
    def from_pruned(cls, pruner, dtype: torch.dtype | None = None) -> "DMSLlamaForCausalLM":
        """The model a per-layer DMS search found: each layer at its kept widths (a dropped sub-block has width
        0), logits equal to the hard-masked model's.

        ``pruner`` is a :class:`hf_dynamic.dms.pruner.DMSPruner` on a ``LlamaForCausalLM`` (usually built with
        ``uniform=False``; a uniform search exports here too). ``dtype`` defaults to the model's.
        """
        model = pruner.model[0]
        config = model.config
        if config.model_type != "llama":
            raise ValueError(
                f"DMSLlamaForCausalLM.from_pruned builds a dms_llama model, which implements the Llama architecture; "
                f"got model_type={config.model_type!r} (use pruner.export(uniform=True))"
            )
        structure = pruner.searched_structure()
        L = config.num_hidden_layers
        attn, mlp = structure.attention_present, structure.mlp_present
        new_config = pruned_config(
            model, structure, DMSLlamaConfig, pruner.adapter,
            layer_num_attention_heads=[int(structure.query_heads[i].numel()) if attn[i] else 0 for i in range(L)],
            layer_num_key_value_heads=[int(structure.kv_heads[i].numel()) if attn[i] else 0 for i in range(L)],
            layer_intermediate_sizes=[int(structure.mlp_channels[i].numel()) if mlp[i] else 0 for i in range(L)],
        )
        new_config.architectures = [cls.__name__]
        state_dict = slice_state_dict(model, structure, list(range(L)), pruner.adapter)
        return finish_export(model, cls(new_config), state_dict, dtype)
