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

from ..core.importance import expert_gradient_variance, snip_score
from ..core.masks import pack_bool_mask, packed_numel, unpack_bool_mask
from ..core.validation import check_choice
from .layers import IMPState

__all__ = ["DynamicConv2d", "PartialDynamicConv2d", "mix_kernels", "ROUTINGS", "AGGREGATIONS", "CONV_GRANULARITIES"]

ROUTINGS = ("softmax", "sigmoid")
AGGREGATIONS = ("grouped", "unfold", "loop")
CONV_GRANULARITIES = ("element", "filter")
CONV_LAYOUTS = ("masked", "finalized")
MIN_ATTENTION_HIDDEN = 4


# ------------------------------------------------------------------------------------------------------ checks
def check_temperature(temperature) -> float:
    """The softmax temperature as a float; ``ValueError`` unless it is a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def check_num_kernels(num_kernels) -> None:
    if isinstance(num_kernels, bool) or not isinstance(num_kernels, int) or num_kernels < 1:
        raise ValueError(f"num_kernels must be an integer >= 1, got {num_kernels!r}")


def _check_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode):
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
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
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"reduction must be an integer >= 1, got {reduction!r}")
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input [batch, {self.in_channels}, height, width], got {tuple(x.shape)}")
        weight, bias = self.kernels()
        return mix_kernels(x, self.routing_weights(x), weight, bias, self.stride, self.padding, self.dilation,
                           self.current_aggregation())

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"num_kernels={self.num_kernels}, routing={self.routing}, temperature={self.temperature:g}")


# ------------------------------------------------------------------------------------------------ PAD-Net
class PartialDynamicConv2d(DynamicConv2d):
    """PAD-Net's partially dynamic convolution: ``W_k' = λ_d·(M ⊙ W_k) + λ_s·((1 − M) ⊙ W^static)``, mixed per
    sample as in :class:`DynamicConv2d` (``docs/pad.md``, "## Partially dynamic convolution").

    Layouts (parameter names are the same in both, shapes differ):

    - ``"masked"``: ``static_weight [C_out, C_in, kh, kw]``, the ``K`` kernels in full, boolean mask buffers
      (``mask_weight`` and ``mask_bias`` in element mode, ``mask_filters [C_out]`` in filter mode). Iterative Mode
      Partition sets the masks in place; all ones (the unpartitioned state) is a fully dynamic layer with a spare
      static copy.
    - ``"finalized"`` (``partition_counts`` fixes the shapes): element mode stores the static values where
      ``M = 0`` (1-D), each kernel's values where ``M = 1`` (``weight [K, nnz]``) and the masks bit-packed
      (``uint8``); filter mode stores the static filters ``[C_out − d, ...]``, the dynamic ones ``[K, d, ...]`` and
      the filter mask bit-packed. In filter mode the static filters run as one ordinary convolution for the whole
      batch and only ``d`` filters are mixed per sample.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, granularity: str = "element",
                 layout: str = "masked", partition_counts: dict | None = None, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        check_choice("granularity", granularity, CONV_GRANULARITIES)
        check_choice("layout", layout, CONV_LAYOUTS)
        self.granularity, self.layout = granularity, layout
        self.imp_state: IMPState | None = None
        self.phi = nn.Parameter(torch.zeros(1))  # [1], not 0-d: DeepSpeed ZeRO cannot partition 0-d parameters
        has_bias, num_kernels, out_channels = self.bias is not None, self.num_kernels, self.out_channels
        if layout == "masked":
            self.static_weight = nn.Parameter(torch.empty(self.weight_shape))
            self.static_bias = nn.Parameter(torch.empty(out_channels)) if has_bias else None
            self.reset_parameters()
            if granularity == "element":
                self.register_buffer("mask_weight", torch.ones(self.weight_shape, dtype=torch.bool))
                self.register_buffer("mask_bias", torch.ones(out_channels, dtype=torch.bool) if has_bias else None)
            else:
                self.register_buffer("mask_filters", torch.ones(out_channels, dtype=torch.bool))
            return
        counts = self.check_partition_counts(partition_counts)
        if granularity == "element":
            numel = math.prod(self.weight_shape)
            self.static_weight = nn.Parameter(torch.zeros(numel - counts["weight"]))
            self.weight = nn.Parameter(torch.zeros(num_kernels, counts["weight"]))
            self.register_buffer("mask_weight", torch.zeros(packed_numel(numel), dtype=torch.uint8))
            if has_bias:
                self.static_bias = nn.Parameter(torch.zeros(out_channels - counts["bias"]))
                self.bias = nn.Parameter(torch.zeros(num_kernels, counts["bias"]))
            else:
                self.static_bias = None
            self.register_buffer("mask_bias", torch.zeros(packed_numel(out_channels), dtype=torch.uint8)
                                 if has_bias else None)
        else:
            dynamic = counts["dynamic_filters"]
            self.static_weight = nn.Parameter(torch.zeros(out_channels - dynamic, *self.weight_shape[1:]))
            self.weight = nn.Parameter(torch.zeros(num_kernels, dynamic, *self.weight_shape[1:]))
            if has_bias:
                self.static_bias = nn.Parameter(torch.zeros(out_channels - dynamic))
                self.bias = nn.Parameter(torch.zeros(num_kernels, dynamic))
            else:
                self.static_bias = None
            self.register_buffer("mask_filters", torch.zeros(packed_numel(out_channels), dtype=torch.uint8))

    def reset_parameters(self) -> None:
        """The kernels and (masked layout) the static weight initialised independently, as ``nn.Conv2d``'s."""
        super().reset_parameters()
        static = getattr(self, "static_weight", None)
        if static is not None and static.dim() == 4:
            with torch.no_grad():
                nn.init.kaiming_uniform_(static, a=math.sqrt(5))
                if self.static_bias is not None:
                    bound = 1 / math.sqrt(math.prod(self.weight_shape[1:]))
                    nn.init.uniform_(self.static_bias, -bound, bound)

    # --------------------------------------------------------------------------------------------- structure
    def partition_keys(self) -> tuple[str, ...]:
        """The keys of this layer's entry in ``config.pad_partition``."""
        if self.granularity == "filter":
            return ("dynamic_filters",)
        return ("weight", "bias") if self.bias is not None else ("weight",)

    def check_partition_counts(self, counts) -> dict:
        """Validate a finalised layer's dynamic-entry counts (``ValueError`` naming the layer and the counts)."""
        keys = self.partition_keys()
        limits = {"weight": math.prod(self.weight_shape), "bias": self.out_channels,
                  "dynamic_filters": self.out_channels}
        if not isinstance(counts, dict) or set(counts) != set(keys) or not all(
                isinstance(counts[k], int) and 0 <= counts[k] <= limits[k] for k in keys):
            raise ValueError(f"pad_partition[{str(self.layer_idx)!r}] must give {list(keys)} (each in [0, "
                             f"{[limits[k] for k in keys]}]) for a finalised {self.granularity}-mode convolution, "
                             f"got {counts!r}")
        return counts

    @property
    def partitionable(self) -> bool:
        return True

    @property
    def num_partition_entries(self) -> int:
        """Every weight and bias entry (element) or every output filter (filter)."""
        if self.granularity == "filter":
            return self.out_channels
        return math.prod(self.weight_shape) + (self.out_channels if self.bias is not None else 0)

    def lambdas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(λ_s, λ_d)`` with ``λ_d = 2·sigmoid(φ)`` and ``λ_s = 2 − λ_d``, 0-d and at least fp32 (as the MoE
        layer's)."""
        lambda_d = 2.0 * torch.sigmoid(self.phi.reshape(()).to(torch.promote_types(self.phi.dtype, torch.float32)))
        return 2.0 - lambda_d, lambda_d

    def _require_masked(self, what: str) -> None:
        if self.layout != "masked":
            raise ValueError(f"{what} needs the masked layout; convolution {self.layer_idx} is {self.layout!r}")

    def unpacked_masks(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight mask, bias mask)`` as booleans broadcastable to ``[C_out, C_in, kh, kw]`` and ``[C_out]``."""
        if self.granularity == "filter":
            filters = self.mask_filters if self.layout == "masked" else unpack_bool_mask(self.mask_filters,
                                                                                         self.out_channels)
            return filters.view(-1, 1, 1, 1), filters
        if self.layout == "masked":
            return self.mask_weight, self.mask_bias
        bias = None if self.bias is None else unpack_bool_mask(self.mask_bias, self.out_channels)
        return unpack_bool_mask(self.mask_weight, self.weight_shape), bias

    def partition_counts(self) -> dict:
        """The dynamic-entry counts the masks hold (as ``config.pad_partition`` records them once finalised)."""
        weight_mask, bias_mask = self.unpacked_masks()
        if self.granularity == "filter":
            return {"dynamic_filters": int(bias_mask.sum())}
        counts = {"weight": int(weight_mask.sum())}
        if bias_mask is not None:
            counts["bias"] = int(bias_mask.sum())
        return counts

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of this layer's own parameters and buffers (for checking loaded weights)."""
        return {name: tuple(t.shape) for name, t in [*self.named_parameters(recurse=False),
                                                      *self.named_buffers(recurse=False)]}

    # ------------------------------------------------------------------------------------------------ masks
    def partition_mask(self) -> torch.Tensor:
        """The mask as one flat bool vector over :attr:`num_partition_entries` (True = dynamic)."""
        self._require_masked("partition_mask()")
        if self.granularity == "filter":
            return self.mask_filters.clone()
        parts = [self.mask_weight.reshape(-1)] + ([self.mask_bias] if self.bias is not None else [])
        return torch.cat(parts)

    def _unflatten(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.granularity == "filter":
            return flat.view(-1, 1, 1, 1), flat
        numel = math.prod(self.weight_shape)
        return flat[:numel].view(self.weight_shape), (flat[numel:] if self.bias is not None else None)

    @torch.no_grad()
    def set_partition_mask(self, flat_mask: torch.Tensor) -> None:
        """Set the mask in place from a flat bool vector (the layout of :meth:`partition_mask`)."""
        self._require_masked("set_partition_mask()")
        if flat_mask.dtype != torch.bool or flat_mask.numel() != self.num_partition_entries:
            raise ValueError(f"flat_mask must be a bool tensor of {self.num_partition_entries} entries, got "
                             f"{flat_mask.dtype} with {flat_mask.numel()}")
        flat_mask = flat_mask.to(self.phi.device)
        if self.granularity == "filter":
            self.mask_filters.copy_(flat_mask)
            return
        weight_mask, bias_mask = self._unflatten(flat_mask)
        self.mask_weight.copy_(weight_mask)
        if bias_mask is not None:
            self.mask_bias.copy_(bias_mask)

    def experts_tied(self) -> bool:
        """True while every kernel equals the static weight and ``λ_s = λ_d`` (upcycled, untrained): ``dL/dM`` is
        then identically zero (``docs/pad.md``, "## Iterative Mode Partition")."""
        if self.layout != "masked" or float(self.phi.detach()) != 0.0:
            return False
        pairs = [(self.weight, self.static_weight)] + ([(self.bias, self.static_bias)] if self.bias is not None
                                                       else [])
        return all(torch.equal(dyn, static.unsqueeze(0).expand_as(dyn)) for dyn, static in pairs)

    # ---------------------------------------------------------------------------------------------- kernels
    def kernels(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``K`` computed kernels ``W_k' [K, C_out, C_in, kh, kw]`` and biases ``[K, C_out]`` (or None)."""
        lambda_s, lambda_d = self.lambdas()
        if self.layout == "masked":
            state = self.imp_state
            weight_mask, bias_mask = self.unpacked_masks() if state is None else state.masks
            weight = _merge_masked(weight_mask, self.weight, self.static_weight, lambda_s, lambda_d)
            bias = None if self.bias is None else _merge_masked(bias_mask, self.bias, self.static_bias, lambda_s,
                                                                lambda_d)
            if state is not None:
                state.merged = [weight] + ([bias] if bias is not None else [])
            return weight, bias
        if self.granularity == "element":
            weight_mask, bias_mask = self.unpacked_masks()
            weight = _merge_compact(weight_mask.reshape(-1), self.weight, self.static_weight, lambda_s, lambda_d)
            bias = None if self.bias is None else _merge_compact(bias_mask, self.bias, self.static_bias, lambda_s,
                                                                 lambda_d)
            return weight.reshape(self.num_kernels, *self.weight_shape), bias
        order = self.filter_order()
        weight = torch.cat([(lambda_s * self.static_weight).expand(self.num_kernels, *self.static_weight.shape),
                            lambda_d * self.weight], dim=1).index_select(1, order)
        bias = None
        if self.bias is not None:
            bias = torch.cat([(lambda_s * self.static_bias).expand(self.num_kernels, -1), lambda_d * self.bias],
                             dim=1).index_select(1, order)
        return weight, bias

    def filter_order(self) -> torch.Tensor:
        """Finalised filter mode: where filter ``f`` sits in ``[static filters, dynamic filters]`` (a gather index
        computed with cumulative sums, so it has a static shape and exports)."""
        mask = unpack_bool_mask(self.mask_filters, self.out_channels)
        as_long = mask.long()
        num_static = self.static_weight.shape[0]
        return torch.where(mask, num_static + torch.cumsum(as_long, 0) - 1, torch.cumsum(1 - as_long, 0) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "masked" or self.granularity == "element":
            return super().forward(x)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input [batch, {self.in_channels}, height, width], got {tuple(x.shape)}")
        # Finalised filter mode: static filters as one convolution for the batch, dynamic filters mixed per sample.
        lambda_s, lambda_d = self.lambdas()
        routing = self.routing_weights(x)
        parts = []
        if self.static_weight.shape[0] > 0:
            static = F.conv2d(x, lambda_s * self.static_weight,
                              None if self.static_bias is None else lambda_s * self.static_bias,
                              self.stride, self.padding, self.dilation)
            if self.routing == "sigmoid":  # Σ_k π_k = 1 only for softmax routing
                static = static * routing.sum(dim=1).view(-1, 1, 1, 1)
            parts.append(static)
        if self.weight.shape[1] > 0:
            parts.append(mix_kernels(x, routing, lambda_d * self.weight,
                                     None if self.bias is None else lambda_d * self.bias, self.stride, self.padding,
                                     self.dilation, self.current_aggregation()))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out.index_select(1, self.filter_order())

    # ------------------------------------------------------------------------------------------------- IMP
    def imp_begin(self, relaxed_mask: torch.Tensor | None = None) -> None:
        """Start scoring: the mask becomes a continuous leaf tensor (``requires_grad``)."""
        self._require_masked("IMP")
        flat = self.partition_mask() if relaxed_mask is None else relaxed_mask
        leaf = flat.detach().to(self.phi.device, self.phi.dtype, copy=True).requires_grad_(True)
        self.imp_state = IMPState(leaf, self._unflatten(leaf))

    def imp_inputs(self) -> list[torch.Tensor]:
        """After a forward: the mask leaf, then the computed kernels (and biases)."""
        if self.imp_state is None or self.imp_state.merged is None:
            raise ValueError(f"convolution {self.layer_idx} ran no forward since imp_begin()")
        return [self.imp_state.leaf, *self.imp_state.merged]

    def imp_accumulate(self, grads) -> None:
        """Add one batch's gradients (in :meth:`imp_inputs` order) to the running sums."""
        state = self.imp_state
        grads = [g.detach().float() for g in grads]
        if state.mask_grad is None:
            state.mask_grad, state.expert_grad = grads[0], grads[1:]
        else:
            for acc, g in zip([state.mask_grad, *state.expert_grad], grads):
                acc.add_(g)
        state.merged = None

    def imp_gradients(self, kind: str) -> list[torch.Tensor]:
        """``[dL/dM]`` (snip) or the gradients of the computed kernels (and biases) (grad_variance)."""
        if self.imp_state is None or self.imp_state.mask_grad is None:
            raise ValueError(f"convolution {self.layer_idx} has no accumulated IMP gradients")
        check_choice("score kind", kind, ("snip", "grad_variance"))
        return [self.imp_state.mask_grad] if kind == "snip" else self.imp_state.expert_grad

    def imp_scores(self, kind: str) -> torch.Tensor:
        """Flat scores: ``|dL/dM|`` or the cross-kernel gradient variance (summed over a filter in filter mode)."""
        grads = self.imp_gradients(kind)
        if kind == "snip":
            return snip_score(grads[0]).reshape(-1)
        variances = [expert_gradient_variance(g) for g in grads]
        if self.granularity == "filter":
            return variances[0].sum(dim=(1, 2, 3)) + (variances[1] if len(variances) > 1 else 0)
        return torch.cat([v.reshape(-1) for v in variances])

    def imp_end(self) -> None:
        self.imp_state = None

    # --------------------------------------------------------------------------------------------- finalise
    @torch.no_grad()
    def finalize_(self) -> dict:
        """Drop the redundant entries in place (parameters keep their identity); return the dynamic counts."""
        self._require_masked("finalize_()")
        counts = self.partition_counts()
        if self.granularity == "filter":
            mask = self.mask_filters
            self.static_weight.data = self.static_weight.data[~mask].clone()
            self.weight.data = self.weight.data[:, mask].clone()
            if self.bias is not None:
                self.static_bias.data = self.static_bias.data[~mask].clone()
                self.bias.data = self.bias.data[:, mask].clone()
            self.register_buffer("mask_filters", pack_bool_mask(mask))
        else:
            flat = self.mask_weight.reshape(-1)
            self.static_weight.data = self.static_weight.data.reshape(-1)[~flat].clone()
            self.weight.data = self.weight.data.reshape(self.num_kernels, -1)[:, flat].clone()
            self.register_buffer("mask_weight", pack_bool_mask(self.mask_weight))
            if self.bias is not None:
                self.static_bias.data = self.static_bias.data[~self.mask_bias].clone()
                self.bias.data = self.bias.data[:, self.mask_bias].clone()
                self.register_buffer("mask_bias", pack_bool_mask(self.mask_bias))
        self.layout = "finalized"
        return counts

    @torch.no_grad()
    def load_static_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Copy one static kernel into every kernel and the static weight (masked layout only)."""
        self._require_masked("load_static_()")
        super().load_static_(weight, bias)
        self.static_weight.copy_(weight)
        if bias is not None:
            self.static_bias.copy_(bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layout={self.layout}, granularity={self.granularity}"


def _merge_masked(mask, dynamic, static, lambda_s, lambda_d):
    """``λ_d·M⊙W_k + λ_s·(1−M)⊙W_s`` for a boolean or continuous mask (broadcast over the kernels)."""
    if mask.dtype == torch.bool:
        return torch.where(mask, lambda_d * dynamic, lambda_s * static)
    return lambda_d * mask * dynamic + lambda_s * (1 - mask) * static


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
