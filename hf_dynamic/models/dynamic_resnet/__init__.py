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
# What a saved checkpoint's model card says (hf_dynamic.sharing.model_card).
MODEL_CARD = {
    "method": "DynamicResNet: a ResNet whose convolutions mix K kernels per sample (Dynamic Convolution / CondConv), "
              "optionally PAD-Net partially dynamic (a static kernel plus a small dynamic part; He et al., arXiv "
              "2211.05528)",
    "docs": "docs/pad.md",
    "fields": ("num_kernels", "routing", "dynamic_ratio", "partition_granularity", "dynamic_convs", "pad_state"),
}
