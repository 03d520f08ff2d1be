"""Architecture adapters: where DMS finds each prunable piece of a decoder-only causal LM (``docs/dms.md``,
"## Architecture adapters").

One :class:`ArchitectureAdapter` per supported ``model_type`` records the module paths (decoder layers, attention
``q/k/v/o``, MLP ``gate/up/down``, norms), the head layout (query / KV heads and ``head_dim``, grouped-query
attention included), the norm type, which projections carry biases and any per-head norms applied to queries and
keys (Qwen3's ``q_norm`` / ``k_norm``: RMSNorms over ``head_dim``, shared by every head). The pruner's hooks, the
resource formula, the baselines and the export all read the model through it, so adding an architecture with the
same residual layout is one entry in :data:`ADAPTERS`.

- ``llama`` (``LlamaForCausalLM``): q/k/v and o biases when ``attention_bias``, MLP biases when ``mlp_bias``;
- ``mistral`` (``MistralForCausalLM``): no biases;
- ``qwen2`` (``Qwen2ForCausalLM``): q/k/v biases always, none on ``o_proj`` or the MLP;
- ``qwen3`` (``Qwen3ForCausalLM``): q/k/v/o biases when ``attention_bias``, and per-head ``self_attn.q_norm`` /
  ``self_attn.k_norm`` RMSNorms over ``head_dim`` on the outputs of ``q_proj`` / ``k_proj``.

All four use RMSNorm (``rms_norm_eps``), pre-norm residual blocks, ``model`` (the decoder) / ``model.layers`` /
``model.embed_tokens`` / ``model.norm`` / ``lm_head``, and GQA heads from ``num_attention_heads`` /
``num_key_value_heads`` / ``head_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ArchitectureAdapter", "HeadLayout", "ADAPTERS", "adapter_for", "head_dim"]


def head_dim(config) -> int:
    """``config.head_dim``, or ``hidden_size // num_attention_heads`` when the config leaves it unset."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@dataclass(frozen=True)
class HeadLayout:
    """Attention heads of one model: ``num_heads`` query heads in ``num_kv_heads`` groups of ``group_size``."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Module paths and layout facts of one architecture (paths are relative to the ``*ForCausalLM``, or to a
    decoder layer for the per-layer ones). A bias field is a bool or the name of the config flag that sets it.
    ``head_norms`` are per-head RMSNorms over ``head_dim`` and ``head_normed_projections`` the projections whose
    outputs they normalise (they share ``norm_eps``, which a hidden-size export rescales; see
    :func:`hf_dynamic.dms.export.slice_state_dict`)."""

    model_type: str
    class_name: str
    decoder: str = "model"
    layers: str = "model.layers"
    embed_tokens: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    v_proj: str = "self_attn.v_proj"
    o_proj: str = "self_attn.o_proj"
    gate_proj: str = "mlp.gate_proj"
    up_proj: str = "mlp.up_proj"
    down_proj: str = "mlp.down_proj"
    attention_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"
    norm_type: str = "rmsnorm"
    norm_eps: str = "rms_norm_eps"
    head_norms: tuple[str, ...] = ()
    head_normed_projections: tuple[str, ...] = ()
    qkv_bias: bool | str = "attention_bias"
    o_bias: bool | str = "attention_bias"
    mlp_bias: bool | str = "mlp_bias"

    # -------------------------------------------------------------------------------------------- layout
    def head_layout(self, config) -> HeadLayout:
        return HeadLayout(config.num_attention_heads, config.num_key_value_heads, head_dim(config))

    def has_bias(self, config, which: str) -> bool:
        """``which`` in ``("qkv", "o", "mlp")``."""
        flag = getattr(self, f"{which}_bias")
        return bool(getattr(config, flag, False)) if isinstance(flag, str) else bool(flag)

    @property
    def attention_linears(self) -> tuple[str, str, str]:
        return (self.q_proj, self.k_proj, self.v_proj)

    @property
    def mlp_input_linears(self) -> tuple[str, str]:
        return (self.gate_proj, self.up_proj)

    def layer_paths(self) -> tuple[str, ...]:
        """Every per-layer module DMS touches."""
        return (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.gate_proj, self.up_proj, self.down_proj,
                self.attention_norm, self.mlp_norm, *self.head_norms)

    # ----------------------------------------------------------------------------------------------- access
    def decoder_layers(self, model):
        return model.get_submodule(self.layers)

    def check(self, model) -> None:
        """ValueError naming the first module this adapter expects and ``model`` lacks (module paths are looked up
        with ``nn.Module.get_submodule``)."""
        name = type(model).__name__
        for path in (self.decoder, self.embed_tokens, self.final_norm, self.lm_head, self.layers):
            if not _has_submodule(model, path):
                raise ValueError(f"{name} has no {path}: not the {self.class_name} layout DMS expects")
        for i, layer in enumerate(self.decoder_layers(model)):
            for path in self.layer_paths():
                if not _has_submodule(layer, path):
                    raise ValueError(f"{name} layer {i} has no {path}: not the {self.class_name} layout DMS expects")


def _has_submodule(root, path: str) -> bool:
    """Whether ``root.get_submodule(path)`` finds a module (it raises ``AttributeError`` otherwise)."""
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


ADAPTERS: dict[str, ArchitectureAdapter] = {
    "llama": ArchitectureAdapter("llama", "LlamaForCausalLM"),
    "mistral": ArchitectureAdapter("mistral", "MistralForCausalLM", qkv_bias=False, o_bias=False, mlp_bias=False),
    "qwen2": ArchitectureAdapter("qwen2", "Qwen2ForCausalLM", qkv_bias=True, o_bias=False, mlp_bias=False),
    "qwen3": ArchitectureAdapter(
        "qwen3", "Qwen3ForCausalLM", head_norms=("self_attn.q_norm", "self_attn.k_norm"),
        head_normed_projections=("self_attn.q_proj", "self_attn.k_proj"), mlp_bias=False,
    ),
}


def adapter_for(model) -> ArchitectureAdapter:
    """The adapter of ``model`` (a ``*ForCausalLM``); ValueError naming its class, model_type and the supported
    list otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = ADAPTERS.get(model_type)
    if adapter is None:
        supported = ", ".join(f"{a.model_type} ({a.class_name})" for a in ADAPTERS.values())
        raise ValueError(
            f"DMS has no architecture adapter for {type(model).__name__} (model_type={model_type!r}); "
            f"supported: {supported}"
        )
    adapter.check(model)
    return adapter
