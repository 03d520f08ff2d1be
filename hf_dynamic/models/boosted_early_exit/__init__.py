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

__all__ = [
    "AUTO_CLASSES",
    "CONFIG_CLASS",
    "PUBLIC",
    "BoostedEarlyExitConfig",
    "BoostedEarlyExitForSequenceClassification",
    "BoostedEarlyExitOutput",
    "BoostedEarlyExitPreTrainedModel",
]
