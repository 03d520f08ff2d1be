"""Storage layouts of the partially dynamic MoE FFN, one small class each (``docs/pad.md``, "## Layouts").

A :class:`~hf_dynamic.pad.layers.PartialDynamicFFN` holds its tensors under fixed names (:data:`PARTS`, ``phi``,
the masks); its layout object says which of them exist with which shapes (:meth:`Layout.build`) and computes the
routed experts from them (:meth:`Layout.mix`):

- :class:`MoELayout`: ``dynamic_ratio == 1``, a plain top-k MoE (the paper's baseline); no static copy, no ``φ``.
- :class:`MaskedElementLayout` / :class:`MaskedNeuronLayout` (``pad_state`` ``"unpartitioned"`` or
  ``"partitioned"``): the static weight and every expert in full, plus boolean masks (buffers) that Iterative Mode
  Partition sets in place, so training can go on in this layout (optimisers and DDP keep their parameters).
- :class:`FinalizedElementLayout`: biases and weights are entries alike; the static values are stored once and only
  where ``M = 0`` (1-D), each expert only where ``M = 1`` (``[E, nnz]``), the mask bit-packed (``uint8``).
- :class:`FinalizedNeuronLayout`: a neuron (row of ``up`` with its bias, column of ``down``) is static or
  dynamic; ``b_down`` is static. Static neurons form one dense FFN of ``(1 − κ)·d_ff`` run for every token, dynamic
  ones routed experts of ``κ·d_ff`` each (their outputs add: ``Σ_i w_i = 1``).

:func:`layout_for` picks the layout a config implies (a plain MoE where :func:`~hf_dynamic.pad.partial.is_plain_moe`
says so). A masked layout's ``finalize`` returns the finalised layout that replaces it. The base classes (φ/λ, IMP,
adopt-on-load) are in :mod:`hf_dynamic.pad.partial`; each cache holds one kind of value
(:class:`~hf_dynamic.pad.partial.SnapshotCache`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..core.masks import pack_bool_mask, packed_numel, unpack_bool_mask
from .partial import (PAD_STATES, Layout, MaskedLayout, SnapshotCache, UnitMaskedLayout, inference_cache_allowed,
                      is_plain_moe, merge_masked)

__all__ = ["PARTS", "PAD_STATES", "GRANULARITIES", "FFNLayout", "MoELayout", "MaskedFFNLayout", "MaskedElementLayout",
           "MaskedNeuronLayout", "FinalizedElementLayout", "FinalizedNeuronLayout", "layout_for",
           "layout_of_state_dict", "is_plain_moe"]

# (partition part, static parameter, expert parameter)
PARTS = (
    ("up", "static_up", "up_proj"),
    ("up_bias", "static_up_bias", "up_proj_bias"),
    ("down", "static_down", "down_proj"),
    ("down_bias", "static_down_bias", "down_proj_bias"),
)
PART_NAMES = tuple(p for p, _, _ in PARTS)
GRANULARITIES = ("element", "neuron")


def part_shape(layer, part: str) -> tuple[int, ...]:
    """The dense shape of one part of the FFN (``up [F, H]``, ``up_bias [F]``, ``down [H, F]``, ``down_bias [H]``)."""
    H, Fd = layer.hidden_size, layer.ffn_size
    return {"up": (Fd, H), "up_bias": (Fd,), "down": (H, Fd), "down_bias": (H,)}[part]


def part_numel(layer, part: str) -> int:
    return torch.Size(part_shape(layer, part)).numel()


def neuron_forward(layer, x, top_k_index, top_k_weights, static_up, static_up_bias, static_down, up_proj,
                   up_proj_bias, down_proj) -> torch.Tensor:
    """Neuron mode: one dense FFN over the static neurons for every token, plus the routed dynamic neurons.

    ``λ_s·down_s·act(λ_s·(up_s x + b_s)) + λ_s·b_down``
    ``+ λ_d·Σ_k w_k·down_i·act(up_i (λ_d x) + λ_d·b_i)``.
    """
    lambda_s, lambda_d = layer.lambdas()
    output = (lambda_s * layer.static_down_bias).to(x.dtype).expand(x.shape[0], -1)
    if static_up.shape[0] > 0:
        # λ are 0-d fp32: the products are computed in fp32 and stay in the activations' dtype
        hidden = layer.act_fn(F.linear(x, static_up, static_up_bias) * lambda_s)
        output = output + F.linear(hidden, static_down) * lambda_s
    if up_proj.shape[1] > 0:
        weights = layer.expert_weights(up_proj, up_proj_bias * lambda_d, down_proj, None)
        routed = weights.forward(x * lambda_d, top_k_index, top_k_weights)
        output = output + routed * lambda_d
    return output


class FFNLayout(Layout):
    """How a :class:`~hf_dynamic.pad.layers.PartialDynamicFFN` stores its weights and computes its experts."""

    def mix(self, layer, x, top_k_index, top_k_weights) -> torch.Tensor:
        """The routed experts' output for ``x [tokens, H]``."""
        raise NotImplementedError

    def merged_expert_weights(self, layer):
        raise ValueError(f"merged_expert_weights() is not defined for {layer.layout_name()} outside IMP scoring")


class MoELayout(FFNLayout):
    kind = "moe"
    partitionable = False

    def build(self, layer, counts=None):
        for part, _, expert_name in PARTS:
            setattr(layer, expert_name, nn.Parameter(torch.empty(layer.num_experts, *part_shape(layer, part))))

    def mix(self, layer, x, top_k_index, top_k_weights):
        weights = layer.expert_weights(layer.up_proj, layer.up_proj_bias, layer.down_proj, layer.down_proj_bias)
        return weights.forward(x, top_k_index, top_k_weights)


# ------------------------------------------------------------------------------------------------------- masked
class MaskedFFNLayout(FFNLayout, MaskedLayout):
    """Full static weight and experts plus a boolean mask; the layout IMP scores and sets."""

    expert_parts: tuple[str, ...] = ()

    def build(self, layer, counts=None):
        for part, static_name, expert_name in PARTS:
            shape = part_shape(layer, part)
            setattr(layer, static_name, nn.Parameter(torch.empty(shape)))
            if part in self.expert_parts:
                setattr(layer, expert_name, nn.Parameter(torch.empty(layer.num_experts, *shape)))
        self.build_masks(layer)

    def stored_parts(self):
        """The (part, static name, expert name) triples whose experts this layout stores."""
        return [p for p in PARTS if p[0] in self.expert_parts]

    def build_masks(self, layer) -> None:
        raise NotImplementedError

    def current_masks(self, layer) -> dict[str, torch.Tensor]:
        """The boolean masks per part (views, broadcastable to the part's shape)."""
        raise NotImplementedError

    def merge(self, layer, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every expert's computed weight ``λ_d·M⊙W_i + λ_s·(1−M)⊙W_s`` per part, for boolean or continuous masks."""
        lambda_s, lambda_d = layer.lambdas()
        merged = {part: merge_masked(masks[part], getattr(layer, expert_name), getattr(layer, static_name),
                                     lambda_s, lambda_d)
                  for part, static_name, expert_name in self.stored_parts()}
        if "down_bias" not in merged:  # neuron mode: b_down is static
            merged["down_bias"] = (lambda_s * layer.static_down_bias).expand(layer.num_experts, -1)
        return merged

    def merged_expert_weights(self, layer):
        imp = layer.imp_state
        merged = self.merge(layer, imp.masks if imp is not None else self.current_masks(layer))
        layer.imp_record([merged[p] for p in PART_NAMES])
        return layer.expert_weights(merged["up"], merged["up_bias"], merged["down"], merged["down_bias"])

    def tied_pairs(self, layer):
        return [(getattr(layer, expert_name), getattr(layer, static_name))
                for _, static_name, expert_name in self.stored_parts()]


class MaskedElementLayout(MaskedFFNLayout):
    granularity = "element"
    expert_parts = ("up", "up_bias", "down", "down_bias")

    def build_masks(self, layer):
        for part, _, _ in PARTS:
            layer.register_buffer(f"mask_{part}", torch.ones(part_shape(layer, part), dtype=torch.bool))

    def current_masks(self, layer):
        return {p: getattr(layer, f"mask_{p}") for p, _, _ in PARTS}

    def partition_mask(self, layer):
        return torch.cat([getattr(layer, f"mask_{p}").reshape(-1) for p, _, _ in PARTS])

    def unflatten(self, layer, flat):
        sizes = [part_numel(layer, p) for p, _, _ in PARTS]
        return {p: piece.view(part_shape(layer, p)) for (p, _, _), piece in zip(PARTS, torch.split(flat, sizes))}

    def set_partition_mask(self, layer, flat_mask):
        for part, mask in self.unflatten(layer, flat_mask).items():
            getattr(layer, f"mask_{part}").copy_(mask)

    def mix(self, layer, x, top_k_index, top_k_weights):
        return self.merged_expert_weights(layer).forward(x, top_k_index, top_k_weights)

    def variance_scores(self, layer, variances):
        return torch.cat([v.reshape(-1) for v in variances])

    def finalize(self, layer):
        counts = {}
        for part, static_name, expert_name in PARTS:
            mask = getattr(layer, f"mask_{part}")
            flat = mask.reshape(-1)
            static, experts = getattr(layer, static_name), getattr(layer, expert_name)
            static.data = static.data.reshape(-1)[~flat].clone()
            experts.data = experts.data.reshape(layer.num_experts, -1)[:, flat].clone()
            layer.register_buffer(f"mask_{part}", pack_bool_mask(mask))
            counts[part] = int(flat.sum())
        return counts, FinalizedElementLayout()


class MaskedNeuronLayout(UnitMaskedLayout, MaskedFFNLayout):
    granularity = "neuron"
    mask_name = "mask_neurons"
    expert_parts = ("up", "up_bias", "down")

    def __init__(self):
        self.indices = SnapshotCache()  # (static neuron indices, dynamic neuron indices)

    def num_units(self, layer):
        return layer.ffn_size

    def unflatten(self, layer, flat):
        return {"up": flat[:, None], "up_bias": flat, "down": flat[None, :]}

    def split(self, layer) -> tuple[torch.Tensor, torch.Tensor]:
        mask = layer.mask_neurons
        return torch.nonzero(~mask).squeeze(1), torch.nonzero(mask).squeeze(1)

    def mix(self, layer, x, top_k_index, top_k_weights):
        if layer.imp_state is not None:
            return self.merged_expert_weights(layer).forward(x, top_k_index, top_k_weights)
        static_idx, dynamic_idx = self.indices.get([layer.mask_neurons], lambda: self.split(layer))
        return neuron_forward(
            layer, x, top_k_index, top_k_weights, layer.static_up[static_idx], layer.static_up_bias[static_idx],
            layer.static_down[:, static_idx], layer.up_proj[:, dynamic_idx], layer.up_proj_bias[:, dynamic_idx],
            layer.down_proj[:, :, dynamic_idx])

    def variance_scores(self, layer, variances):
        up, up_bias, down, _ = variances  # b_down is static in neuron mode
        return up.sum(dim=1) + up_bias + down.sum(dim=0)

    def finalize(self, layer):
        static_idx, dynamic_idx = self.split(layer)
        layer.static_up.data = layer.static_up.data[static_idx].clone()
        layer.static_up_bias.data = layer.static_up_bias.data[static_idx].clone()
        layer.static_down.data = layer.static_down.data[:, static_idx].clone()
        layer.up_proj.data = layer.up_proj.data[:, dynamic_idx].clone()
        layer.up_proj_bias.data = layer.up_proj_bias.data[:, dynamic_idx].clone()
        layer.down_proj.data = layer.down_proj.data[:, :, dynamic_idx].clone()
        del layer.mask_neurons
        return {"dynamic_neurons": int(dynamic_idx.numel())}, FinalizedNeuronLayout()


# ---------------------------------------------------------------------------------------------------- finalised
class FinalizedElementLayout(FFNLayout):
    """Static values where ``M = 0``, expert values where ``M = 1``, the mask bit-packed.

    Element mode saves no FLOPs: an unstructured mask leaves every expert a dense matrix, and splitting ``W_i x``
    into a static and a dynamic product by linearity would *add* a ``[tokens, d_ff, H]`` product. So the routed
    experts run at the full MoE's cost on merged weights, while only the static values are stored once. At
    inference (eval mode, gradients off, no parametrised tensor: :func:`inference_cache_allowed`) the merged weights
    are cached and served while the layer's tensors equal the copies they were built from
    (:class:`~hf_dynamic.pad.partial.SnapshotCache`: any change, a ``.data`` write included, rebuilds them), so
    inference runs near the full MoE's speed, holding the full MoE's expert weights and a copy of the layer's own
    tensors in memory (``docs/pad.md``, "## Mixed precision").
    """

    kind = "finalized"
    granularity = "element"

    def __init__(self):
        self.positions = SnapshotCache()  # {part: (dynamic flat positions, static flat positions)}
        self.merged = SnapshotCache()  # ExpertWeights

    def build(self, layer, counts=None):
        for part, static_name, expert_name in PARTS:
            numel, nnz = part_numel(layer, part), counts[part]
            setattr(layer, static_name, nn.Parameter(torch.empty(numel - nnz)))
            setattr(layer, expert_name, nn.Parameter(torch.empty(layer.num_experts, nnz)))
            layer.register_buffer(f"mask_{part}", torch.zeros(packed_numel(numel), dtype=torch.uint8))

    def masks(self, layer) -> dict[str, torch.Tensor]:
        """The unpacked boolean masks per part."""
        return {p: unpack_bool_mask(getattr(layer, f"mask_{p}"), part_shape(layer, p)) for p, _, _ in PARTS}

    def _positions(self, layer):
        def build():
            return {p: (torch.nonzero(m.reshape(-1)).squeeze(1), torch.nonzero(~m.reshape(-1)).squeeze(1))
                    for p, m in self.masks(layer).items()}

        from .experts import exporting

        if exporting():  # a traced tensor has no storage to key the cache on
            return build()
        return self.positions.get([getattr(layer, f"mask_{p}") for p, _, _ in PARTS], build)

    def _merge(self, layer):
        lambda_s, lambda_d = layer.lambdas()
        merged = {}
        for part, static_name, expert_name in PARTS:
            dynamic_pos, static_pos = self._positions(layer)[part]
            static, experts = getattr(layer, static_name), getattr(layer, expert_name)
            numel = part_numel(layer, part)
            full_static = static.new_zeros(numel).index_copy(0, static_pos, lambda_s * static)
            merged[part] = full_static.expand(layer.num_experts, numel).index_copy(
                1, dynamic_pos, lambda_d * experts).reshape(layer.num_experts, *part_shape(layer, part))
        return layer.expert_weights(merged["up"], merged["up_bias"], merged["down"], merged["down_bias"])

    def merged_expert_weights(self, layer):
        if not inference_cache_allowed(layer):
            self.merged.clear()
            return self._merge(layer)
        own = [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]
        return self.merged.get(own, lambda: self._merge(layer))

    def mix(self, layer, x, top_k_index, top_k_weights):
        return self.merged_expert_weights(layer).forward(x, top_k_index, top_k_weights)

    def counts(self, layer) -> dict:
        return {part: int(mask.sum()) for part, mask in self.masks(layer).items()}


class FinalizedNeuronLayout(FFNLayout):
    """Static neurons as one dense FFN, dynamic neurons as routed experts (no masks stored)."""

    kind = "finalized"
    granularity = "neuron"

    def build(self, layer, counts=None):
        H, E = layer.hidden_size, layer.num_experts
        dynamic = counts["dynamic_neurons"]
        static = layer.ffn_size - dynamic
        # registered in the masked layouts' order (per part: static, then experts), so an optimizer state saved
        # while training a model finalised in place maps onto a model built finalised (the state is positional)
        static_shapes = {"up": (static, H), "up_bias": (static,), "down": (H, static), "down_bias": (H,)}
        expert_shapes = {"up": (E, dynamic, H), "up_bias": (E, dynamic), "down": (E, H, dynamic)}
        for part, static_name, expert_name in PARTS:
            setattr(layer, static_name, nn.Parameter(torch.empty(static_shapes[part])))
            if part in expert_shapes:
                setattr(layer, expert_name, nn.Parameter(torch.empty(expert_shapes[part])))

    def mix(self, layer, x, top_k_index, top_k_weights):
        return neuron_forward(layer, x, top_k_index, top_k_weights, layer.static_up, layer.static_up_bias,
                              layer.static_down, layer.up_proj, layer.up_proj_bias, layer.down_proj)

    def counts(self, layer) -> dict:
        return {"dynamic_neurons": int(layer.up_proj.shape[1])}


MASKED = {"element": MaskedElementLayout, "neuron": MaskedNeuronLayout}
FINALIZED = {"element": FinalizedElementLayout, "neuron": FinalizedNeuronLayout}


def layout_of_state_dict(layer, state_dict, prefix: str) -> tuple[Layout, dict | None, str] | None:
    """The layout a (partitionable) layer's tensors in ``state_dict`` (keys ``prefix`` + name) are stored in:
    ``(layout, counts, pad_state)``, with the dynamic-entry counts of a finalised layout (else None) and the
    ``pad_state`` the tensors imply (a masked layout with an entry static is ``"partitioned"``). None when the
    state dict holds no tensors of this layer."""
    static_up, granularity = state_dict.get(prefix + "static_up"), layer.granularity
    if static_up is None:
        return None
    if granularity == "neuron":
        masks = [state_dict.get(prefix + "mask_neurons")]
        finalized = masks[0] is None
    else:
        masks = [state_dict.get(f"{prefix}mask_{part}") for part, _, _ in PARTS]
        finalized = static_up.dim() == 1
    if finalized:
        experts = [(part, state_dict.get(prefix + expert_name)) for part, _, expert_name in PARTS]
        if any(t is None for _, t in experts[:3]):
            return None
        counts = ({"dynamic_neurons": int(experts[0][1].shape[1])} if granularity == "neuron"
                  else {part: int(t.shape[1]) for part, t in experts})
        return FINALIZED[granularity](), counts, "finalized"
    partitioned = any(m is not None and not bool(m.all()) for m in masks)
    return MASKED[granularity](), None, "partitioned" if partitioned else "unpartitioned"


def layout_for(config) -> FFNLayout:
    """The layout a config implies: a plain MoE, the masked layout, or the finalised one, per granularity."""
    if is_plain_moe(config):
        return MoELayout()
    if config.pad_state != "finalized":
        return MASKED[config.partition_granularity]()
    return FINALIZED[config.partition_granularity]()
