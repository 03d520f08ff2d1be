"""Configuration of DynamicResNet: transformers' ResNet whose convolutions are (partially) dynamic
(``docs/pad.md``, "## Partially dynamic convolution")."""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import ResNetConfig

from ...core.validation import check_choice, check_number
from ...pad.checks import check_pad_state_fields
from ...pad.conv import CONV_GRANULARITIES, ROUTINGS, check_num_kernels, check_temperature
from ...pad.partial import PAD_STATES, check_dynamic_ratio, is_plain_moe


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of transformers' ResNet, in module order: its index, module path (in ``ResNetModel``) and
    geometry."""

    index: int
    path: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int


def resnet_conv_specs(config) -> list[ConvSpec]:
    """Every convolution transformers' ``ResNetModel`` builds from ``config``, in module order: the stem, then per
    residual layer its shortcut projection (when it has one) and its 2 (basic) or 3 (bottleneck) convolutions.
    The model checks its modules against this list when it is built."""
    specs = [("embedder.embedder.convolution", config.num_channels, config.embedding_size, 7, 2)]
    in_channels = config.embedding_size
    for s, (out_channels, depth) in enumerate(zip(config.hidden_sizes, config.depths)):
        stage_stride = 2 if s > 0 or config.downsample_in_first_stage else 1
        for i in range(depth):
            stride = stage_stride if i == 0 else 1
            prefix = f"encoder.stages.{s}.layers.{i}"
            if in_channels != out_channels or stride != 1:
                specs.append((f"{prefix}.shortcut.convolution", in_channels, out_channels, 1, stride))
            if config.layer_type == "bottleneck":
                reduced = out_channels // 4
                first, second = (stride, 1) if config.downsample_in_bottleneck else (1, stride)
                convs = [(in_channels, reduced, 1, first), (reduced, reduced, 3, second), (reduced, out_channels, 1, 1)]
            else:
                convs = [(in_channels, out_channels, 3, stride), (out_channels, out_channels, 3, 1)]
            specs += [(f"{prefix}.layer.{j}.convolution", *conv) for j, conv in enumerate(convs)]
            in_channels = out_channels
    return [ConvSpec(index, *spec) for index, spec in enumerate(specs)]


@strict
class DynamicResNetConfig(ResNetConfig):
    r"""ResNet configuration plus dynamic convolution and PAD-Net fields.

    Args:
        num_kernels (`int`, defaults to 4): kernels per dynamic convolution (K).
        routing (`str`, defaults to `"softmax"`): `"softmax"` (Dynamic Convolution's attention, with a temperature)
            or `"sigmoid"` (CondConv's per-kernel routing).
        attention_reduction (`int`, defaults to 16): the attention's hidden width is
            `max(in_channels // attention_reduction, 4)` (softmax routing).
        temperature (`float`, defaults to 1.0): the softmax temperature (`TemperatureAnnealingCallback` anneals it
            in training and records the current value here).
        dynamic_ratio (`float`, defaults to 1.0): κ ∈ (0, 1], the fraction of dynamic entries; 1.0 is the fully
            dynamic network (Dynamic Convolution / CondConv), which stores no static weight.
        partition_granularity (`str`, defaults to `"element"`): `"element"` (every weight entry has its own mask
            bit) or `"filter"` (whole output filters are static or dynamic).
        dynamic_convs (`list[int]`, *optional*): indices of the convolutions that become dynamic, counting every
            convolution of the ResNet in module order (the stem is 0; see `resnet_conv_specs`); None = every
            convolution but the stem.
        pad_state (`str`, defaults to `"unpartitioned"`): `"unpartitioned"`, `"partitioned"` (IMP has fixed the
            masks) or `"finalized"` (compact storage).
        pad_partition (`dict`, *optional*): for a finalised model, per dynamic convolution (key: its index as a
            string) the dynamic-entry counts that fix its shapes: `{"weight": n}` (element mode) or
            `{"dynamic_filters": n}` (filter mode).
    """

    model_type = "dynamic_resnet"

    num_kernels: int = 4
    routing: str = "softmax"
    attention_reduction: int = 16
    temperature: float | int = 1.0
    dynamic_ratio: float | int = 1.0
    partition_granularity: str = "element"
    dynamic_convs: list[int] | None = None
    pad_state: str = "unpartitioned"
    pad_partition: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_dynamic_fields()

    def check_dynamic_fields(self) -> None:
        """Raise a ValueError naming the first invalid dynamic-convolution / PAD field and its value."""
        check_num_kernels(self.num_kernels)
        check_choice("routing", self.routing, ROUTINGS)
        check_number("attention_reduction", self.attention_reduction, integer=True, ge=1)
        check_temperature(self.temperature)
        check_dynamic_ratio(self.dynamic_ratio)
        check_choice("partition_granularity", self.partition_granularity, CONV_GRANULARITIES)
        check_choice("pad_state", self.pad_state, PAD_STATES)
        if self.layer_type not in self.layer_types:
            raise ValueError(f"layer_type must be one of {tuple(self.layer_types)}, got {self.layer_type!r}")
        num_convs = len(resnet_conv_specs(self))
        if self.dynamic_convs is not None:
            if not isinstance(self.dynamic_convs, (list, tuple)):
                raise ValueError(f"dynamic_convs must be a list of convolution indices (or None for every "
                                 f"convolution but the stem), got {self.dynamic_convs!r}")
            if len(self.dynamic_convs) == 0:
                raise ValueError("dynamic_convs must name at least one convolution (or be None for every "
                                 "convolution but the stem), got []")
            for index in self.dynamic_convs:
                if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_convs:
                    raise ValueError(f"dynamic_convs has index {index!r}, but this ResNet has {num_convs} "
                                     f"convolutions (indices 0..{num_convs - 1})")
            if len(set(self.dynamic_convs)) != len(self.dynamic_convs):
                raise ValueError(f"dynamic_convs has repeated indices: {self.dynamic_convs}")
        check_pad_state_fields(self, self.dynamic_conv_indices, is_plain_moe(self), "dynamic convolution")

    @property
    def dynamic_conv_indices(self) -> list[int]:
        """Indices of the dynamic convolutions (``dynamic_convs``, or every convolution but the stem)."""
        if self.dynamic_convs is None:
            return list(range(1, len(resnet_conv_specs(self))))
        return sorted(self.dynamic_convs)


__all__ = ["DynamicResNetConfig", "ConvSpec", "resnet_conv_specs"]
