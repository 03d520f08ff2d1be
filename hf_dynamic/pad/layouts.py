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

:func:`layout_for` picks the layout a config implies; it is the one place that decides that ``dynamic_ratio == 1``
means a plain MoE (:func:`is_plain_moe`). A masked layout's ``finalize`` returns the finalised layout that replaces
it. Each cache holds one kind of value (:class:`VersionCache`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..core.masks import pack_bool_mask, packed_numel, unpack_bool_mask

# (partition part, static parameter, expert parameter)
PARTS = (
    ("up", "static_up", "up_proj"),
    ("up_bias", "static_up_bias", "up_proj_bias"),
    ("down", "static_down", "down_proj"),
    ("down_bias", "static_down_bias", "down_proj_bias"),
)
PAD_STATES = ("unpartitioned", "partitioned", "finalized")
GRANULARITIES = ("element", "neuron")


def is_plain_moe(config) -> bool:
    """``dynamic_ratio == 1``: every entry is dynamic, so the layer is a plain top-k MoE with nothing to partition."""
    return config.dynamic_ratio == 1


def part_shape(layer, part: str) -> tuple[int, ...]:
    """The dense shape of one part of the FFN (``up [F, H]``, ``up_bias [F]``, ``down [H, F]``, ``down_bias [H]``)."""
    H, Fd = layer.hidden_size, layer.ffn_size
    return {"up": (Fd, H), "up_bias": (Fd,), "down": (H, Fd), "down_bias": (H,)}[part]


def part_numel(layer, part: str) -> int:
    return torch.Size(part_shape(layer, part)).numel()


class VersionCache:
    """One cached value, rebuilt when a key tensor changes (storage, in-place version, dtype or device)."""

    def __init__(self):
        self.key = None
        self.value = None

    def get(self, tensors, build):
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        if self.key != key:
            self.clear()  # free the stale value before building the new one
            self.value = build()
            self.key = key
        return self.value

    def clear(self) -> None:
        self.key, self.value = None, None


def inference_cache_allowed(layer) -> bool:
    """Whether ``layer`` may serve cached merged weights: only at inference (eval mode, gradients off) and only
    when none of its tensors is parametrised (PEFT's ``target_parameters`` LoRA computes ``W + ΔW`` on every
    access, which no key of the stored tensors sees). Training never caches, so optimiser steps, ``.data`` writes
    and adapters are always seen there (``docs/pad.md``, "## Mixed precision")."""
    from torch.nn.utils import parametrize

    return not torch.is_grad_enabled() and not layer.training and not parametrize.is_parametrized(layer)


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


class Layout:
    """How a :class:`~hf_dynamic.pad.layers.PartialDynamicFFN` stores its weights and computes its experts."""

    kind: str = ""
    granularity: str | None = None
    partitionable = True

    def build(self, layer, counts: dict | None = None) -> None:
        """Register this layout's parameters and buffers on ``layer`` (empty; the model initialises or loads them)."""
        raise NotImplementedError

    def mix(self, layer, x, top_k_index, top_k_weights) -> torch.Tensor:
        """The routed experts' output for ``x [tokens, H]``."""
        raise NotImplementedError

    def merged_expert_weights(self, layer):
        raise ValueError(f"merged_expert_weights() is not defined for layer {layer.layout_name()} outside IMP "
                         "scoring")

    def clear_cache(self) -> None:
        """Drop every cached value (:class:`VersionCache` attributes); they are rebuilt on the next use."""
        for value in vars(self).values():
            if isinstance(value, VersionCache):
                value.clear()


class MoELayout(Layout):
    kind = "moe"
    partitionable = False

    def build(self, layer, counts=None):
        for part, _, expert_name in PARTS:
            setattr(layer, expert_name, nn.Parameter(torch.empty(layer.num_experts, *part_shape(layer, part))))

    def mix(self, layer, x, top_k_index, top_k_weights):
        weights = layer.expert_weights(layer.up_proj, layer.up_proj_bias, layer.down_proj, layer.down_proj_bias)
        return weights.forward(x, top_k_index, top_k_weights)


# ------------------------------------------------------------------------------------------------------- masked
class MaskedLayout(Layout):
    """Full static weight and experts plus a boolean mask; the layout IMP scores and sets."""

    kind = "masked"
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

    def partition_mask(self, layer) -> torch.Tensor:
        raise NotImplementedError

    def unflatten(self, layer, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-part masks (views, broadcastable to the part's shape) of a flat mask."""
        raise NotImplementedError

    def set_partition_mask(self, layer, flat_mask: torch.Tensor) -> None:
        raise NotImplementedError

    def variance_scores(self, part_scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-entry scores from per-part ``[...]`` scores of the merged weights."""
        raise NotImplementedError

    def finalize(self, layer) -> tuple[dict, Layout]:
        """Drop the redundant entries in place; return the dynamic counts and the finalised layout."""
        raise NotImplementedError

    def merge(self, layer, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every expert's computed weight ``λ_d·M⊙W_i + λ_s·(1−M)⊙W_s`` per part, for boolean or continuous masks."""
        lambda_s, lambda_d = layer.lambdas()
        merged = {}
        for part, static_name, expert_name in self.stored_parts():
            static, experts = getattr(layer, static_name), getattr(layer, expert_name)
            mask = masks[part]
            if mask.dtype == torch.bool:
                merged[part] = torch.where(mask, lambda_d * experts, lambda_s * static)
            else:
                merged[part] = lambda_d * mask * experts + lambda_s * (1 - mask) * static
        if "down_bias" not in merged:  # neuron mode: b_down is static
            merged["down_bias"] = (lambda_s * layer.static_down_bias).expand(layer.num_experts, -1)
        return merged

    def merged_expert_weights(self, layer):
        imp = layer.imp_state
        masks = imp.masks if imp is not None else self.current_masks(layer)
        merged = self.merge(layer, masks)
        if imp is not None:
            imp.merged = merged
        return layer.expert_weights(merged["up"], merged["up_bias"], merged["down"], merged["down_bias"])

    def experts_tied(self, layer) -> bool:
        if float(layer.phi.detach()) != 0.0:
            return False
        for _, static_name, expert_name in self.stored_parts():
            static, experts = getattr(layer, static_name), getattr(layer, expert_name)
            if not torch.equal(experts, static.unsqueeze(0).expand_as(experts)):
                return False
        return True


class MaskedElementLayout(MaskedLayout):
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

    def variance_scores(self, part_scores):
        return torch.cat([part_scores[p].reshape(-1) for p, _, _ in PARTS])

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


class MaskedNeuronLayout(MaskedLayout):
    granularity = "neuron"
    expert_parts = ("up", "up_bias", "down")

    def __init__(self):
        self.indices = VersionCache()  # (static neuron indices, dynamic neuron indices)

    def build_masks(self, layer):
        layer.register_buffer("mask_neurons", torch.ones(layer.ffn_size, dtype=torch.bool))

    def current_masks(self, layer):
        return self.unflatten(layer, layer.mask_neurons)

    def partition_mask(self, layer):
        return layer.mask_neurons.clone()

    def unflatten(self, layer, flat):
        return {"up": flat[:, None], "up_bias": flat, "down": flat[None, :]}

    def set_partition_mask(self, layer, flat_mask):
        layer.mask_neurons.copy_(flat_mask)

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

    def variance_scores(self, part_scores):
        return part_scores["up"].sum(dim=1) + part_scores["up_bias"] + part_scores["down"].sum(dim=0)

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
class FinalizedElementLayout(Layout):
    """Static values where ``M = 0``, expert values where ``M = 1``, the mask bit-packed.

    Element mode saves no FLOPs: an unstructured mask leaves every expert a dense matrix, and splitting ``W_i x``
    into a static and a dynamic product by linearity would *add* a ``[tokens, d_ff, H]`` product. So the routed
    experts run at the full MoE's cost on merged weights, while only the static values are stored once. At
    inference (eval mode, gradients off, no parametrised tensor: :func:`inference_cache_allowed`) the merged weights
    are cached until a parameter or buffer is replaced or changed in place (or ``train()``/``eval()``/
    ``clear_cache()`` drops them), so inference runs at the full MoE's speed, holding the full MoE's expert weights
    in memory. Writes through ``.data`` need ``clear_cache()`` (``docs/pad.md``, "## Mixed precision").
    """

    kind = "finalized"
    granularity = "element"

    def __init__(self):
        self.positions = VersionCache()  # {part: (dynamic flat positions, static flat positions)}
        self.merged = VersionCache()  # ExpertWeights

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


class FinalizedNeuronLayout(Layout):
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


def record_layout_in_config(config, layer_idx: int, counts: dict | None, pad_state: str) -> None:
    """Record in ``config`` that layer ``layer_idx`` was loaded in a layout of ``pad_state`` (its ``counts`` when
    finalised). The config's ``pad_state`` only moves forward (unpartitioned → partitioned → finalized): a
    partitioned model may have a layer that IMP left fully dynamic."""
    if pad_state == "finalized":
        config.pad_partition = {**(config.pad_partition or {}), str(layer_idx): dict(counts)}
    if PAD_STATES.index(pad_state) > PAD_STATES.index(config.pad_state):
        config.pad_state = pad_state


def layout_for(config) -> Layout:
    """The layout a config implies: a plain MoE, the masked layout, or the finalised one, per granularity."""
    if is_plain_moe(config):
        return MoELayout()
    if config.pad_state != "finalized":
        return MASKED[config.partition_granularity]()
    return FINALIZED[config.partition_granularity]()
