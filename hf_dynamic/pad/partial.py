"""The one base of PAD-Net's partially dynamic layers (``docs/pad.md``, "## Layouts"), shared by the MoE FFN
(:class:`~hf_dynamic.pad.layers.PartialDynamicFFN`) and the convolution
(:class:`~hf_dynamic.pad.conv.PartialDynamicConv2d`).

A layer computes its weights as ``W = λ_d·(M ⊙ W^dyn) + λ_s·((1 − M) ⊙ W^static)`` with ``λ_d = 2·σ(φ)``,
``λ_s = 2 − λ_d``. How it stores ``W^dyn``, ``W^static`` and ``M`` is the job of a :class:`Layout` object (one class
per storage layout); :class:`PartiallyDynamicModule` holds what every layer has whatever its layout:

- ``φ`` (shape ``[1]``, :data:`PHI_SHAPE`) and :meth:`~PartiallyDynamicModule.lambdas`;
- the mask as one flat vector and the Iterative Mode Partition state machine (``imp_begin`` … ``imp_end``), the
  interface :class:`~hf_dynamic.pad.interface.PartiallyDynamicLayer` that :mod:`hf_dynamic.pad.imp` uses;
- finalisation (a masked layout returns the finalised one that replaces it), the shapes its tensors have
  (:meth:`~PartiallyDynamicModule.expected_shapes`) and loading a state dict written in another layout
  (:meth:`~PartiallyDynamicModule.prepare_to_load`, a ``load_state_dict`` pre-hook, adopts that layout and records
  it in the model config).

Decided here, once: :func:`is_plain_moe` (``dynamic_ratio == 1`` means a fully dynamic layer with nothing to
partition) and :func:`upgrade_phi` (checkpoints written before φ became ``[1]`` store it 0-d).

The model config is written at run time by IMP, finalisation, loading (``pad_state``, ``pad_partition``,
``dynamic_ratio``) and the temperature schedule (``temperature``): it is the record of the layer shapes that
``save_pretrained`` writes and ``from_pretrained`` rebuilds (``docs/architecture.md``, "## One method shape").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.importance import expert_gradient_variance, snip_score
from ..core.validation import check_number
from ..core.zero import gathered

PAD_STATES = ("unpartitioned", "partitioned", "finalized")
PHI_SHAPE = (1,)
"""φ's shape: ``[1]``, not 0-d, because DeepSpeed ZeRO cannot flatten or partition a 0-d parameter."""
SCORE_KINDS = ("snip", "grad_variance")


def is_plain_moe(config) -> bool:
    """``dynamic_ratio == 1``: every entry is dynamic, so the layer is fully dynamic (a plain top-k MoE, Dynamic
    Convolution / CondConv) with no static weight, no φ and nothing to partition."""
    return config.dynamic_ratio == 1


def check_dynamic_ratio(value) -> None:
    """``ValueError`` naming ``dynamic_ratio`` unless it is a real number in (0, 1] (κ; 1 is fully dynamic)."""
    check_number("dynamic_ratio", value, gt=0, le=1)


def upgrade_phi(tensor: torch.Tensor) -> torch.Tensor:
    """φ as stored today (``[1]``): a 0-d φ of a checkpoint written before is reshaped, ``[1]`` passes through."""
    return tensor.reshape(PHI_SHAPE) if tensor.dim() == 0 else tensor


def is_legacy_phi(name: str, shape: tuple[int, ...], expected: tuple[int, ...] | None) -> bool:
    """True for a checkpoint's 0-d φ where ``[1]`` is expected (:func:`upgrade_phi` makes it load)."""
    return name == "phi" and tuple(shape) == () and expected == PHI_SHAPE


def full_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    """A tensor's whole shape; under DeepSpeed ZeRO-3 a partitioned parameter holds a shard and records its shape in
    ``ds_shape`` (DeepSpeed's attribute of partitioned parameters; there is no other accessor)."""
    return tuple(getattr(tensor, "ds_shape", tensor.shape))


def own_tensor_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The whole shapes (:func:`full_shape`) of ``module``'s own parameters and buffers, by name."""
    return {name: full_shape(t) for name, t in [*module.named_parameters(recurse=False),
                                                 *module.named_buffers(recurse=False)]}


def inference_cache_allowed(layer) -> bool:
    """Whether ``layer`` may serve cached merged weights: only at inference (eval mode, gradients off) and only
    when none of its tensors is parametrised (PEFT's ``target_parameters`` LoRA computes ``W + ΔW`` on every
    access, which no copy of the stored tensors sees). Training never caches (``docs/pad.md``, "## Mixed
    precision")."""
    from torch.nn.utils import parametrize

    return not torch.is_grad_enabled() and not layer.training and not parametrize.is_parametrized(layer)


class SnapshotCache:
    """One cached value and copies of the tensors it was built from. It is served only while every key tensor
    still equals its copy (same shape, dtype and device, ``torch.equal``), so a change by any route — an optimiser
    step, ``load_state_dict``, ``.to()``, an in-place edit, a write through ``.data`` (which no autograd version
    counter records) — rebuilds it. The check reads the key tensors once per use (``docs/pad.md``, "## Mixed
    precision", for its cost)."""

    def __init__(self):
        self.key: list[torch.Tensor] | None = None
        self.value = None

    def valid(self, tensors) -> bool:
        return self.key is not None and len(self.key) == len(tensors) and all(
            t.shape == k.shape and t.dtype == k.dtype and t.device == k.device and torch.equal(t, k)
            for t, k in zip(tensors, self.key))

    def get(self, tensors, build):
        from .experts import exporting

        if exporting():  # traced tensors: nothing to compare or keep; the graph computes the value
            return build()
        tensors = [t.detach() for t in tensors]
        if not self.valid(tensors):
            self.clear()  # free the stale value before building the new one
            self.value = build()
            self.key = [t.clone() for t in tensors]
        return self.value

    def clear(self) -> None:
        self.key, self.value = None, None


def record_layout_in_config(config, layer_idx: int, counts: dict | None, pad_state: str) -> None:
    """Record in ``config`` that layer ``layer_idx`` was loaded in a layout of ``pad_state`` (its ``counts`` when
    finalised). The config's ``pad_state`` only moves forward (unpartitioned → partitioned → finalized): a
    partitioned model may have a layer that IMP left fully dynamic."""
    if pad_state == "finalized":
        config.pad_partition = {**(config.pad_partition or {}), str(layer_idx): dict(counts)}
    if PAD_STATES.index(pad_state) > PAD_STATES.index(config.pad_state):
        config.pad_state = pad_state


@dataclass
class IMPState:
    """One IMP scoring round of a layer: the continuous flat mask (the leaf), its per-tensor views, the merged
    weights of the last forward (a list, in :meth:`MaskedLayout.merged_inputs` order), and the gradient sums."""

    leaf: torch.Tensor
    masks: object
    merged: list | None = None
    mask_grad: torch.Tensor | None = None
    expert_grad: list | None = None


class Layout:
    """How a partially dynamic layer stores its weights (one subclass per layout and granularity)."""

    kind: str = ""
    granularity: str | None = None
    partitionable = True

    def build(self, layer, counts: dict | None = None) -> None:
        """Register this layout's parameters and buffers on ``layer`` (empty; the model initialises or loads them),
        in the layer's canonical order (an optimizer state is restored by position)."""
        raise NotImplementedError

    def counts(self, layer) -> dict:
        """A finalised layout's dynamic-entry counts (as ``config.pad_partition`` records them)."""
        raise ValueError(f"partition counts need the finalized layout; {layer.layout_name()} is {self.kind!r}")

    def clear_cache(self) -> None:
        """Drop every cached value (:class:`SnapshotCache` attributes); they are rebuilt on the next use."""
        for value in vars(self).values():
            if isinstance(value, SnapshotCache):
                value.clear()


class MaskedLayout(Layout):
    """Full static weight and dynamic weights plus a boolean mask; the layout IMP scores and sets."""

    kind = "masked"

    def partition_mask(self, layer) -> torch.Tensor:
        """The flat bool mask (a copy)."""
        raise NotImplementedError

    def unflatten(self, layer, flat: torch.Tensor):
        """The per-tensor masks (views broadcastable to the tensors) of a flat mask, bool or continuous."""
        raise NotImplementedError

    def set_partition_mask(self, layer, flat_mask: torch.Tensor) -> None:
        raise NotImplementedError

    def variance_scores(self, layer, variances: list[torch.Tensor]) -> torch.Tensor:
        """Flat scores from the cross-expert gradient variances of the merged weights (:meth:`merged_inputs`
        order)."""
        raise NotImplementedError

    def tied_pairs(self, layer) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(dynamic [E, ...], static [...])`` pairs whose equality means the experts are copies of the static
        weight."""
        raise NotImplementedError

    def finalize(self, layer) -> tuple[dict, Layout]:
        """Drop the redundant entries in place; return the dynamic counts and the finalised layout."""
        raise NotImplementedError

    def experts_tied(self, layer) -> bool:
        if float(layer.phi.detach()) != 0.0:
            return False
        return all(torch.equal(dynamic, static.unsqueeze(0).expand_as(dynamic))
                   for dynamic, static in self.tied_pairs(layer))


class UnitMaskedLayout(MaskedLayout):
    """A masked layout whose mask is one bool vector over structured units (the FFN's neurons, the convolution's
    output filters), the buffer ``mask_name``; the subclass says how many units there are and how a flat mask
    broadcasts onto the weights (:meth:`MaskedLayout.unflatten`)."""

    mask_name = ""

    def num_units(self, layer) -> int:
        raise NotImplementedError

    def build_masks(self, layer) -> None:
        layer.register_buffer(self.mask_name, torch.ones(self.num_units(layer), dtype=torch.bool))

    def current_masks(self, layer):
        return self.unflatten(layer, getattr(layer, self.mask_name))

    def partition_mask(self, layer):
        return getattr(layer, self.mask_name).clone()

    def set_partition_mask(self, layer, flat_mask):
        getattr(layer, self.mask_name).copy_(flat_mask)


def merge_masked(mask, dynamic, static, lambda_s, lambda_d):
    """``λ_d·M⊙W_i + λ_s·(1−M)⊙W_s`` for a boolean or continuous mask (broadcast over the experts / kernels)."""
    if mask.dtype == torch.bool:
        return torch.where(mask, lambda_d * dynamic, lambda_s * static)
    return lambda_d * mask * dynamic + lambda_s * (1 - mask) * static


def _prepare_layer_to_load(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                           error_msgs) -> None:
    """The load-state-dict pre-hook of every partially dynamic layer (:meth:`PartiallyDynamicModule.prepare_to_load`)."""
    module.prepare_to_load(state_dict, prefix)


class PartiallyDynamicModule(nn.Module):
    """The base of every partially dynamic layer: φ/λ, the flat mask, IMP's state machine, finalisation, expected
    shapes and adopt-on-load (module docstring). A subclass sets ``storage`` (a :class:`Layout`), ``layer_idx``,
    ``granularity``, ``config`` (the model config recording ``pad_state`` / ``pad_partition``, or None) and
    ``unit`` (how messages name it), and implements :meth:`register_layout` and :meth:`layout_of_state_dict`."""

    unit = "layer"
    config = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # torch's public load hook: it runs inside load_state_dict, before this layer's tensors are copied
        self.register_load_state_dict_pre_hook(_prepare_layer_to_load)

    # ------------------------------------------------------------------------------------------- structure
    @property
    def layout(self) -> str:
        """``"moe"`` (fully dynamic), ``"masked"`` or ``"finalized"``."""
        return self.storage.kind

    @property
    def partitionable(self) -> bool:
        return self.storage.partitionable

    @property
    def num_partition_entries(self) -> int:
        """Length of the flat mask."""
        raise NotImplementedError

    def layout_name(self) -> str:
        return f"{self.unit} {self.layer_idx} ({self.layout}, {self.granularity})"

    def _require(self, layout_type, what: str):
        if not isinstance(self.storage, layout_type):
            raise ValueError(f"{what} needs the {layout_type.kind} layout; {self.unit} {self.layer_idx} is "
                             f"{self.layout!r}")
        return self.storage

    def lambdas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(λ_s, λ_d)`` with ``λ_d = 2·sigmoid(φ)`` and ``λ_s = 2 − λ_d``, as 0-d tensors of at least fp32 whatever
        the model's dtype (``docs/pad.md``, "## Mixed precision"): in bf16, λ near 1 would move in steps of
        2⁻⁷ ≈ 0.008. Being 0-d, they scale a bf16/fp16 weight in fp32 arithmetic and leave the weight's dtype."""
        if not self.partitionable:
            raise ValueError(f"{self.layout_name()} is fully dynamic (dynamic_ratio=1.0): it has no λ")
        lambda_d = 2.0 * torch.sigmoid(self.phi.reshape(()).to(torch.promote_types(self.phi.dtype, torch.float32)))
        return 2.0 - lambda_d, lambda_d

    def partition_counts(self) -> dict:
        """The dynamic-entry counts the finalised storage holds (as ``config.pad_partition`` records them)."""
        return self.storage.counts(self)

    # ------------------------------------------------------------------------------------------- masks
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
        """True while every dynamic weight equals the static one and ``λ_s = λ_d`` (upcycled, untrained): SNIP's
        ``|dL/dM|`` is then identically zero (``docs/pad.md``, "## Iterative Mode Partition")."""
        if not isinstance(self.storage, MaskedLayout):
            return False
        with gathered(self.parameters(recurse=False)):  # whole weights under DeepSpeed ZeRO-3
            return self.storage.experts_tied(self)

    def clear_cache(self) -> None:
        """Drop the layout's inference caches now (they also rebuild by themselves when a tensor changes)."""
        self.storage.clear_cache()

    def train(self, mode: bool = True):
        """``nn.Module.train``; also drops the inference caches (:meth:`clear_cache`)."""
        self.storage.clear_cache()
        return super().train(mode)

    # ------------------------------------------------------------------------------------------- IMP
    def imp_begin(self, relaxed_mask: torch.Tensor | None = None) -> None:
        """Start scoring: the mask becomes a continuous leaf tensor (``requires_grad``), at its current 0/1 values
        or at ``relaxed_mask`` (a flat float vector)."""
        storage = self._require(MaskedLayout, "IMP")
        flat = self.partition_mask() if relaxed_mask is None else relaxed_mask
        leaf = flat.detach().to(self.phi.device, self.phi.dtype, copy=True).requires_grad_(True)
        self.imp_state = IMPState(leaf, storage.unflatten(self, leaf))

    def imp_record(self, merged: list[torch.Tensor]) -> None:
        """Called by the layout's forward while IMP scores: the merged weights whose gradients scoring reads."""
        if self.imp_state is not None:
            self.imp_state.merged = merged

    def imp_inputs(self) -> list[torch.Tensor]:
        """Tensors whose gradients IMP needs after a forward: the mask leaf, then the merged weights."""
        if self.imp_state is None or self.imp_state.merged is None:
            raise ValueError(f"{self.layout_name()} ran no forward since imp_begin()")
        return [self.imp_state.leaf, *self.imp_state.merged]

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
        """The gradient sums a ``kind`` score reads: ``[dL/dM]`` (snip) or the merged weights' gradients."""
        if self.imp_state is None or self.imp_state.mask_grad is None:
            raise ValueError(f"{self.layout_name()} has no accumulated IMP gradients")
        if kind not in SCORE_KINDS:
            raise ValueError(f"score kind must be one of {SCORE_KINDS}, got {kind!r}")
        return [self.imp_state.mask_grad] if kind == "snip" else self.imp_state.expert_grad

    def imp_scores(self, kind: str) -> torch.Tensor:
        """This layer's flat score vector (layout of :meth:`partition_mask`) from the accumulated gradients:
        ``|dL/dM|`` (``"snip"``) or the cross-expert gradient variance, summed over a structured unit's entries
        (``"grad_variance"``; :mod:`hf_dynamic.core.importance`)."""
        grads = self.imp_gradients(kind)
        if kind == "snip":
            return snip_score(grads[0]).reshape(-1)
        return self.storage.variance_scores(self, [expert_gradient_variance(g) for g in grads])

    def imp_end(self) -> None:
        self.imp_state = None

    # ------------------------------------------------------------------------------------------- layouts
    @torch.no_grad()
    def finalize_(self) -> dict:
        """Drop the redundant entries (static where ``M = 1``, dynamic where ``M = 0``) in place; return the
        dynamic-entry counts recorded in ``config.pad_partition``. Parameters keep their identity (``.data`` is
        replaced), so references held elsewhere (an optimizer) stay valid."""
        counts, self.storage = self._require(MaskedLayout, "finalize_()").finalize(self)
        return counts

    def register_layout(self, counts: dict | None, phi: nn.Parameter) -> None:
        """Register ``phi`` and ``self.storage``'s tensors in this layer's canonical parameter order."""
        raise NotImplementedError

    def layout_of_state_dict(self, state_dict, prefix: str) -> tuple[Layout, dict | None, str] | None:
        """``(layout, counts, pad_state)`` this layer's tensors in ``state_dict`` are stored in (counts of a
        finalised layout, else None), or None when the state dict holds none of them."""
        raise NotImplementedError

    def adopt_layout_(self, storage: Layout, counts: dict | None = None) -> None:
        """Replace this layer's storage by ``storage``, its tensors registered empty on the old tensors' device and
        dtype, in the canonical order (for loading a checkpoint of another layout; the values come from it)."""
        phi = self.phi
        own = [t for _, t in self.named_parameters(recurse=False) if t is not phi]
        device, dtype = own[0].device, own[0].dtype
        for name in [n for n, _ in self.named_parameters(recurse=False)] + [n for n, _ in
                                                                            self.named_buffers(recurse=False)]:
            delattr(self, name)
        self.storage = storage
        with torch.device(device):
            self.register_layout(counts, phi)
        for param in self.parameters(recurse=False):
            if param is not phi:
                param.data = param.data.to(dtype)

    def prepare_to_load(self, state_dict, prefix: str) -> None:
        """Run by ``load_state_dict`` before this layer's tensors are copied: a 0-d ``phi`` is upgraded
        (:func:`upgrade_phi`), and a state dict of another layout (a checkpoint written after IMP or after
        finalisation loaded into a freshly built model, as ``Trainer(resume_from_checkpoint=...)`` does) makes this
        layer adopt that layout first, recording it in the config (``pad_state``, ``pad_partition``):
        ``docs/pad.md``, "## Resume and distributed training"."""
        phi = state_dict.get(prefix + "phi")
        if phi is not None:
            state_dict[prefix + "phi"] = upgrade_phi(phi)
        if self.partitionable:
            adopted = self.layout_of_state_dict(state_dict, prefix)
            if adopted is not None:
                storage, counts, pad_state = adopted
                if type(storage) is not type(self.storage):
                    self.adopt_layout_(storage, counts)
                if self.config is not None:
                    record_layout_in_config(self.config, self.layer_idx, counts, pad_state)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The whole shapes of this layer's own parameters and buffers (ZeRO-3 shards included: :func:`full_shape`),
        for checking them against what a config implies."""
        return own_tensor_shapes(self)
