"""PEMN layers: a frozen random weight times an edge-popup mask learned through scores (docs/pemn.md, "## The layer").

The forward of a masked layer uses ``W = scale * unit ⊙ m(s)`` where ``unit * scale`` is the prototype's frozen
random weight (:mod:`.prototypes`) and ``m(s)`` keeps exactly ``keep_count(sparsity, numel)`` weights, those with
the largest ``|s|`` (:func:`edge_popup_mask`). The mask's gradient is passed straight through to ``|s|`` (edge-popup,
Ramanujan et al. 2020), so only the scores train. The base layer's own weight and bias are never used: the network
is the random prototype, masked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..core.masks import count_to_keep, topk_mask
from . import retry_registration
from .prototypes import Prototype, kaiming_scale

SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d)


def keep_count(sparsity: float, numel: int) -> int:
    """Weights a mask keeps: ``round((1 - sparsity) * numel)``, at least 1 (a layer never loses every weight)."""
    return max(1, count_to_keep(1.0 - sparsity, numel))


class EdgePopup(torch.autograd.Function):
    """Forward: the float mask of the ``k`` largest entries of ``scores``; backward: the identity (straight through)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int) -> torch.Tensor:
        return topk_mask(scores, k).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None


def edge_popup_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The edge-popup mask of ``scores``: 1 for the ``keep_count`` largest ``|s|`` (ties by position), else 0.

    Differentiable in ``scores`` through the straight-through estimator: ``d mask / d s = sign(s)``.
    """
    return EdgePopup.apply(scores.abs(), keep_count(sparsity, scores.numel()))


class FrozenRandom(nn.Module):
    """The frozen random weight (and optional bias) of one adapter on one layer; non-persistent buffers only."""

    def __init__(self, unit: torch.Tensor, scale: float, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("unit", unit, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.scale = float(scale)

    def weight(self) -> torch.Tensor:
        return self.unit * self.scale


class PEMNLayer(BaseTunerLayer):
    """Mixin of the PEMN tuner layers: per adapter, trainable ``pemn_scores`` and a :class:`FrozenRandom` weight."""

    adapter_layer_names = ("pemn_scores",)
    other_param_names = ("pemn_frozen", "pemn_sparsity")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.pemn_scores = nn.ParameterDict({})
        self.pemn_frozen = nn.ModuleDict({})
        self.pemn_sparsity: dict[str, float] = {}
        self.pemn_backup: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # base weights while merged
        self._disable_adapters = False
        self.merged_adapters = []
        self.kwargs = kwargs

    def update_layer(self, adapter_name: str, prototype: Prototype, layer_name: str, config) -> None:
        """Attach adapter ``adapter_name``: the prototype's weight for ``layer_name`` and fresh scores."""
        base = self.get_base_layer()
        shape = tuple(base.weight.shape)
        if prototype.layers.get(layer_name) != shape:
            raise ValueError(
                f"prototype has shape {prototype.layers.get(layer_name)} for {layer_name!r}, layer has {shape}")
        unit = prototype.unit(layer_name).to(base.weight.device)
        bias = None
        if config.random_bias and base.bias is not None:
            bias = prototype.bias(layer_name, shape[0]).to(base.weight.device)
        scale = kaiming_scale(shape, config.sparsity, config.scale_fan)
        self.pemn_frozen[adapter_name] = FrozenRandom(unit, scale, bias)
        self.pemn_sparsity[adapter_name] = float(config.sparsity)
        scores = torch.empty(shape, device=base.weight.device)
        if config.init_scores == "magnitude":
            scores.copy_(unit.abs())
        else:
            nn.init.kaiming_uniform_(scores, a=math.sqrt(5))
        self.pemn_scores[adapter_name] = nn.Parameter(scores)
        self.set_adapter(self.active_adapters)

    def pemn_mask(self, adapter_name: str) -> torch.Tensor:
        """The current boolean mask of ``adapter_name`` (no gradient)."""
        with torch.no_grad():
            return edge_popup_mask(self.pemn_scores[adapter_name], self.pemn_sparsity[adapter_name]).bool()

    def pemn_weight(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The masked random weight (differentiable in the scores) and the frozen bias of ``adapter_name``."""
        frozen = self.pemn_frozen[adapter_name]
        mask = edge_popup_mask(self.pemn_scores[adapter_name], self.pemn_sparsity[adapter_name])
        return frozen.weight() * mask, frozen.bias

    def _active_pemn_adapter(self) -> str | None:
        active = [name for name in self.active_adapters if name in self.pemn_scores]
        if len(active) > 1:
            raise ValueError(f"PEMN replaces the layer's weight: only one adapter can be active, got {active}")
        return active[0] if active else None

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Write the masked random weight (and bias, or zeros) into the base layer; :meth:`unmerge` restores it."""
        names = [a for a in (adapter_names or self.active_adapters) if a in self.pemn_scores]
        if not names:
            return
        if len(names) > 1 or self.merged:
            raise ValueError(f"PEMN replaces the layer's weight: only one adapter can be merged, got {names}")
        base = self.get_base_layer()
        self.pemn_backup[names[0]] = (base.weight.data, None if base.bias is None else base.bias.data)
        with torch.no_grad():
            weight, bias = self.pemn_weight(names[0])
        base.weight.data = weight.to(base.weight.dtype)
        if base.bias is not None:
            base.bias.data = torch.zeros_like(base.bias) if bias is None else bias.to(base.bias.dtype)
        self.merged_adapters.append(names[0])

    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            weight, bias = self.pemn_backup.pop(self.merged_adapters.pop())
            base.weight.data = weight
            if bias is not None:
                base.bias.data = bias


class PEMNModule(nn.Module, PEMNLayer):
    """A PEMN layer wrapping ``base_layer``; subclasses define the functional op (:meth:`_layer_forward`)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, prototype: Prototype, layer_name: str, config):
        super().__init__()
        PEMNLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, prototype, layer_name, config)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        adapter = self._active_pemn_adapter()
        if self.disable_adapters or self.merged or adapter is None:
            return self.base_layer(x, *args, **kwargs)
        weight, bias = self.pemn_weight(adapter)
        return self._layer_forward(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    def _layer_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return "pemn." + super().__repr__()


class Linear(PEMNModule):
    """A PEMN ``nn.Linear``: ``y = x (scale * unit ⊙ m(s))^T (+ seeded bias)``."""

    def _layer_forward(self, x, weight, bias):
        return F.linear(x, weight, bias)


def conv2d_like(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv``'s convolution of ``x`` with another ``weight`` / ``bias``, from its public attributes only.

    ``F.conv2d`` with ``conv.stride``, ``conv.dilation``, ``conv.groups``; ``conv.padding`` is passed to it for
    ``padding_mode="zeros"``, and otherwise applied first with ``F.pad(mode=padding_mode)`` (``"same"`` padding
    split as torch does: ``dilation * (kernel - 1)`` per dimension, the odd element on the right/bottom).
    """
    if conv.padding_mode == "zeros":
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if conv.padding == "valid":
        pads = (0, 0, 0, 0)
    elif conv.padding == "same":
        pads = ()
        for dilation, kernel in zip(reversed(conv.dilation), reversed(conv.kernel_size)):  # F.pad: last dim first
            total = dilation * (kernel - 1)
            pads += (total // 2, total - total // 2)
    else:
        pads = (conv.padding[1], conv.padding[1], conv.padding[0], conv.padding[0])
    return F.conv2d(F.pad(x, pads, mode=conv.padding_mode), weight, bias, conv.stride, 0, conv.dilation, conv.groups)


class Conv2d(PEMNModule):
    """A PEMN ``nn.Conv2d``: the base layer's convolution (stride, padding and its mode, dilation, groups) with the
    masked random kernel (:func:`conv2d_like`)."""

    def _layer_forward(self, x, weight, bias):
        return conv2d_like(self.get_base_layer(), x, weight, bias)


LAYER_CLASSES = {nn.Linear: Linear, nn.Conv2d: Conv2d}


retry_registration()  # see hf_dynamic.pemn._register_quietly
