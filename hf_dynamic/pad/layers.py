"""PAD-Net's partially dynamic mixture-of-experts FFN (He et al., arXiv 2211.05528; METHODS.md §1, MoE instance).

Expert ``i``'s computed weight is ``W_i = λ_d·(M ⊙ W_i^dyn) + λ_s·((1 − M) ⊙ W^static)`` with one mask ``M``
shared by the experts, ``λ_d = 2·sigmoid(φ)``, ``λ_s = 2 − λ_d`` and ``φ`` learnable (initialised 0). The FFN is
BERT's (``down · act(up · x + b_up) + b_down``, no gate); a token's output is the renormalised-weight sum over
its top-k experts.

:class:`PartialDynamicFFN` has four storage layouts, chosen by the config:

- ``dynamic_ratio == 1`` (**moe**): a plain top-k MoE (the paper's baseline); no static copy, no ``φ``.
- **masked** (``pad_state`` ``"unpartitioned"``/``"partitioned"``): the static weight and every expert in full,
  plus boolean masks (buffers). Iterative Mode Partition (:mod:`hf_dynamic.pad.imp`) sets the masks in place, so
  training can go on in this layout (optimisers and DDP keep their parameters).
- **finalised element mode**: biases and weights are entries alike; the static values are stored once and only
  where ``M = 0`` (1-D), each expert only where ``M = 1`` (``[E, nnz]``), the mask bit-packed (``uint8``).
- **finalised neuron mode**: a neuron (row of ``up`` with its bias, column of ``down``) is static or dynamic;
  ``b_down`` is static. Static neurons form one dense FFN of ``(1 − κ)·d_ff`` run for every token, dynamic ones
  routed experts of ``κ·d_ff`` each (their outputs add: ``Σ_i w_i = 1``).

Parameter names are the same in every layout (shapes differ), see :data:`PARTS`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN

from ..core.masks import pack_bool_mask, packed_numel, unpack_bool_mask
from ..core.routing import TopKRouter
from .experts import ExpertWeights, experts_forward

# (partition part, static parameter, expert parameter); shapes are given by `_part_shape`.
PARTS = (
    ("up", "static_up", "up_proj"),
    ("up_bias", "static_up_bias", "up_proj_bias"),
    ("down", "static_down", "down_proj"),
    ("down_bias", "static_down_bias", "down_proj_bias"),
)
PAD_STATES = ("unpartitioned", "partitioned", "finalized")
GRANULARITIES = ("element", "neuron")


class PartialDynamicFFN(nn.Module):
    """Router + partially dynamic experts replacing one BERT FFN (``intermediate.dense`` and ``output.dense``).

    ``forward(hidden [..., H]) -> (output [..., H], router_logits [tokens, E])``. The expert computation goes
    through :func:`hf_dynamic.pad.experts.experts_forward` with ``config._experts_implementation`` (transformers'
    ``grouped_mm`` by default, ``"eager"`` for the reference loop).
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = H = config.hidden_size
        self.ffn_size = Fd = config.intermediate_size
        self.num_experts = E = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.granularity = config.partition_granularity
        self.act_fn = ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) else config.hidden_act
        self.router = TopKRouter(H, E, self.top_k, config.router_jitter_noise, config.router_noise_std)
        self._imp = None
        self._mask_cache = None
        self._merged_cache = None

        if config.dynamic_ratio == 1:
            self.layout = "moe"
            self.up_proj = nn.Parameter(torch.empty(E, Fd, H))
            self.up_proj_bias = nn.Parameter(torch.empty(E, Fd))
            self.down_proj = nn.Parameter(torch.empty(E, H, Fd))
            self.down_proj_bias = nn.Parameter(torch.empty(E, H))
            return

        self.phi = nn.Parameter(torch.zeros(()))
        if config.pad_state != "finalized":
            self.layout = "masked"
            expert_parts = {p for p, _, _ in self._parts()}
            for part, static_name, expert_name in PARTS:
                shape = self._part_shape(part)
                setattr(self, static_name, nn.Parameter(torch.empty(shape)))
                if part in expert_parts:  # neuron mode: b_down is static only
                    setattr(self, expert_name, nn.Parameter(torch.empty(E, *shape)))
            if self.granularity == "element":
                for part, _, _ in PARTS:
                    self.register_buffer(f"mask_{part}", torch.ones(self._part_shape(part), dtype=torch.bool))
            else:
                self.register_buffer("mask_neurons", torch.ones(Fd, dtype=torch.bool))
            return

        self.layout = "finalized"
        counts = self.partition_counts_from_config(config, layer_idx)
        if self.granularity == "neuron":
            dyn = counts["dynamic_neurons"]
            stat = Fd - dyn
            self.static_up = nn.Parameter(torch.empty(stat, H))
            self.static_up_bias = nn.Parameter(torch.empty(stat))
            self.static_down = nn.Parameter(torch.empty(H, stat))
            self.static_down_bias = nn.Parameter(torch.empty(H))
            self.up_proj = nn.Parameter(torch.empty(E, dyn, H))
            self.up_proj_bias = nn.Parameter(torch.empty(E, dyn))
            self.down_proj = nn.Parameter(torch.empty(E, H, dyn))
        else:
            for part, static_name, expert_name in PARTS:
                numel = self._part_numel(part)
                nnz = counts[part]
                setattr(self, static_name, nn.Parameter(torch.empty(numel - nnz)))
                setattr(self, expert_name, nn.Parameter(torch.empty(E, nnz)))
                self.register_buffer(f"mask_{part}", torch.zeros(packed_numel(numel), dtype=torch.uint8))

    # ----------------------------------------------------------------------------------------------- structure
    def _parts(self):
        """The (part, static name, expert name) triples this layer stores (neuron mode: no expert ``b_down``)."""
        if self.granularity == "neuron" and self.layout != "moe":
            return [p for p in PARTS if p[0] != "down_bias"]
        return list(PARTS)

    def _part_shape(self, part: str) -> tuple[int, ...]:
        H, Fd = self.hidden_size, self.ffn_size
        return {"up": (Fd, H), "up_bias": (Fd,), "down": (H, Fd), "down_bias": (H,)}[part]

    def _part_numel(self, part: str) -> int:
        shape = self._part_shape(part)
        return shape[0] * (shape[1] if len(shape) == 2 else 1)

    @property
    def num_partition_entries(self) -> int:
        """Entries the mask ranges over: every weight and bias entry (element) or ``d_ff`` neurons (neuron)."""
        if self.granularity == "neuron":
            return self.ffn_size
        return sum(self._part_numel(p) for p, _, _ in PARTS)

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

    def lambdas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(λ_s, λ_d)`` with ``λ_d = 2·sigmoid(φ)`` and ``λ_s = 2 − λ_d`` (METHODS.md §1)."""
        if self.layout == "moe":
            raise ValueError("a dynamic_ratio=1.0 layer (plain MoE) has no λ: every entry is dynamic")
        lambda_d = 2.0 * torch.sigmoid(self.phi)
        return 2.0 - lambda_d, lambda_d

    # ----------------------------------------------------------------------------------------------- masks
    def _masks(self) -> dict[str, torch.Tensor]:
        """Boolean masks per part (element mode; unpacked and cached in the finalised layout)."""
        if self.layout == "masked":
            return {p: getattr(self, f"mask_{p}") for p, _, _ in PARTS}
        packed = [getattr(self, f"mask_{p}") for p, _, _ in PARTS]
        key = tuple((t.data_ptr(), t._version, t.device) for t in packed)
        if self._mask_cache is None or self._mask_cache[0] != key:
            masks = {p: unpack_bool_mask(t, self._part_shape(p)) for (p, _, _), t in zip(PARTS, packed)}
            positions = {p: (torch.nonzero(m.reshape(-1)).squeeze(1), torch.nonzero(~m.reshape(-1)).squeeze(1))
                         for p, m in masks.items()}
            self._mask_cache = (key, masks, positions)
        return self._mask_cache[1]

    def _element_positions(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Finalised element layout: per part, the flat (dynamic, static) entry positions (cached)."""
        self._masks()
        return self._mask_cache[2]

    def partition_mask(self) -> torch.Tensor:
        """The current mask as one flat bool vector over :attr:`num_partition_entries` (True = dynamic)."""
        if self.layout != "masked":
            raise ValueError(f"partition_mask() needs the masked layout, this layer is {self.layout!r}")
        if self.granularity == "neuron":
            return self.mask_neurons.clone()
        return torch.cat([getattr(self, f"mask_{p}").reshape(-1) for p, _, _ in PARTS])

    @torch.no_grad()
    def set_partition_mask(self, flat_mask: torch.Tensor) -> None:
        """Set the mask in place from a flat bool vector (the layout of :meth:`partition_mask`)."""
        if self.layout != "masked":
            raise ValueError(f"set_partition_mask() needs the masked layout, this layer is {self.layout!r}")
        if flat_mask.dtype != torch.bool or flat_mask.numel() != self.num_partition_entries:
            raise ValueError(f"flat_mask must be a bool tensor of {self.num_partition_entries} entries, got "
                             f"{flat_mask.dtype} with {flat_mask.numel()}")
        flat_mask = flat_mask.to(self.phi.device)
        if self.granularity == "neuron":
            self.mask_neurons.copy_(flat_mask)
            return
        offset = 0
        for part, _, _ in PARTS:
            buffer = getattr(self, f"mask_{part}")
            buffer.copy_(flat_mask[offset:offset + buffer.numel()].view(buffer.shape))
            offset += buffer.numel()

    def experts_tied(self) -> bool:
        """True when every expert equals the static weight and ``λ_s = λ_d`` (upcycled, untrained): SNIP's
        ``|dL/dM|`` is then identically zero (METHODS.md §1)."""
        if self.layout != "masked" or float(self.phi.detach()) != 0.0:
            return False
        for _, static_name, expert_name in self._parts():
            static, experts = getattr(self, static_name), getattr(self, expert_name)
            if not torch.equal(experts, static.unsqueeze(0).expand_as(experts)):
                return False
        return True

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, hidden_states: torch.Tensor):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, self.hidden_size)
        router_logits, top_k_weights, top_k_index = self.router(x)
        output = self.mix_experts(x, top_k_index, top_k_weights)
        return output.reshape(shape), router_logits

    def mix_experts(self, x: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """The layer's expert computation for routed tokens ``x [tokens, H]`` (one entry point for every layout)."""
        implementation = getattr(self.config, "_experts_implementation", None)
        if self.layout == "moe":
            weights = ExpertWeights(self.up_proj, self.up_proj_bias, self.down_proj, self.down_proj_bias,
                                    self.act_fn)
            return experts_forward(weights, x, top_k_index, top_k_weights, implementation)
        if self._imp is not None or self.granularity == "element":
            weights = self.merged_expert_weights()
            return experts_forward(weights, x, top_k_index, top_k_weights, implementation)
        if self.layout == "finalized":
            return self._neuron_forward(x, top_k_index, top_k_weights, self.static_up, self.static_up_bias,
                                        self.static_down, self.up_proj, self.up_proj_bias, self.down_proj)
        static_idx, dynamic_idx = self._neuron_indices()
        return self._neuron_forward(
            x, top_k_index, top_k_weights, self.static_up[static_idx], self.static_up_bias[static_idx],
            self.static_down[:, static_idx], self.up_proj[:, dynamic_idx], self.up_proj_bias[:, dynamic_idx],
            self.down_proj[:, :, dynamic_idx])

    def _neuron_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(static, dynamic) neuron indices of the masked neuron layout, cached until the mask changes."""
        mask = self.mask_neurons
        key = (mask.data_ptr(), mask._version, mask.device)
        if self._mask_cache is None or self._mask_cache[0] != key:
            self._mask_cache = (key, (torch.nonzero(~mask).squeeze(1), torch.nonzero(mask).squeeze(1)))
        return self._mask_cache[1]

    def _neuron_forward(self, x, top_k_index, top_k_weights, static_up, static_up_bias, static_down, up_proj,
                        up_proj_bias, down_proj) -> torch.Tensor:
        """Neuron mode: one dense FFN over the static neurons for every token, plus the routed dynamic neurons.

        ``λ_s·down_s·act(λ_s·(up_s x + b_s)) + λ_s·b_down``
        ``+ λ_d·Σ_k w_k·down_i·act(up_i (λ_d x) + λ_d·b_i)``.
        """
        lambda_s, lambda_d = self.lambdas()
        output = (lambda_s * self.static_down_bias).to(x.dtype).expand(x.shape[0], -1)
        if static_up.shape[0] > 0:
            hidden = self.act_fn(F.linear(x, static_up, static_up_bias) * lambda_s.to(x.dtype))
            output = output + F.linear(hidden, static_down) * lambda_s.to(x.dtype)
        if up_proj.shape[1] > 0:
            weights = ExpertWeights(up_proj, up_proj_bias * lambda_d, down_proj, None, self.act_fn)
            routed = experts_forward(weights, x * lambda_d.to(x.dtype), top_k_index, top_k_weights,
                                     getattr(self.config, "_experts_implementation", None))
            output = output + routed * lambda_d.to(routed.dtype)
        return output

    def merged_expert_weights(self) -> ExpertWeights:
        """Every expert's computed weight ``λ_d·M⊙W_i + λ_s·(1−M)⊙W_s`` as dense ``[E, ...]`` tensors.

        Used in element mode (masked and finalised) and while IMP scores the mask (the mask is then a continuous
        leaf tensor and the merged weights keep their gradients). Element mode saves no FLOPs: an unstructured
        mask leaves every expert a dense matrix, and splitting ``W_i x`` into a static and a dynamic product by
        linearity would *add* a ``[tokens, d_ff, H]`` product. So the routed experts run at the full MoE's cost
        on merged weights, while only the static values are stored once. Without gradients (inference) the
        finalised layer caches the merged weights until a parameter changes (``_version``, storage, device or
        dtype), so it then runs at the full MoE's speed, holding the full MoE's expert weights in memory.
        """
        if self._imp is None and self.layout == "finalized" and self.granularity == "element" and not (
                torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters(recurse=False))):
            key = tuple((t.data_ptr(), t._version, t.dtype, t.device)
                        for t in [*self.parameters(recurse=False), *self.buffers(recurse=False)])
            if self._merged_cache is None or self._merged_cache[0] != key:
                self._merged_cache = None  # free the stale copy before building the new one
                self._merged_cache = (key, self._merge_weights())
            return self._merged_cache[1]
        return self._merge_weights()

    def _merge_weights(self) -> ExpertWeights:
        lambda_s, lambda_d = self.lambdas()
        E = self.num_experts
        merged = {}
        if self._imp is not None:
            masks = self._imp["masks"]
        elif self.layout == "masked" and self.granularity == "element":
            masks = self._masks()
        elif self.layout == "finalized" and self.granularity == "element":
            masks = None
            positions = self._element_positions()
            for part, static_name, expert_name in PARTS:
                dynamic_pos, static_pos = positions[part]
                static, experts = getattr(self, static_name), getattr(self, expert_name)
                numel = self._part_numel(part)
                full_static = static.new_zeros(numel).index_copy(0, static_pos, lambda_s * static)
                merged[part] = full_static.expand(E, numel).index_copy(1, dynamic_pos, lambda_d * experts).reshape(
                    E, *self._part_shape(part))
        else:
            raise ValueError(f"merged_expert_weights() is not defined for a {self.layout} {self.granularity} "
                             "layer outside IMP scoring")
        if masks is not None:
            for part, static_name, expert_name in self._parts():
                static, experts = getattr(self, static_name), getattr(self, expert_name)
                mask = masks[part]
                if mask.dtype == torch.bool:
                    merged[part] = torch.where(mask, lambda_d * experts, lambda_s * static)
                else:
                    merged[part] = lambda_d * mask * experts + lambda_s * (1 - mask) * static
            if self.granularity == "neuron":  # b_down is static in neuron mode
                merged["down_bias"] = (lambda_s * self.static_down_bias).expand(E, -1)
        if self._imp is not None:
            self._imp["merged"] = merged
        return ExpertWeights(merged["up"], merged["up_bias"], merged["down"], merged["down_bias"], self.act_fn)

    # ----------------------------------------------------------------------------------------------- IMP hooks
    def imp_begin(self) -> None:
        """Start scoring: the mask becomes a continuous leaf tensor (``requires_grad``) at its current 0/1 values."""
        if self.layout != "masked":
            raise ValueError(f"IMP needs an unfinalised PAD layer, this layer's layout is {self.layout!r}")
        dtype = self.phi.dtype
        if self.granularity == "neuron":
            m = self.mask_neurons.to(dtype).requires_grad_(True)
            masks = {"up": m[:, None], "up_bias": m, "down": m[None, :]}
            leaves = [m]
        else:
            leaves = [getattr(self, f"mask_{p}").to(dtype).requires_grad_(True) for p, _, _ in PARTS]
            masks = {p: leaf for (p, _, _), leaf in zip(PARTS, leaves)}
        self._imp = {"masks": masks, "leaves": leaves, "merged": None, "mask_grad": None, "expert_grad": None}

    def imp_inputs(self) -> list[torch.Tensor]:
        """Tensors whose gradients IMP needs after a forward: the mask leaves, then the merged expert weights."""
        if self._imp is None or self._imp["merged"] is None:
            raise ValueError(f"layer {self.layout_name()} ran no forward since imp_begin()")
        merged = self._imp["merged"]
        return [*self._imp["leaves"], merged["up"], merged["up_bias"], merged["down"], merged["down_bias"]]

    def imp_accumulate(self, grads) -> None:
        """Add one batch's gradients (in :meth:`imp_inputs` order) to the running sums."""
        n = len(self._imp["leaves"])
        mask_grads = [g.detach().float() for g in grads[:n]]
        expert_grads = [g.detach().float() for g in grads[n:]]
        if self._imp["mask_grad"] is None:
            self._imp["mask_grad"], self._imp["expert_grad"] = mask_grads, expert_grads
        else:
            for acc, g in zip(self._imp["mask_grad"] + self._imp["expert_grad"], mask_grads + expert_grads):
                acc.add_(g)
        self._imp["merged"] = None

    def imp_scores(self, kind: str) -> torch.Tensor:
        """This layer's flat score vector (layout of :meth:`partition_mask`) from the accumulated gradients.

        ``kind="snip"``: ``|dL/dM|``; ``kind="grad_variance"``: the cross-expert gradient variance, summed over a
        neuron's entries in neuron mode (see :mod:`hf_dynamic.core.importance`).
        """
        from ..core.importance import expert_gradient_variance, snip_score

        if self._imp is None or self._imp["mask_grad"] is None:
            raise ValueError(f"layer {self.layout_name()} has no accumulated IMP gradients")
        if kind == "snip":
            return torch.cat([snip_score(g).reshape(-1) for g in self._imp["mask_grad"]])
        if kind != "grad_variance":
            raise ValueError(f"score kind must be 'snip' or 'grad_variance', got {kind!r}")
        up, up_bias, down, down_bias = (expert_gradient_variance(g) for g in self._imp["expert_grad"])
        if self.granularity == "neuron":
            return up.sum(dim=1) + up_bias + down.sum(dim=0)
        return torch.cat([up.reshape(-1), up_bias, down.reshape(-1), down_bias])

    def imp_end(self) -> None:
        self._imp = None

    def layout_name(self) -> str:
        return f"{self.layer_idx} ({self.layout}, {self.granularity})"

    # ----------------------------------------------------------------------------------------------- finalise
    @torch.no_grad()
    def finalize_(self) -> dict:
        """Drop the redundant entries (static where ``M = 1``, dynamic where ``M = 0``) in place; return the
        dynamic-entry counts recorded in ``config.pad_partition``.

        Parameters keep their identity (``.data`` is replaced), so references held elsewhere stay valid.
        """
        if self.layout != "masked":
            raise ValueError(f"finalize_() needs the masked layout, this layer's layout is {self.layout!r}")
        if self.granularity == "neuron":
            mask = self.mask_neurons
            static_idx = torch.nonzero(~mask).squeeze(1)
            dynamic_idx = torch.nonzero(mask).squeeze(1)
            self.static_up.data = self.static_up.data[static_idx].clone()
            self.static_up_bias.data = self.static_up_bias.data[static_idx].clone()
            self.static_down.data = self.static_down.data[:, static_idx].clone()
            self.up_proj.data = self.up_proj.data[:, dynamic_idx].clone()
            self.up_proj_bias.data = self.up_proj_bias.data[:, dynamic_idx].clone()
            self.down_proj.data = self.down_proj.data[:, :, dynamic_idx].clone()
            del self.mask_neurons
            counts = {"dynamic_neurons": int(dynamic_idx.numel())}
        else:
            counts = {}
            for part, static_name, expert_name in PARTS:
                mask = getattr(self, f"mask_{part}")
                flat = mask.reshape(-1)
                static, experts = getattr(self, static_name), getattr(self, expert_name)
                static.data = static.data.reshape(-1)[~flat].clone()
                experts.data = experts.data.reshape(self.num_experts, -1)[:, flat].clone()
                self.register_buffer(f"mask_{part}", pack_bool_mask(mask))
                counts[part] = int(flat.sum())
        self.layout = "finalized"
        self._mask_cache = None
        self._merged_cache = None
        return counts

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of this layer's parameters and buffers as its config implies (for checking loaded weights)."""
        return {name: tuple(t.shape) for name, t in [*self.named_parameters(recurse=False),
                                                      *self.named_buffers(recurse=False)]}

    def extra_repr(self) -> str:
        return (f"layout={self.layout}, granularity={self.granularity}, experts={self.num_experts}, "
                f"top_k={self.top_k}, hidden={self.hidden_size}, ffn={self.ffn_size}")
