"""Boosted early-exit encoders (BoostNet, docs/boost.md): registration entry for :mod:`hf_dynamic.registry`."""

from .configuration_boosted_early_exit import BoostedEarlyExitConfig
from .modeling_boosted_early_exit import (
    BoostedEarlyExitForSequenceClassification,
    BoostedEarlyExitOutput,
    BoostedEarlyExitPreTrainedModel,
)

CONFIG_CLASS = BoostedEarlyExitConfig
AUTO_CLASSES = {"AutoModelForSequenceClassification": BoostedEarlyExitForSequenceClassification}
PUBLIC = {"BoostedEarlyExitOutput": BoostedEarlyExitOutput}
# What a saved checkpoint's model card says (hf_dynamic.sharing.model_card).
MODEL_CARD = {
    "method": "Boosted early exits (BoostNet; Yu et al., arXiv 2211.16726): gradient-boosted exit heads on an encoder; "
              "in eval mode with exit thresholds set, each sample leaves at its first confident exit",
    "docs": "docs/boost.md",
    "fields": ("exit_layers", "boosting", "ensemble_temperature", "exit_criterion", "exit_thresholds", "exit_patience",
               "exit_pooling"),
}

__all__ = [
    "AUTO_CLASSES",
    "CONFIG_CLASS",
    "PUBLIC",
    "BoostedEarlyExitConfig",
    "BoostedEarlyExitForSequenceClassification",
    "BoostedEarlyExitOutput",
    "BoostedEarlyExitPreTrainedModel",
]
