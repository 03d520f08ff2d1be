"""Configuration of ``dms_llama``: a Llama decoder whose layers have their own widths (DMS export,
``docs/dms.md``).

transformers' ``LlamaConfig`` has one width for every layer. A non-uniform DMS search (``DMSPruner(...,
uniform=False)``) keeps a different number of attention heads, KV heads and MLP channels in each layer and may drop
a layer's attention or MLP sub-block; this config records those per-layer widths. Everything else (hidden size,
head dim, vocabulary, RoPE, norms) is Llama's. A width of 0 means the sub-block (and its RMSNorm) is absent.
"""

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

__all__ = ["DMSLlamaConfig"]


@strict
class DMSLlamaConfig(LlamaConfig):
    r"""Llama configuration with per-layer widths.

    Args (beyond [`LlamaConfig`]'s):
        layer_num_attention_heads (`list[int]`, *optional*): query heads of each layer (0 = no attention
            sub-block). Defaults to `num_attention_heads` for every layer.
        layer_num_key_value_heads (`list[int]`, *optional*): KV heads of each layer; must divide the layer's query
            heads (0 exactly when the layer has no attention). Defaults to `num_key_value_heads`.
        layer_intermediate_sizes (`list[int]`, *optional*): MLP channels of each layer (0 = no MLP sub-block).
            Defaults to `intermediate_size`.
        output_proj_bias (`bool`, *optional*, defaults to `False`): give `o_proj` and `down_proj` (the projections
            writing into the residual stream) a bias even when `attention_bias` / `mlp_bias` are off: the carrier
            of FLAP's bias compensation (`docs/dms.md`, "## Baselines").

    `head_dim` must be given explicitly when `hidden_size` is not a multiple of the heads (it is kept from the
    pruned model).
    """

    model_type = "dms_llama"

    layer_num_attention_heads: list[int] | None = None
    layer_num_key_value_heads: list[int] | None = None
    layer_intermediate_sizes: list[int] | None = None
    output_proj_bias: bool = False

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        n = self.num_hidden_layers
        if self.layer_num_attention_heads is None:
            self.layer_num_attention_heads = [self.num_attention_heads] * n
        if self.layer_num_key_value_heads is None:
            self.layer_num_key_value_heads = [self.num_key_value_heads] * n
        if self.layer_intermediate_sizes is None:
            self.layer_intermediate_sizes = [self.intermediate_size] * n
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Per-layer widths replace Llama's ``hidden_size % num_attention_heads`` check (``head_dim`` is explicit)."""
        n = self.num_hidden_layers
        for name in ("layer_num_attention_heads", "layer_num_key_value_heads", "layer_intermediate_sizes"):
            values = getattr(self, name)
            if values is None or len(values) != n:
                raise ValueError(f"{name} must have num_hidden_layers={n} entries, got {values}")
            if any(v < 0 for v in values):
                raise ValueError(f"{name} must be >= 0, got {values}")
        for i, (q, kv) in enumerate(zip(self.layer_num_attention_heads, self.layer_num_key_value_heads)):
            if (q == 0) != (kv == 0) or (q > 0 and q % kv != 0):
                raise ValueError(
                    f"layer {i}: layer_num_attention_heads={q} must be a multiple of layer_num_key_value_heads={kv}"
                    " (both 0 for a layer without attention)"
                )
