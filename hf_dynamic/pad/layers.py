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

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..core.routing import TopKRouter
from ..core.zero import gathered
from .experts import ExpertWeights
from .layouts import (FINALIZED, GRANULARITIES, PAD_STATES, PARTS, MaskedLayout, layout_for, layout_of_state_dict,
                      part_numel, record_layout_in_config)

__all__ = ["PartialDynamicFFN", "PARTS", "PAD_STATES", "GRANULARITIES"]


@dataclass
class IMPState:
    """One IMP scoring round of a layer: the continuous flat mask (the leaf), its per-part views, the merged
    weights of the last forward, and the gradient sums (mask, then the four merged expert parts)."""

    leaf: torch.Tensor
    masks: dict
    merged: dict | None = None
    mask_grad: torch.Tensor | None = None
    expert_grad: list | None = None


class PartialDynamicFFN(nn.Module):
    """Router + partially dynamic experts replacing one BERT FFN (``intermediate.dense`` and ``output.dense``).

    ``forward(hidden [..., H]) -> (output [..., H], router_logits [tokens, E])``. The experts run on the kernel the
    config's experts implementation selects (:class:`~hf_dynamic.pad.experts.ExpertWeights`; unset means
    hf_dynamic's ``hf_dynamic_grouped_mm``, ``"eager"`` the reference loop).
    """

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
        if self.storage.partitionable:
            # shape [1], not 0-d: DeepSpeed ZeRO cannot flatten or partition a 0-d parameter
            self.phi = nn.Parameter(torch.zeros(1))
        counts = self.partition_counts_from_config(config, layer_idx) if self.layout == "finalized" else None
        self.storage.build(self, counts)

    # ----------------------------------------------------------------------------------------------- structure
    @property
    def layout(self) -> str:
        """``"moe"``, ``"masked"`` or ``"finalized"``."""
        return self.storage.kind

    @property
    def partitionable(self) -> bool:
        return self.storage.partitionable

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

    def partition_counts(self) -> dict:
        """The dynamic-entry counts the finalised storage holds (as ``config.pad_partition`` records them)."""
        return self._require(FINALIZED[self.granularity], "partition_counts()").counts(self)

    def lambdas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(λ_s, λ_d)`` with ``λ_d = 2·sigmoid(φ)`` and ``λ_s = 2 − λ_d``, as 0-d fp32 tensors whatever the model's
        dtype (``docs/pad.md``, "## Mixed precision"): in bf16, ``λ`` near 1 would move in steps of 2⁻⁷ ≈ 0.008.
        Being 0-d, they scale a bf16/fp16 weight in fp32 arithmetic and leave the result in the weight's dtype."""
        if not self.partitionable:
            raise ValueError("a dynamic_ratio=1.0 layer (plain MoE) has no λ: every entry is dynamic")
        lambda_d = 2.0 * torch.sigmoid(self.phi.reshape(()).to(torch.promote_types(self.phi.dtype, torch.float32)))
        return 2.0 - lambda_d, lambda_d

    def expert_weights(self, up_proj, up_proj_bias, down_proj, down_proj_bias) -> ExpertWeights:
        """An experts view over these tensors, dispatched by this layer's config."""
        return ExpertWeights(self.config, up_proj, up_proj_bias, down_proj, down_proj_bias, self.act_fn)

    def _require(self, layout_type, what: str):
        if not isinstance(self.storage, layout_type):
            raise ValueError(f"{what} needs the {layout_type.kind} layout, layer "
                             f"{self.layout_name()} is {self.layout!r}")
        return self.storage

    # ----------------------------------------------------------------------------------------------- masks
    def partition_mask(self) -> torch.Tensor:
        """The current mask as one flat bool vector over :attr:`num_partition_entries` (True = dynamic)."""
        return self._require(MaskedLayout, "partition_mask()").partition_mask(self)

    @torch.no_grad()
    def set_partition_mask(self, flat_mask: torch.Tensor) -> None:
        """Set the mask in place from a flat bool vector (the layout of :meth:`partition_mask`)."""
        storage = self._require(MaskedLayout, "set_partition_mask()")
        if flat_mask.dtype != torch.bool or flat_mask.numel() != self.num_partition_entries:
            raise ValueError(f"flat_mask must be a bool tensor of {self.num_partition_entries} entries, got "
                             f"{flat_mask.dtype} with {flat_mask.numel()}")
        storage.set_partition_mask(self, flat_mask.to(self.phi.device))

    def experts_tied(self) -> bool:
        """True when every expert equals the static weight and ``λ_s = λ_d`` (upcycled, untrained): SNIP's
        ``|dL/dM|`` is then identically zero (``docs/pad.md``, "## Iterative Mode Partition")."""
        if not isinstance(self.storage, MaskedLayout):
            return False
        with gathered(self.parameters(recurse=False)):  # whole weights under DeepSpeed ZeRO-3
            return self.storage.experts_tied(self)

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

    def clear_cache(self) -> None:
        """Drop the inference caches (merged expert weights, mask positions). The cache is only used in eval mode
        with gradients off, and is rebuilt when a tensor is replaced or changed in place through autograd-visible
        ops (optimiser steps, ``load_state_dict``, in-place edits under ``no_grad``), on ``train()`` / ``eval()``,
        and here. Call this after writing weights through ``.data`` in eval mode (``param.data.copy_(...)``,
        which no version counter records; ``docs/pad.md``, "## Mixed precision")."""
        self.storage.clear_cache()

    def train(self, mode: bool = True):
        """``nn.Module.train``; also drops the inference caches (:meth:`clear_cache`)."""
        self.storage.clear_cache()
        return super().train(mode)

    # ----------------------------------------------------------------------------------------------- IMP
    def imp_begin(self, relaxed_mask: torch.Tensor | None = None) -> None:
        """Start scoring: the mask becomes a continuous leaf tensor (``requires_grad``), at its current 0/1 values
        or at ``relaxed_mask`` (a flat float vector)."""
        storage = self._require(MaskedLayout, "IMP")
        flat = self.partition_mask() if relaxed_mask is None else relaxed_mask
        leaf = flat.detach().to(self.phi.device, self.phi.dtype, copy=True).requires_grad_(True)
        self.imp_state = IMPState(leaf, storage.unflatten(self, leaf))

    def imp_inputs(self) -> list[torch.Tensor]:
        """Tensors whose gradients IMP needs after a forward: the mask leaf, then the merged expert weights."""
        if self.imp_state is None or self.imp_state.merged is None:
            raise ValueError(f"layer {self.layout_name()} ran no forward since imp_begin()")
        merged = self.imp_state.merged
        return [self.imp_state.leaf, merged["up"], merged["up_bias"], merged["down"], merged["down_bias"]]

    def imp_accumulate(self, grads) -> None:
        """Add one batch's gradients (in :meth:`imp_inputs` order) to the running sums."""
        state = self.imp_state
        mask_grad, *expert_grads = (g.detach().float() for g in grads)
        if state.mask_grad is None:
            state.mask_grad, state.expert_grad = mask_grad, expert_grads
        else:
            for acc, g in zip([state.mask_grad, *state.expert_grad], [mask_grad, *expert_grads]):
                acc.add_(g)
        state.merged = None

    def imp_gradients(self, kind: str) -> list[torch.Tensor]:
        """The gradient sums a ``kind`` score reads: ``[dL/dM]`` (snip) or the merged expert weights' gradients."""
        if self.imp_state is None or self.imp_state.mask_grad is None:
            raise ValueError(f"layer {self.layout_name()} has no accumulated IMP gradients")
        if kind == "snip":
            return [self.imp_state.mask_grad]
        if kind != "grad_variance":
            raise ValueError(f"score kind must be 'snip' or 'grad_variance', got {kind!r}")
        return self.imp_state.expert_grad

    def imp_scores(self, kind: str) -> torch.Tensor:
        """This layer's flat score vector (layout of :meth:`partition_mask`) from the accumulated gradients.

        ``kind="snip"``: ``|dL/dM|``; ``kind="grad_variance"``: the cross-expert gradient variance, summed over a
        neuron's entries in neuron mode (see :mod:`hf_dynamic.core.importance`).
        """
        from ..core.importance import expert_gradient_variance, snip_score

        grads = self.imp_gradients(kind)
        if kind == "snip":
            return snip_score(grads[0]).reshape(-1)
        parts = {p: expert_gradient_variance(g) for (p, _, _), g in zip(PARTS, grads)}
        return self.storage.variance_scores(parts)

    def imp_end(self) -> None:
        self.imp_state = None

    def layout_name(self) -> str:
        return f"{self.layer_idx} ({self.layout}, {self.granularity})"

    # ----------------------------------------------------------------------------------------------- finalise
    @torch.no_grad()
    def finalize_(self) -> dict:
        """Drop the redundant entries (static where ``M = 1``, dynamic where ``M = 0``) in place; return the
        dynamic-entry counts recorded in ``config.pad_partition``.

        Parameters keep their identity (``.data`` is replaced), so references held elsewhere stay valid.
        """
        counts, self.storage = self._require(MaskedLayout, "finalize_()").finalize(self)
        return counts

    def adopt_layout_(self, storage, counts: dict | None = None) -> None:
        """Replace this layer's storage by ``storage`` (a :class:`~hf_dynamic.pad.layouts.Layout`), its tensors
        registered empty, on the old tensors' device and dtype, in the canonical order (for loading a checkpoint of
        another layout into this layer; the values come from the checkpoint)."""
        reference = self.static_up if hasattr(self, "static_up") else self.up_proj
        device, dtype = reference.device, reference.dtype
        for name in [n for n, _ in self.named_parameters(recurse=False) if n != "phi"]:
            delattr(self, name)
        for name in [n for n, _ in self.named_buffers(recurse=False)]:
            delattr(self, name)
        self.storage = storage
        with torch.device(device):
            storage.build(self, counts)
        for _, param in self.named_parameters(recurse=False):
            param.data = param.data.to(dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """``nn.Module`` loading, plus: a 0-d ``phi`` (checkpoints before φ became ``[1]``) is reshaped, and a
        state dict of another layout (a checkpoint written after IMP or after finalisation, loaded into a freshly
        upcycled model, as ``Trainer(resume_from_checkpoint=...)`` does) makes this layer adopt that layout first,
        recording it in the config (``pad_state``, ``pad_partition``): see ``docs/pad.md``, "## Resume and
        distributed training"."""
        phi = state_dict.get(prefix + "phi")
        if phi is not None and phi.dim() == 0:
            state_dict[prefix + "phi"] = phi.reshape(1)
        if self.partitionable:
            adopted = layout_of_state_dict(self, state_dict, prefix)
            if adopted is not None:
                storage, counts, pad_state = adopted
                if type(storage) is not type(self.storage):
                    self.adopt_layout_(storage, counts)
                record_layout_in_config(self.config, self.layer_idx, counts, pad_state)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of this layer's parameters and buffers as its config implies (for checking loaded weights)."""
        return {name: tuple(t.shape) for name, t in [*self.named_parameters(recurse=False),
                                                      *self.named_buffers(recurse=False)]}

    def extra_repr(self) -> str:
        return (f"layout={self.layout}, granularity={self.granularity}, experts={self.num_experts}, "
                f"top_k={self.top_k}, hidden={self.hidden_size}, ffn={self.ffn_size}")
