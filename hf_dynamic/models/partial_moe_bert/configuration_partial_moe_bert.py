"""Configuration of PartialMoEBert: BERT whose FFNs are PAD-Net partially dynamic MoE layers (``docs/pad.md``,
"## Partially dynamic MoE")."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import BertConfig

from ...pad.checks import check_pad_state_fields
from ...pad.layouts import GRANULARITIES
from ...pad.partial import PAD_STATES, check_dynamic_ratio, is_plain_moe
from ...core.validation import check_bool, check_choice, check_number


@strict
class PartialMoEBertConfig(BertConfig):
    r"""BERT configuration plus PAD-Net's MoE fields.

    Args:
        num_experts (`int`, defaults to 8): experts per MoE layer (E).
        num_experts_per_tok (`int`, defaults to 2): experts each token is routed to (top-k).
        moe_layers (`list[int]`, *optional*): indices of the layers whose FFN becomes a MoE; None = every layer.
        dynamic_ratio (`float`, defaults to 0.5): κ ∈ (0, 1], the fraction of dynamic entries; 1.0 is the fully
            dynamic MoE (the paper's baseline), which stores no static weight.
        partition_granularity (`str`, defaults to `"element"`): `"element"` (the paper: every weight and bias entry
            has its own mask entry) or `"neuron"` (structured: whole FFN neurons are static or dynamic).
        router_aux_loss_coef (`float`, defaults to 0.01): weight of the Switch load-balancing loss added to the loss.
        router_jitter_noise (`float`, defaults to 0.0): multiplicative input jitter of the router in training.
        router_noise_std (`float`, defaults to 0.0): std of Gaussian noise added to router logits in training.
        output_router_logits (`bool`, defaults to False): return the router logits of every MoE layer.
        pad_state (`str`, defaults to `"unpartitioned"`): `"unpartitioned"` (masks all dynamic, IMP not run yet),
            `"partitioned"` (IMP has fixed the masks; full storage) or `"finalized"` (compact storage).
        pad_partition (`dict`, *optional*): for a finalised model, per MoE layer (key: the layer index as a string)
            the dynamic-entry counts that fix its parameter shapes: `{"dynamic_neurons": n}` (neuron mode) or
            `{"up": n, "up_bias": n, "down": n, "down_bias": n}` (element mode).
    """

    model_type = "partial_moe_bert"

    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_layers: list[int] | None = None
    dynamic_ratio: float | int = 0.5
    partition_granularity: str = "element"
    router_aux_loss_coef: float | int = 0.01
    router_jitter_noise: float | int = 0.0
    router_noise_std: float | int = 0.0
    output_router_logits: bool = False
    pad_state: str = "unpartitioned"
    pad_partition: dict | None = None

    def __post_init__(self, **kwargs):
        self.check_moe_fields()
        super().__post_init__(**kwargs)

    def check_moe_fields(self) -> None:
        """Raise a ValueError naming the first invalid MoE/PAD field and its value."""
        check_number("num_experts", self.num_experts, integer=True, ge=1)
        check_number("num_experts_per_tok", self.num_experts_per_tok, integer=True, ge=1, le=self.num_experts)
        check_dynamic_ratio(self.dynamic_ratio)
        for name in ("router_aux_loss_coef", "router_jitter_noise", "router_noise_std"):
            check_number(name, getattr(self, name), ge=0)
        check_choice("partition_granularity", self.partition_granularity, GRANULARITIES)
        check_choice("pad_state", self.pad_state, PAD_STATES)
        check_bool("output_router_logits", self.output_router_logits)
        if self.moe_layers is not None:
            if not isinstance(self.moe_layers, (list, tuple)):
                raise ValueError(f"moe_layers must be a list of layer indices (or None for every layer), got "
                                 f"{self.moe_layers!r}")
            if len(self.moe_layers) == 0:
                raise ValueError("moe_layers must name at least one layer (or be None for every layer), got []")
            for index in self.moe_layers:
                check_number("moe_layers index", index, integer=True)
                if not 0 <= index < self.num_hidden_layers:
                    raise ValueError(f"moe_layers has index {index}, out of range for num_hidden_layers="
                                     f"{self.num_hidden_layers}")
            if len(set(self.moe_layers)) != len(self.moe_layers):
                raise ValueError(f"moe_layers has repeated indices: {self.moe_layers}")
        check_pad_state_fields(self, self.moe_layer_indices, is_plain_moe(self), "MoE layer")

    @property
    def moe_layer_indices(self) -> list[int]:
        """Indices of the MoE layers (``moe_layers``, or every layer)."""
        return list(range(self.num_hidden_layers)) if self.moe_layers is None else sorted(self.moe_layers)


__all__ = ["PartialMoEBertConfig"]
