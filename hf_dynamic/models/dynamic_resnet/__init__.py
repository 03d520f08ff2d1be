"""DynamicResNet: transformers' ResNet with dynamic (Dynamic Convolution, CondConv) or PAD-Net partially dynamic
convolutions (``docs/pad.md``, "## Partially dynamic convolution").

Registered with the Auto classes on ``import hf_dynamic``.
"""

from .configuration_dynamic_resnet import DynamicResNetConfig, resnet_conv_specs
from .modeling_dynamic_resnet import (
    DynamicResNetForImageClassification,
    DynamicResNetModel,
    DynamicResNetPreTrainedModel,
)

CONFIG_CLASS = DynamicResNetConfig
AUTO_CLASSES = {
    "AutoModel": DynamicResNetModel,
    "AutoModelForImageClassification": DynamicResNetForImageClassification,
}
PUBLIC = {"DynamicResNetPreTrainedModel": DynamicResNetPreTrainedModel, "resnet_conv_specs": resnet_conv_specs}
