"""PAD-Net's partially dynamic mixture-of-experts FFN (He et al., arXiv 2211.05528; ``docs/pad.md``, "## Partially
dynamic MoE").

Expert ``i``'s computed weight is ``W_i = λ_d·(M ⊙ W_i^dyn) + λ_s·((1 − M) ⊙ W^static)`` with one mask ``M``
shared by the experts, ``λ_d = 2·sigmoid(φ)``, ``λ_s = 2 − λ_d`` and ``φ`` learnable (initialised 0). The FFN is
BERT's (``down · act(up · x + b_up) + b_down``, no gate); a token's output is the renormalised-weight sum over
its top-k experts.

How the weights are stored (a plain MoE, masked, finalised element or neuron mode) is the job of a layout object
(:mod:`hf_dynamic.pad.layouts`); parameter names are the same in every layout (shapes differ), see :data:`PARTS`.
:class:`PartialDynamicFFN` implements the partially dynamic layer interface
(:class:`~hf_dynamic.pad.interface.PartiallyDynamicLayer`) that Iterative Mode Partition uses.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..core.routing import TopKRouter
from .experts import ExpertWeights
from .layouts import GRANULARITIES, PARTS, layout_for, layout_of_state_dict, part_numel
from .partial import PAD_STATES, PHI_SHAPE, IMPState, PartiallyDynamicModule

__all__ = ["PartialDynamicFFN", "PARTS", "PAD_STATES", "GRANULARITIES", "IMPState"]


class PartialDynamicFFN(PartiallyDynamicModule):
    """Router + partially dynamic experts replacing one BERT FFN (``intermediate.dense`` and ``output.dense``).

    ``forward(hidden [..., H]) -> (output [..., H], router_logits [tokens, E])``. The experts run on the kernel the
    config's experts implementation selects (:class:`~hf_dynamic.pad.experts.ExpertWeights`; unset means
    hf_dynamic's ``hf_dynamic_grouped_mm``, ``"eager"`` the reference loop). φ/λ, the mask, IMP, finalisation and
    adopt-on-load come from :class:`~hf_dynamic.pad.partial.PartiallyDynamicModule`.
    """

    unit = "MoE layer"

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.ffn_size = config.intermediate_size
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.granularity = config.partition_granularity
        self.act_fn = ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) else config.hidden_act
        self.router = TopKRouter(self.hidden_size, self.num_experts, self.top_k, config.router_jitter_noise,
                                 config.router_noise_std)
        self.imp_state: IMPState | None = None
        self.storage = layout_for(config)
        counts = self.partition_counts_from_config(config, layer_idx) if self.layout == "finalized" else None
        self.register_layout(counts, nn.Parameter(torch.zeros(PHI_SHAPE)) if self.partitionable else None)

    def register_layout(self, counts, phi) -> None:
        """Canonical order: ``phi``, then per part the static weight and the experts (the layout's ``build``)."""
        if phi is not None:
            self.phi = phi
        self.storage.build(self, counts)

    def layout_of_state_dict(self, state_dict, prefix):
        return layout_of_state_dict(self, state_dict, prefix)

    # ----------------------------------------------------------------------------------------------- structure
    @property
    def num_partition_entries(self) -> int:
        """Entries the mask ranges over: every weight and bias entry (element) or ``d_ff`` neurons (neuron)."""
        if self.granularity == "neuron":
            return self.ffn_size
        return sum(part_numel(self, p) for p, _, _ in PARTS)

    @staticmethod
    def partition_counts_from_config(config, layer_idx: int) -> dict:
        """This layer's dynamic-entry counts recorded in ``config.pad_partition`` (validated)."""
        partition = config.pad_partition or {}
        counts = partition.get(str(layer_idx))
        keys = ("dynamic_neurons",) if config.partition_granularity == "neuron" else tuple(p for p, _, _ in PARTS)
        if counts is None or set(counts) != set(keys):
            raise ValueError(
                f"pad_partition[{str(layer_idx)!r}] must give {list(keys)} for a finalised "
                f"{config.partition_granularity}-mode layer, got {counts!r}")
        return counts

    def expert_weights(self, up_proj, up_proj_bias, down_proj, down_proj_bias) -> ExpertWeights:
        """An experts view over these tensors, dispatched by this layer's config."""
        return ExpertWeights(self.config, up_proj, up_proj_bias, down_proj, down_proj_bias, self.act_fn)

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, hidden_states: torch.Tensor):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, self.hidden_size)
        router_logits, top_k_weights, top_k_index = self.router(x)
        output = self.mix_experts(x, top_k_index, top_k_weights)
        return output.reshape(shape), router_logits

    def mix_experts(self, x: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """The layer's expert computation for routed tokens ``x [tokens, H]`` (its layout's)."""
        return self.storage.mix(self, x, top_k_index, top_k_weights)

    def merged_expert_weights(self) -> ExpertWeights:
        """Every expert's computed weight ``λ_d·M⊙W_i + λ_s·(1−M)⊙W_s`` as dense ``[E, ...]`` tensors (element
        mode, or any masked layer; while IMP scores, from the continuous mask, keeping gradients). The finalised
        element layout caches them at inference (:class:`~hf_dynamic.pad.layouts.FinalizedElementLayout`)."""
        return self.storage.merged_expert_weights(self)

    def extra_repr(self) -> str:
        return (f"layout={self.layout}, granularity={self.granularity}, experts={self.num_experts}, "
                f"top_k={self.top_k}, hidden={self.hidden_size}, ffn={self.ffn_size}")
