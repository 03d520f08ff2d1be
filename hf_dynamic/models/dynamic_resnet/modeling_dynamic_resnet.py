"""DynamicResNet: transformers' ResNet with (partially) dynamic convolutions (``docs/pad.md``, "## Partially dynamic
convolution").

The model classes subclass their transformers ResNet counterparts and call their ``__init__``; then the convolutions
named by ``config.dynamic_convs`` (every one but the stem by default) are replaced: a fully dynamic network
(``dynamic_ratio = 1``) gets :class:`~hf_dynamic.pad.conv.DynamicConv2d` (Dynamic Convolution or CondConv), a
partially dynamic one gets :class:`~hf_dynamic.pad.conv.PartialDynamicConv2d`, whose masks Iterative Mode Partition
(:mod:`hf_dynamic.pad.imp`) sets. Everything else (batch norms, shortcuts, pooling, the head, the loss) is
transformers' ResNet, with the same parameter names, so ``from_static`` copies a trained ResNet into it.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from transformers import initialization as init
from transformers.models.resnet.modeling_resnet import (
    ResNetForImageClassification,
    ResNetModel,
    ResNetPreTrainedModel,
)
from transformers.utils import logging

from ...core.checkpoints import checkpoint_tensor_shapes
from ...core.validation import check_config_overrides
from ...pad.checks import CheckedCheckpointMixin, check_layer_against_config
from ...pad.conv import DynamicConv2d, PartialDynamicConv2d
from ...pad.partial import is_plain_moe, own_tensor_shapes
from ...sharing import HubSharingMixin
from .configuration_dynamic_resnet import ConvSpec, DynamicResNetConfig, resnet_conv_specs

logger = logging.get_logger(__name__)

_STATIC_CONFIG_KEYS = ("model_type", "architectures", "transformers_version", "auto_map", "_name_or_path")


def build_dynamic_conv(config: DynamicResNetConfig, spec: ConvSpec) -> DynamicConv2d:
    """The dynamic convolution ``config`` implies at the convolution ``spec`` (no bias, as ResNet's)."""
    common = dict(stride=spec.stride, padding=spec.kernel_size // 2, bias=False, num_kernels=config.num_kernels,
                  routing=config.routing, reduction=config.attention_reduction, temperature=config.temperature,
                  layer_idx=spec.index)
    if is_plain_moe(config):  # fully dynamic: Dynamic Convolution / CondConv
        return DynamicConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, **common)
    finalized = config.pad_state == "finalized"
    return PartialDynamicConv2d(
        spec.in_channels, spec.out_channels, spec.kernel_size, granularity=config.partition_granularity,
        layout="finalized" if finalized else "masked",
        partition_counts=config.pad_partition[str(spec.index)] if finalized else None, config=config, **common)


def make_convs_dynamic_(resnet: ResNetModel, config: DynamicResNetConfig) -> None:
    """Replace the dynamic convolutions of a transformers ``ResNetModel`` built from ``config`` in place.

    Raises RuntimeError when the model's convolutions are not those :func:`resnet_conv_specs` predicts (a
    transformers change to ResNet's structure breaks here, loudly).
    """
    found = [(name, module) for name, module in resnet.named_modules() if isinstance(module, nn.Conv2d)]
    specs = resnet_conv_specs(config)
    predicted = [(s.path, s.in_channels, s.out_channels, s.kernel_size, s.stride) for s in specs]
    actual = [(name, m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for name, m in found]
    if predicted != actual:
        raise RuntimeError(f"transformers' ResNet has convolutions {actual}, DynamicResNet expects {predicted}")
    for index in config.dynamic_conv_indices:
        spec = specs[index]
        parent_path, _, name = spec.path.rpartition(".")
        setattr(resnet.get_submodule(parent_path), name, build_dynamic_conv(config, spec))


class DynamicResNetPreTrainedModel(HubSharingMixin, CheckedCheckpointMixin, ResNetPreTrainedModel):
    config: DynamicResNetConfig
    config_class = DynamicResNetConfig
    base_model_prefix = "resnet"

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DynamicConv2d):
            # Kaiming normal, fan-out mode, per kernel (as ResNet initialises its convolutions).
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            for name, param in module.named_parameters(recurse=False):
                if name == "phi" or name.endswith("bias"):
                    init.zeros_(param)
                else:
                    init.normal_(param, mean=0.0, std=math.sqrt(2.0 / fan_out))
            if isinstance(module, PartialDynamicConv2d) and module.layout == "masked":
                for buffer in module.buffers(recurse=False):
                    init.copy_(buffer, torch.ones_like(buffer))

    # --------------------------------------------------------------------------------------------- PAD helpers
    def dynamic_convs(self) -> list[DynamicConv2d]:
        """The model's dynamic convolutions, in depth order."""
        return [m for m in self.modules() if isinstance(m, DynamicConv2d)]

    def check_pad_shapes(self) -> None:
        """Raise ValueError when a dynamic convolution's tensors or mask counts disagree with its config."""
        specs = resnet_conv_specs(self.config)
        for layer in self.dynamic_convs():
            if not isinstance(layer, PartialDynamicConv2d):
                continue
            check_layer_against_config(layer, _expected_conv_shapes(self.config, specs[layer.layer_idx]),
                                       self.config, "convolution")

    @staticmethod
    def check_checkpoint_shapes(folder, config) -> None:
        """The pre-load check of :class:`~hf_dynamic.pad.checks.CheckedCheckpointMixin` (safetensors headers only)."""
        _check_checkpoint_shapes(folder, config)

    # --------------------------------------------------------------------------------------------- upcycling
    @classmethod
    def from_static(cls, model_or_path, **config_overrides):
        """Upcycle a static transformers ResNet (a model or a checkpoint folder with ``model_type "resnet"``).

        Every kernel of a dynamic convolution (and, partially dynamic, its static weight) starts as a copy of the
        static convolution's weight; every other weight (batch norms with their running statistics, a matching
        head) is copied; the attention is new. ``config_overrides`` set any config field (``num_kernels``,
        ``dynamic_ratio``, ``num_labels``...). With softmax routing the model then computes what the static one
        computes (up to float rounding), whatever the attention; CondConv's sigmoid weights do not sum to 1, so a
        sigmoid-routed conversion does not (a warning says so). A keyword that is not a config field is a
        TypeError, before anything is loaded.
        """
        check_config_overrides(cls.config_class, config_overrides, f"{cls.__name__}.from_static")
        static = model_or_path
        if not isinstance(static, nn.Module):
            from transformers import AutoConfig

            static_config = AutoConfig.from_pretrained(model_or_path)
            if static_config.model_type != "resnet":
                raise ValueError(f"from_static needs a ResNet checkpoint (model_type 'resnet'); {model_or_path} has "
                                 f"model_type {static_config.model_type!r}")
            static = ResNetForImageClassification.from_pretrained(model_or_path)
        model_type = getattr(getattr(static, "config", None), "model_type", None)
        if not isinstance(static, (ResNetModel, ResNetForImageClassification)) or model_type != "resnet":
            raise ValueError(f"from_static needs a transformers ResNetModel or ResNetForImageClassification "
                             f"(model_type 'resnet'), got {type(static).__name__} with model_type {model_type!r}")
        values = {k: v for k, v in static.config.to_dict().items() if k not in _STATIC_CONFIG_KEYS}
        values.update(config_overrides)
        config = DynamicResNetConfig(**values)
        if config.pad_state != "unpartitioned":
            raise ValueError(f"from_static builds an unpartitioned model, got pad_state={config.pad_state!r}")
        if config.routing == "sigmoid":
            logger.warning("from_static with routing='sigmoid': CondConv's routing weights do not sum to 1, so the "
                           "converted model does not compute what the static one does")
        model = cls(config)
        model.load_static_(static)
        return model

    @torch.no_grad()
    def load_static_(self, static: nn.Module) -> None:
        """Copy a static ResNet's weights into this unpartitioned model (kernels and static weights as copies)."""
        theirs = static.state_dict()
        if isinstance(static, ResNetModel) and not isinstance(self, ResNetModel):
            theirs = {f"{self.base_model_prefix}.{k}": v for k, v in theirs.items()}
        elif isinstance(self, ResNetModel) and not isinstance(static, ResNetModel):
            prefix = f"{static.base_model_prefix}."
            theirs = {k[len(prefix):]: v for k, v in theirs.items() if k.startswith(prefix)}
        own = self.state_dict()
        convs = {name: module for name, module in self.named_modules() if isinstance(module, DynamicConv2d)}
        unused = []
        for key, value in theirs.items():
            module_name, _, leaf = key.rpartition(".")
            if module_name in convs and leaf == "weight":
                convs[module_name].load_static_(value)
            elif key in own and own[key].shape == value.shape:
                own[key].copy_(value)
            elif not key.startswith("classifier."):  # a head of another size stays new
                unused.append(f"{key} {tuple(value.shape)}")
        if unused:
            raise ValueError(f"the static model has weights this model cannot take: {unused[:5]}")


def _expected_conv_shapes(config, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
    """The shapes of the dynamic convolution ``config`` builds at ``spec`` (built on the meta device)."""
    with torch.device("meta"):
        layer = build_dynamic_conv(config, spec)
    return own_tensor_shapes(layer)


def _check_checkpoint_shapes(folder, config) -> None:
    """Compare the dynamic convolutions' tensor shapes in a folder's safetensors files with those ``config``
    implies (before anything is loaded)."""
    specs = {spec.path: spec for spec in resnet_conv_specs(config)}
    dynamic = set(config.dynamic_conv_indices)
    pattern = re.compile(r"^(?:resnet\.)?(.+\.convolution)\.(\w+)$")
    expected_by_path = {}
    for key, (match, shape) in checkpoint_tensor_shapes(folder, pattern).items():
        path, name = match.group(1), match.group(2)
        spec = specs.get(path)
        if spec is None:
            continue
        if spec.index not in dynamic:
            expected = {"weight": (spec.out_channels, spec.in_channels, spec.kernel_size, spec.kernel_size)}
        else:
            if path not in expected_by_path:
                expected_by_path[path] = _expected_conv_shapes(config, spec)
            expected = expected_by_path[path]
        if expected.get(name) != shape:
            raise ValueError(
                f"checkpoint tensor {key} has shape {shape}, but the config (dynamic_convs={config.dynamic_convs}, "
                f"num_kernels={config.num_kernels}, dynamic_ratio={config.dynamic_ratio}, pad_state="
                f"{config.pad_state!r}, pad_partition[{str(spec.index)!r}]="
                f"{(config.pad_partition or {}).get(str(spec.index))!r}) implies {expected.get(name)}")


class DynamicResNetModel(DynamicResNetPreTrainedModel, ResNetModel):
    """transformers' ``ResNetModel`` with dynamic convolutions (features and pooled output)."""

    def __init__(self, config: DynamicResNetConfig):
        super().__init__(config)
        make_convs_dynamic_(self, config)
        self.post_init()


class DynamicResNetForImageClassification(DynamicResNetPreTrainedModel, ResNetForImageClassification):
    """transformers' ``ResNetForImageClassification`` with dynamic convolutions (``pixel_values``, ``labels``)."""

    def __init__(self, config: DynamicResNetConfig):
        super().__init__(config)
        make_convs_dynamic_(self.resnet, config)
        self.post_init()


__all__ = ["DynamicResNetPreTrainedModel", "DynamicResNetModel", "DynamicResNetForImageClassification",
           "build_dynamic_conv", "make_convs_dynamic_"]
