"""``dms_llama``: Llama with per-layer widths, the export format of a non-uniform DMS search (METHODS.md §3).

The modules are transformers' Llama modules built at the widths of :class:`DMSLlamaConfig`; their forward passes
are Llama's own (``LlamaAttention.forward``, ``LlamaMLP.forward``, ``LlamaModel.forward``), so a layer with the
full widths computes exactly what ``LlamaDecoderLayer`` computes. Parameter names are Llama's, so a pruned
``LlamaForCausalLM`` state dict slices straight into this model. A layer may lack its attention sub-block (0 heads)
and/or its MLP (0 channels); its RMSNorm goes with it. KV-cache slots are numbered over the layers that have
attention, so ``DynamicCache.get_seq_length()`` (which reads slot 0) stays correct when layer 0 has no attention.
"""

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)
from transformers.activations import ACT2FN

from .configuration_dms_llama import DMSLlamaConfig

__all__ = ["DMSLlamaPreTrainedModel", "DMSLlamaModel", "DMSLlamaForCausalLM"]


class DMSLlamaAttention(LlamaAttention):
    """``LlamaAttention`` with ``num_heads`` query heads and ``num_kv_heads`` KV heads (its forward is Llama's)."""

    def __init__(self, config: DMSLlamaConfig, cache_idx: int, num_heads: int, num_kv_heads: int):
        nn.Module.__init__(self)
        self.config = config
        self.layer_idx = cache_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = num_heads // num_kv_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * self.head_dim, config.hidden_size, bias=bias)


class DMSLlamaMLP(LlamaMLP):
    """``LlamaMLP`` with ``intermediate_size`` channels (its forward is Llama's)."""

    def __init__(self, config: DMSLlamaConfig, intermediate_size: int):
        nn.Module.__init__(self)
        self.config = config
        self.hidden_size = config.hidden_size
        self.intermediate_size = intermediate_size
        self.gate_proj = nn.Linear(self.hidden_size, intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(self.hidden_size, intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(intermediate_size, self.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]


class DMSLlamaDecoderLayer(GradientCheckpointingLayer):
    """A Llama decoder layer whose attention and MLP sub-blocks may be absent (``y = x`` for a missing one)."""

    def __init__(self, config: DMSLlamaConfig, layer_idx: int, cache_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        heads = config.layer_num_attention_heads[layer_idx]
        kv_heads = config.layer_num_key_value_heads[layer_idx]
        inter = config.layer_intermediate_sizes[layer_idx]
        self.self_attn = DMSLlamaAttention(config, cache_idx, heads, kv_heads) if heads > 0 else None
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps) if heads > 0 else None
        self.mlp = DMSLlamaMLP(config, inter) if inter > 0 else None
        self.post_attention_layernorm = (
            LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps) if inter > 0 else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.self_attn is not None:
            residual = hidden_states
            hidden_states, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            hidden_states = residual + hidden_states
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class DMSLlamaPreTrainedModel(LlamaPreTrainedModel):
    config_class = DMSLlamaConfig
    config: DMSLlamaConfig
    _no_split_modules = ["DMSLlamaDecoderLayer"]
    _can_record_outputs = {"hidden_states": DMSLlamaDecoderLayer, "attentions": DMSLlamaAttention}


class DMSLlamaModel(DMSLlamaPreTrainedModel, LlamaModel):
    """``LlamaModel`` with :class:`DMSLlamaDecoderLayer` layers (forward inherited from ``LlamaModel``)."""

    def __init__(self, config: DMSLlamaConfig):
        DMSLlamaPreTrainedModel.__init__(self, config)
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
        DMSLlamaPreTrainedModel.__init__(self, config)
        self.model = DMSLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
