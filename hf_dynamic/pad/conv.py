"""Dynamic and partially dynamic convolution (``docs/pad.md``, "## Partially dynamic convolution").

- :class:`DynamicConv2d`: ``K`` kernels mixed per sample, ``W(x) = Σ_k π_k(x)·W_k`` (and
  ``b(x) = Σ_k π_k(x)·b_k``), with Dynamic Convolution's attention (global average pool → FC → ReLU → FC →
  softmax at a temperature, ``routing="softmax"``) or CondConv's routing (global average pool → FC → sigmoid per
  kernel, ``routing="sigmoid"``).
- :class:`PartialDynamicConv2d`: PAD-Net's partition of it. Kernel ``k``'s computed weight is
  ``W_k' = λ_d·(M ⊙ W_k) + λ_s·((1 − M) ⊙ W^static)`` with one mask ``M`` shared by the ``K`` kernels and
  ``λ_d = 2·σ(φ)``, ``λ_s = 2 − λ_d`` (as the MoE FFN of :mod:`hf_dynamic.pad.layers`). Element granularity
  gives every weight and bias entry its own mask bit; filter granularity makes whole output filters static or
  dynamic. It implements :class:`~hf_dynamic.pad.interface.PartiallyDynamicLayer`, so the Iterative Mode
  Partition of :mod:`hf_dynamic.pad.imp` partitions it unchanged.
- the softmax temperature schedule in ``Trainer`` is
  :class:`~hf_dynamic.pad.temperature.TemperatureAnnealingCallback` (its own module, so that loading a model does not
  import transformers' training stack).

The per-sample convolution runs as one grouped convolution over the batch (samples folded into groups,
``aggregation="grouped"``), as im2col + one batched matmul (``"unfold"``, used automatically while exporting, where
a group count equal to a dynamic batch size cannot be expressed), or as a Python loop over samples (``"loop"``, the
reference the benchmark compares with).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

from ..core.masks import pack_bool_mask, packed_numel, unpack_bool_mask
from ..core.validation import check_choice, check_number
from .partial import PHI_SHAPE, IMPState, Layout, MaskedLayout, PartiallyDynamicModule, UnitMaskedLayout, merge_masked

__all__ = ["DynamicConv2d", "PartialDynamicConv2d", "mix_kernels", "ROUTINGS", "AGGREGATIONS", "CONV_GRANULARITIES"]

ROUTINGS = ("softmax", "sigmoid")
AGGREGATIONS = ("grouped", "unfold", "loop")
CONV_GRANULARITIES = ("element", "filter")
CONV_LAYOUTS = ("masked", "finalized")
MIN_ATTENTION_HIDDEN = 4


# ------------------------------------------------------------------------------------------------------ checks
def check_temperature(temperature) -> float:
    """The softmax temperature as a float; ``ValueError`` unless it is a finite number > 0."""
    check_number("temperature", temperature, gt=0)
    return float(temperature)


def check_num_kernels(num_kernels) -> None:
    check_number("num_kernels", num_kernels, integer=True, ge=1)


def _check_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode):
    check_number("in_channels", in_channels, integer=True, ge=1)
    check_number("out_channels", out_channels, integer=True, ge=1)
    if groups != 1:
        raise ValueError(f"groups={groups!r}: dynamic convolution supports ordinary convolutions only (groups=1); "
                         "grouped and depthwise convolutions are not supported")
    if padding_mode != "zeros":
        raise ValueError(f"padding_mode={padding_mode!r}: dynamic convolution supports zero padding only ('zeros')")
    if isinstance(padding, str):
        raise ValueError(f"padding={padding!r}: give the padding as integers (string padding such as 'same' is not "
                         "supported)")
    for name, value, least in (("kernel_size", kernel_size, 1), ("stride", stride, 1), ("padding", padding, 0),
                               ("dilation", dilation, 1)):
        pair = _pair(value)
        if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in pair):
            raise ValueError(f"{name} must be an integer >= {least} or a pair of them, got {value!r}")


def _exporting() -> bool:
    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())


# ------------------------------------------------------------------------------------------------ the mixture
def mix_kernels(x: torch.Tensor, routing_weights: torch.Tensor, kernels: torch.Tensor, biases: torch.Tensor | None,
                stride, padding, dilation, aggregation: str = "grouped") -> torch.Tensor:
    """Per-sample convolution with mixed kernels: ``y_n = conv(x_n, Σ_k π_nk·W_k) + Σ_k π_nk·b_k``.

    ``x [B, C_in, H, W]``, ``routing_weights`` π ``[B, K]``, ``kernels [K, C_out, C_in, kh, kw]``, ``biases
    [K, C_out]`` or None. ``aggregation``: ``"grouped"`` (one convolution with the batch folded into ``B`` groups),
    ``"unfold"`` (im2col + one batched matmul) or ``"loop"`` (one convolution per sample).
    """
    batch, num_kernels, out_channels = x.shape[0], kernels.shape[0], kernels.shape[1]
    weight = (routing_weights @ kernels.reshape(num_kernels, -1)).reshape(batch, *kernels.shape[1:])
    bias = None if biases is None else routing_weights @ biases
    if aggregation == "grouped":
        out = F.conv2d(x.reshape(1, -1, *x.shape[2:]), weight.reshape(-1, *kernels.shape[2:]),
                       None if bias is None else bias.reshape(-1), stride, padding, dilation, groups=batch)
        return out.reshape(batch, out_channels, *out.shape[2:])
    if aggregation == "unfold":
        kernel_size = tuple(kernels.shape[-2:])
        cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
        out = torch.bmm(weight.reshape(batch, out_channels, -1), cols)
        if bias is not None:
            out = out + bias.unsqueeze(-1)
        size = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel_size[i] - 1) - 1) // stride[i] + 1
                for i in range(2)]
        return out.reshape(batch, out_channels, *size)
    if aggregation == "loop":
        return torch.cat([F.conv2d(x[n:n + 1], weight[n], None if bias is None else bias[n], stride, padding,
                                   dilation) for n in range(batch)])
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


class KernelAttention(nn.Module):
    """π(x) ``[B, K]`` from the global average pool of ``x``: ``softmax(FC(ReLU(FC(pool))) / T)`` (Dynamic
    Convolution; hidden width ``max(C_in // reduction, 4)``) or ``sigmoid(FC(pool))`` (CondConv)."""

    def __init__(self, in_channels: int, num_kernels: int, routing: str, reduction: int):
        super().__init__()
        self.routing = routing
        if routing == "softmax":
            hidden = max(in_channels // reduction, MIN_ATTENTION_HIDDEN)
            self.fc1 = nn.Linear(in_channels, hidden)
            self.fc2 = nn.Linear(hidden, num_kernels)
        else:
            self.fc = nn.Linear(in_channels, num_kernels)

    def forward(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        if self.routing == "softmax":
            return torch.softmax(self.fc2(F.relu(self.fc1(pooled))) / temperature, dim=-1)
        return torch.sigmoid(self.fc(pooled))


# ------------------------------------------------------------------------------------------------ DY-Conv
class DynamicConv2d(nn.Module):
    """A ``Conv2d`` with ``num_kernels`` kernels mixed per sample by an attention over the input.

    Parameters: ``weight [K, C_out, C_in, kh, kw]``, ``bias [K, C_out]`` (when ``bias=True``) and the attention
    (``attention.fc1``/``fc2`` for softmax routing, ``attention.fc`` for sigmoid routing). Any kernel size, stride,
    zero padding and dilation; ``groups`` must be 1. ``temperature`` divides the softmax logits (ignored by sigmoid
    routing); :class:`~hf_dynamic.pad.temperature.TemperatureAnnealingCallback` anneals it in training.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = False, padding_mode: str = "zeros", num_kernels: int = 4,
                 routing: str = "softmax", reduction: int = 16, temperature: float = 1.0,
                 aggregation: str = "grouped", layer_idx: int = 0):
        super().__init__()
        _check_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        check_num_kernels(num_kernels)
        check_choice("routing", routing, ROUTINGS)
        check_choice("aggregation", aggregation, AGGREGATIONS)
        check_number("reduction", reduction, integer=True, ge=1)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.num_kernels, self.routing, self.aggregation = num_kernels, routing, aggregation
        self.temperature = check_temperature(temperature)
        self.layer_idx = layer_idx
        self.weight = nn.Parameter(torch.empty(num_kernels, *self.weight_shape))
        self.bias = nn.Parameter(torch.empty(num_kernels, out_channels)) if bias else None
        self.attention = KernelAttention(in_channels, num_kernels, routing, reduction)
        self.reset_parameters()

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """One kernel's shape ``(C_out, C_in, kh, kw)``."""
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def reset_parameters(self) -> None:
        """Each kernel as ``nn.Conv2d`` initialises its weight and bias (the attention: ``nn.Linear``'s init)."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        with torch.no_grad():
            for k in range(self.num_kernels):
                nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
            if self.bias is not None:
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> DynamicConv2d:
        """Upcycle a trained ``nn.Conv2d``: every kernel (and a partially dynamic layer's static weight) starts as a
        copy of its weight and bias. With softmax routing (Σ_k π_k = 1) the layer then computes what ``conv``
        computes, up to float rounding; CondConv's sigmoid weights do not sum to 1, so no copy reproduces it."""
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"from_conv needs an nn.Conv2d, got {type(conv).__name__}")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, **kwargs)
        layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
        layer.load_static_(conv.weight, conv.bias)
        return layer

    @torch.no_grad()
    def load_static_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Copy one static kernel ``[C_out, C_in, kh, kw]`` (and bias) into every kernel."""
        if tuple(weight.shape) != self.weight_shape:
            raise ValueError(f"the static weight has shape {tuple(weight.shape)}, this layer's kernels "
                             f"{self.weight_shape}")
        if (bias is None) != (self.bias is None):
            raise ValueError(f"the static convolution {'has' if bias is not None else 'has no'} bias, this layer "
                             f"{'has' if self.bias is not None else 'has no'} bias")
        self.weight.copy_(weight.unsqueeze(0).expand_as(self.weight))
        if bias is not None:
            self.bias.copy_(bias.unsqueeze(0).expand_as(self.bias))

    def set_temperature(self, temperature: float) -> None:
        self.temperature = check_temperature(temperature)

    def routing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """π(x) ``[B, K]``."""
        return self.attention(x, self.temperature)

    def kernels(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``K`` computed kernels ``[K, C_out, C_in, kh, kw]`` and biases ``[K, C_out]`` (or None)."""
        return self.weight, self.bias

    def current_aggregation(self) -> str:
        """``aggregation``, or ``"unfold"`` while exporting (a batch-sized group count is not exportable)."""
        return "unfold" if _exporting() else self.aggregation

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input [batch, {self.in_channels}, height, width], got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        weight, bias = self.kernels()
        return mix_kernels(x, self.routing_weights(x), weight, bias, self.stride, self.padding, self.dilation,
                           self.current_aggregation())

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"num_kernels={self.num_kernels}, routing={self.routing}, temperature={self.temperature:g}")


# ------------------------------------------------------------------------------------------------ PAD-Net
# The layouts of a partially dynamic convolution (``docs/pad.md``, "## Partially dynamic convolution"): the same
# Layout objects as the MoE FFN's (hf_dynamic.pad.partial), one class per layout and granularity. Tensor names are
# the same in every layout (shapes differ); the canonical parameter order is weight, bias, phi, static_weight,
# static_bias (DynamicConv2d registers the kernels first), so an optimizer state restored by position lands right.
class ConvLayout(Layout):
    """How a :class:`PartialDynamicConv2d` stores its kernels and computes the ``K`` kernels it mixes."""

    def shapes(self, layer, counts) -> tuple[tuple, tuple | None, tuple, tuple | None]:
        """``(weight, bias, static_weight, static_bias)`` shapes (None: the layer has no bias)."""
        raise NotImplementedError

    def build(self, layer, counts=None):
        weight, bias, static_weight, static_bias = self.shapes(layer, counts)
        phi = layer.phi
        del layer.phi  # registered again after the kernels: the canonical order
        layer.weight = nn.Parameter(torch.empty(weight))
        layer.bias = None if bias is None else nn.Parameter(torch.empty(bias))
        layer.phi = phi
        layer.static_weight = nn.Parameter(torch.empty(static_weight))
        layer.static_bias = None if static_bias is None else nn.Parameter(torch.empty(static_bias))
        self.build_masks(layer)

    def build_masks(self, layer) -> None:
        raise NotImplementedError

    def kernels(self, layer) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``K`` computed kernels ``W_k' [K, C_out, C_in, kh, kw]`` and biases ``[K, C_out]`` (or None)."""
        raise NotImplementedError

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        """The layer's output: every layout but finalised filter mode mixes the computed kernels per sample."""
        return DynamicConv2d.forward(layer, x)


class ConvMaskedLayout(ConvLayout, MaskedLayout):
    """The static kernel and the ``K`` kernels in full plus boolean masks, which IMP sets in place (all ones, the
    unpartitioned state, is a fully dynamic layer with a spare static copy)."""

    def shapes(self, layer, counts):
        bias = (layer.num_kernels, layer.out_channels) if layer.has_bias else None
        return ((layer.num_kernels, *layer.weight_shape), bias, layer.weight_shape,
                (layer.out_channels,) if layer.has_bias else None)

    def current_masks(self, layer) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def kernels(self, layer):
        lambda_s, lambda_d = layer.lambdas()
        state = layer.imp_state
        weight_mask, bias_mask = self.current_masks(layer) if state is None else state.masks
        weight = merge_masked(weight_mask, layer.weight, layer.static_weight, lambda_s, lambda_d)
        bias = None if layer.bias is None else merge_masked(bias_mask, layer.bias, layer.static_bias, lambda_s,
                                                            lambda_d)
        layer.imp_record([weight] + ([bias] if bias is not None else []))
        return weight, bias

    def tied_pairs(self, layer):
        return [(layer.weight, layer.static_weight)] + ([(layer.bias, layer.static_bias)] if layer.has_bias else [])


class ConvMaskedElementLayout(ConvMaskedLayout):
    granularity = "element"

    def build_masks(self, layer):
        layer.register_buffer("mask_weight", torch.ones(layer.weight_shape, dtype=torch.bool))
        layer.register_buffer("mask_bias", torch.ones(layer.out_channels, dtype=torch.bool) if layer.has_bias
                              else None)

    def current_masks(self, layer):
        return layer.mask_weight, layer.mask_bias

    def partition_mask(self, layer):
        return torch.cat([layer.mask_weight.reshape(-1)] + ([layer.mask_bias] if layer.has_bias else []))

    def unflatten(self, layer, flat):
        numel = math.prod(layer.weight_shape)
        return flat[:numel].view(layer.weight_shape), (flat[numel:] if layer.has_bias else None)

    def set_partition_mask(self, layer, flat_mask):
        weight_mask, bias_mask = self.unflatten(layer, flat_mask)
        layer.mask_weight.copy_(weight_mask)
        if bias_mask is not None:
            layer.mask_bias.copy_(bias_mask)

    def variance_scores(self, layer, variances):
        return torch.cat([v.reshape(-1) for v in variances])

    def finalize(self, layer):
        flat = layer.mask_weight.reshape(-1)
        counts = {"weight": int(flat.sum())}
        layer.static_weight.data = layer.static_weight.data.reshape(-1)[~flat].clone()
        layer.weight.data = layer.weight.data.reshape(layer.num_kernels, -1)[:, flat].clone()
        layer.register_buffer("mask_weight", pack_bool_mask(layer.mask_weight))
        if layer.has_bias:
            counts["bias"] = int(layer.mask_bias.sum())
            layer.static_bias.data = layer.static_bias.data[~layer.mask_bias].clone()
            layer.bias.data = layer.bias.data[:, layer.mask_bias].clone()
            layer.register_buffer("mask_bias", pack_bool_mask(layer.mask_bias))
        return counts, ConvFinalizedElementLayout()


class ConvMaskedFilterLayout(UnitMaskedLayout, ConvMaskedLayout):
    granularity = "filter"
    mask_name = "mask_filters"

    def num_units(self, layer):
        return layer.out_channels

    def unflatten(self, layer, flat):
        return flat.view(-1, 1, 1, 1), flat

    def variance_scores(self, layer, variances):
        return variances[0].sum(dim=(1, 2, 3)) + (variances[1] if len(variances) > 1 else 0)

    def finalize(self, layer):
        mask = layer.mask_filters
        layer.static_weight.data = layer.static_weight.data[~mask].clone()
        layer.weight.data = layer.weight.data[:, mask].clone()
        if layer.has_bias:
            layer.static_bias.data = layer.static_bias.data[~mask].clone()
            layer.bias.data = layer.bias.data[:, mask].clone()
        layer.register_buffer("mask_filters", pack_bool_mask(mask))
        return {"dynamic_filters": int(mask.sum())}, ConvFinalizedFilterLayout()


class ConvFinalizedElementLayout(ConvLayout):
    """Static values where ``M = 0`` (1-D), each kernel's values where ``M = 1`` (``weight [K, nnz]``), the masks
    bit-packed; the ``K`` kernels are re-assembled (cumulative-sum gathers, static shapes, so it exports) and mixed
    as in :class:`DynamicConv2d`: smaller checkpoints, no FLOP saving."""

    kind = "finalized"
    granularity = "element"

    def shapes(self, layer, counts):
        numel, nnz = math.prod(layer.weight_shape), counts["weight"]
        if not layer.has_bias:
            return (layer.num_kernels, nnz), None, (numel - nnz,), None
        return ((layer.num_kernels, nnz), (layer.num_kernels, counts["bias"]), (numel - nnz,),
                (layer.out_channels - counts["bias"],))

    def build_masks(self, layer):
        layer.register_buffer("mask_weight", torch.zeros(packed_numel(math.prod(layer.weight_shape)),
                                                         dtype=torch.uint8))
        layer.register_buffer("mask_bias", torch.zeros(packed_numel(layer.out_channels), dtype=torch.uint8)
                              if layer.has_bias else None)

    def masks(self, layer) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = unpack_bool_mask(layer.mask_bias, layer.out_channels) if layer.has_bias else None
        return unpack_bool_mask(layer.mask_weight, layer.weight_shape), bias

    def kernels(self, layer):
        lambda_s, lambda_d = layer.lambdas()
        weight_mask, bias_mask = self.masks(layer)
        weight = _merge_compact(weight_mask.reshape(-1), layer.weight, layer.static_weight, lambda_s, lambda_d)
        bias = None if bias_mask is None else _merge_compact(bias_mask, layer.bias, layer.static_bias, lambda_s,
                                                             lambda_d)
        return weight.reshape(layer.num_kernels, *layer.weight_shape), bias

    def counts(self, layer):
        weight_mask, bias_mask = self.masks(layer)
        return {"weight": int(weight_mask.sum()), **({"bias": int(bias_mask.sum())} if bias_mask is not None else {})}


class ConvFinalizedFilterLayout(ConvLayout):
    """Static filters ``[C_out − d, ...]``, dynamic ones ``[K, d, ...]``, the filter mask bit-packed: the static
    filters run as one ordinary convolution for the whole batch, only ``d`` filters are mixed per sample."""

    kind = "finalized"
    granularity = "filter"

    def shapes(self, layer, counts):
        dynamic, rest = counts["dynamic_filters"], layer.weight_shape[1:]
        bias = layer.has_bias
        return ((layer.num_kernels, dynamic, *rest), (layer.num_kernels, dynamic) if bias else None,
                (layer.out_channels - dynamic, *rest), (layer.out_channels - dynamic,) if bias else None)

    def build_masks(self, layer):
        layer.register_buffer("mask_filters", torch.zeros(packed_numel(layer.out_channels), dtype=torch.uint8))

    def filter_mask(self, layer) -> torch.Tensor:
        return unpack_bool_mask(layer.mask_filters, layer.out_channels)

    def filter_order(self, layer) -> torch.Tensor:
        """Where filter ``f`` sits in ``[static filters, dynamic filters]`` (a gather index computed with cumulative
        sums, so it has a static shape and exports)."""
        as_long = self.filter_mask(layer).long()
        num_static = layer.static_weight.shape[0]
        return torch.where(as_long.bool(), num_static + torch.cumsum(as_long, 0) - 1, torch.cumsum(1 - as_long, 0) - 1)

    def kernels(self, layer):
        lambda_s, lambda_d = layer.lambdas()
        order, num_kernels = self.filter_order(layer), layer.num_kernels
        weight = torch.cat([(lambda_s * layer.static_weight).expand(num_kernels, *layer.static_weight.shape),
                            lambda_d * layer.weight], dim=1).index_select(1, order)
        bias = None
        if layer.has_bias:
            bias = torch.cat([(lambda_s * layer.static_bias).expand(num_kernels, -1), lambda_d * layer.bias],
                             dim=1).index_select(1, order)
        return weight, bias

    def forward(self, layer, x):
        layer.check_input(x)
        lambda_s, lambda_d = layer.lambdas()
        routing = layer.routing_weights(x)
        parts = []
        if layer.static_weight.shape[0] > 0:
            static = F.conv2d(x, lambda_s * layer.static_weight,
                              None if layer.static_bias is None else lambda_s * layer.static_bias,
                              layer.stride, layer.padding, layer.dilation)
            if layer.routing == "sigmoid":  # Σ_k π_k = 1 only for softmax routing
                static = static * routing.sum(dim=1).view(-1, 1, 1, 1)
            parts.append(static)
        if layer.weight.shape[1] > 0:
            parts.append(mix_kernels(x, routing, lambda_d * layer.weight,
                                     None if layer.bias is None else lambda_d * layer.bias, layer.stride,
                                     layer.padding, layer.dilation, layer.current_aggregation()))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out.index_select(1, self.filter_order(layer))

    def counts(self, layer):
        return {"dynamic_filters": int(self.filter_mask(layer).sum())}


CONV_MASKED = {"element": ConvMaskedElementLayout, "filter": ConvMaskedFilterLayout}
CONV_FINALIZED = {"element": ConvFinalizedElementLayout, "filter": ConvFinalizedFilterLayout}
CONV_MASK_BUFFER = {"element": "mask_weight", "filter": "mask_filters"}


class PartialDynamicConv2d(PartiallyDynamicModule, DynamicConv2d):
    """PAD-Net's partially dynamic convolution: ``W_k' = λ_d·(M ⊙ W_k) + λ_s·((1 − M) ⊙ W^static)``, mixed per
    sample as in :class:`DynamicConv2d` (``docs/pad.md``, "## Partially dynamic convolution").

    Storage is a layout object, as the MoE FFN's (``layout``: ``"masked"`` or ``"finalized"``; ``granularity``:
    ``"element"`` or ``"filter"``, see :class:`ConvMaskedLayout`, :class:`ConvFinalizedElementLayout`,
    :class:`ConvFinalizedFilterLayout`); ``partition_counts`` (the config's ``pad_partition`` entry) fixes a
    finalised layer's shapes. φ/λ, the mask, IMP, finalisation and adopt-on-load come from
    :class:`~hf_dynamic.pad.partial.PartiallyDynamicModule`; ``config`` (optional) is the model config where a
    checkpoint loaded in another layout is recorded.
    """

    unit = "convolution"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, granularity: str = "element",
                 layout: str = "masked", partition_counts: dict | None = None, config=None, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        check_choice("granularity", granularity, CONV_GRANULARITIES)
        check_choice("layout", layout, CONV_LAYOUTS)
        self.granularity, self.config, self.has_bias = granularity, config, self.bias is not None
        self.imp_state: IMPState | None = None
        if layout == "masked":
            self.storage, counts = CONV_MASKED[granularity](), None
        else:
            self.storage, counts = CONV_FINALIZED[granularity](), self.check_partition_counts(partition_counts)
        self.register_layout(counts, nn.Parameter(torch.zeros(PHI_SHAPE)))
        self.reset_parameters()

    def register_layout(self, counts, phi) -> None:
        self.phi = phi
        self.storage.build(self, counts)

    def reset_parameters(self) -> None:
        """The kernels and (masked layout) the static weight initialised independently, as ``nn.Conv2d``'s; a
        finalised layer is filled by loading."""
        storage = getattr(self, "storage", None)
        if storage is None or storage.kind != "masked":
            return
        super().reset_parameters()
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.static_weight, a=math.sqrt(5))
            if self.static_bias is not None:
                bound = 1 / math.sqrt(math.prod(self.weight_shape[1:]))
                nn.init.uniform_(self.static_bias, -bound, bound)

    # --------------------------------------------------------------------------------------------- structure
    def partition_keys(self) -> tuple[str, ...]:
        """The keys of this layer's entry in ``config.pad_partition``."""
        if self.granularity == "filter":
            return ("dynamic_filters",)
        return ("weight", "bias") if self.has_bias else ("weight",)

    def check_partition_counts(self, counts) -> dict:
        """Validate a finalised layer's dynamic-entry counts (``ValueError`` naming the layer and the counts)."""
        keys = self.partition_keys()
        limits = {"weight": math.prod(self.weight_shape), "bias": self.out_channels,
                  "dynamic_filters": self.out_channels}
        if not isinstance(counts, dict) or set(counts) != set(keys) or not all(
                isinstance(counts[k], int) and not isinstance(counts[k], bool) and 0 <= counts[k] <= limits[k]
                for k in keys):
            raise ValueError(f"pad_partition[{str(self.layer_idx)!r}] must give {list(keys)} (each in [0, "
                             f"{[limits[k] for k in keys]}]) for a finalised {self.granularity}-mode convolution, "
                             f"got {counts!r}")
        return counts

    @property
    def num_partition_entries(self) -> int:
        """Every weight and bias entry (element) or every output filter (filter)."""
        if self.granularity == "filter":
            return self.out_channels
        return math.prod(self.weight_shape) + (self.out_channels if self.has_bias else 0)

    def layout_of_state_dict(self, state_dict, prefix):
        """The layout of this convolution's tensors in ``state_dict``: masked masks are bool, finalised ones
        bit-packed (``uint8``); a finalised layout's counts are its kernels' widths."""
        mask = state_dict.get(prefix + CONV_MASK_BUFFER[self.granularity])
        weight = state_dict.get(prefix + "weight")
        if mask is None or weight is None:
            return None
        if mask.dtype == torch.bool:
            bias_mask = state_dict.get(prefix + "mask_bias")
            partitioned = not bool(mask.all()) or (bias_mask is not None and not bool(bias_mask.all()))
            return CONV_MASKED[self.granularity](), None, "partitioned" if partitioned else "unpartitioned"
        if self.granularity == "filter":
            counts = {"dynamic_filters": int(weight.shape[1])}
        else:
            bias = state_dict.get(prefix + "bias")
            counts = {"weight": int(weight.shape[1]), **({"bias": int(bias.shape[1])} if bias is not None else {})}
        return CONV_FINALIZED[self.granularity](), counts, "finalized"

    # ---------------------------------------------------------------------------------------------- forward
    def kernels(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``K`` computed kernels ``W_k' [K, C_out, C_in, kh, kw]`` and biases ``[K, C_out]`` (or None)."""
        return self.storage.kernels(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.storage.forward(self, x)

    @torch.no_grad()
    def load_static_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Copy one static kernel into every kernel and the static weight (masked layout only)."""
        self._require(MaskedLayout, "load_static_()")
        super().load_static_(weight, bias)
        self.static_weight.copy_(weight)
        if bias is not None:
            self.static_bias.copy_(bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layout={self.layout}, granularity={self.granularity}"


def _merge_compact(mask, dynamic, static, lambda_s, lambda_d):
    """Full ``[K, n]`` kernels from compact ``dynamic [K, nnz]`` (where the flat ``mask`` is 1) and ``static
    [n − nnz]`` (where it is 0), gathered with cumulative-sum indices (static shapes, so it exports)."""
    as_long = mask.long()
    if dynamic.shape[1] == 0:
        return (lambda_s * static).unsqueeze(0).expand(dynamic.shape[0], -1)
    dynamic_index = (torch.cumsum(as_long, 0) - 1).clamp(min=0)
    if static.shape[0] == 0:
        return lambda_d * dynamic.index_select(1, dynamic_index)
    static_index = (torch.cumsum(1 - as_long, 0) - 1).clamp(min=0)
    return torch.where(mask, lambda_d * dynamic.index_select(1, dynamic_index),
                       lambda_s * static.index_select(0, static_index))
