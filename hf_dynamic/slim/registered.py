"""What the registered slimmable model types share (``docs/slim.md``, "## Registered model types").

``slimmable_bert`` and ``slimmable_llama`` (``hf_dynamic/models/``) are the stock BERT / Llama classes with one
config field more, ``slim_width`` (the width the model runs at after construction or ``from_pretrained``), and
:class:`SlimmableModelMixin`, which

- makes the model slimmable at the end of its construction (``make_slimmable(model, reorder=False)``: the weights of
  a slimmable checkpoint are already ordered) and sets the width to ``config.slim_width``; parameter names stay the
  stock ones, so the state dict is a stock state dict whose units are ordered by importance;
- builds one from a stock model or checkpoint (:meth:`SlimmableModelMixin.from_dense`: the stock weights, ordered by
  :func:`~hf_dynamic.slim.modeling.order_by_importance_`);
- names the stock class and config a uniform width exports to (:meth:`SlimmableModelMixin.stock_counterpart`,
  used by :func:`hf_dynamic.slim.export.export_width`).

``slim_width`` is a multiplier in (0, 1] or a per-layer dict in the form :func:`~hf_dynamic.slim.modeling.set_width`
takes. ``config.json`` stores a dict's layer indices as strings (JSON keys are strings); :func:`layer_keys_to_int`
turns them back, and :func:`check_slim_width` checks the value against the config's sizes (both through
:class:`SlimWidthConfigMixin`, the configs' mixin).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..core.validation import check_choice, check_config_overrides
from .modeling import is_slimmable, make_slimmable, order_by_importance_, set_width, width_counts

__all__ = ["SLIM_WIDTH", "SlimWidthConfigMixin", "SlimmableModelMixin", "check_slim_width", "layer_keys_to_int"]

SLIM_WIDTH = "slim_width"
# Config keys that describe the checkpoint rather than the architecture: not carried from one config type to another.
_NOT_CARRIED = ("model_type", "architectures", "transformers_version", "auto_map", "_name_or_path")


def layer_keys_to_int(widths):
    """``widths`` with the decimal-string layer keys of a dict (``{"3": 0.5}``, as ``config.json`` stores them)
    turned into ints (``{3: 0.5}``); anything else unchanged (:func:`check_slim_width` then names it).
    ``ValueError`` when a layer is given twice (``{3: 0.5, "3": 0.25}``)."""
    if not isinstance(widths, Mapping):
        return widths
    out = {}
    for key, value in widths.items():
        if isinstance(key, str) and key.isdecimal() and str(int(key)) == key:
            key = int(key)
        if key in out:
            raise ValueError(f"{SLIM_WIDTH} gives layer {key!r} twice: {dict(widths)!r}")
        out[key] = value
    return out


def check_slim_width(value, num_layers: int, num_groups: int, intermediate_size: int) -> None:
    """``ValueError`` naming ``slim_width`` and the value unless ``value`` is a width of a model with
    ``num_layers`` layers of ``num_groups`` head groups (KV groups under GQA) and ``intermediate_size`` FFN channels:
    a multiplier in (0, 1] or a per-layer dict (:func:`~hf_dynamic.slim.modeling.width_counts`), keeping at least
    one unit of everything."""
    if not isinstance(value, (int, float, Mapping)) or isinstance(value, bool):
        raise ValueError(f"{SLIM_WIDTH} must be a multiplier in (0, 1] or a per-layer dict, got {value!r} "
                         f"({type(value).__name__})")
    width_counts(value, [(num_groups, intermediate_size)] * num_layers, field=SLIM_WIDTH)


class SlimWidthConfigMixin:
    """Mixin of the registered slimmable configs (before the stock config in the bases); each config declares the
    dataclass field ``slim_width: float | int | dict = 1.0`` itself (``@strict`` collects fields from dataclasses
    only). ``__post_init__`` reads string layer keys as ints (:func:`layer_keys_to_int`); ``validate_slim_width``, one
    of the class validators ``@strict`` runs when the config is built, checks the width against the config's sizes
    (:func:`check_slim_width`; the head groups are the KV heads where the config has them, else the heads)."""

    def __post_init__(self, **kwargs):
        self.slim_width = layer_keys_to_int(self.slim_width)
        super().__post_init__(**kwargs)

    def validate_slim_width(self):
        """Every width must keep at least one head group and one FFN channel of every layer."""
        groups = getattr(self, "num_key_value_heads", None) or self.num_attention_heads
        check_slim_width(self.slim_width, self.num_hidden_layers, groups, self.intermediate_size)


class SlimmableModelMixin:
    """Mixin of the registered slimmable classes (module docstring): put it after ``HubSharingMixin`` and before the
    stock ``PreTrainedModel`` in the bases; each concrete class names the stock class it extends in
    ``stock_class``."""

    stock_class: type = None

    def post_init(self):
        """``PreTrainedModel.post_init`` (weight init, tied weights), then ``make_slimmable(self, reorder=False)``
        and the width ``config.slim_width``. A stock class's ``__init__`` ends with ``post_init()``; only the
        top-level class is ours (its inner stock model's ``post_init`` is the stock one), so this runs once."""
        super().post_init()
        if not is_slimmable(self):
            make_slimmable(self, reorder=False)
            set_width(self, layer_keys_to_int(getattr(self.config, SLIM_WIDTH)))

    def stock_counterpart(self):
        """``(stock class, stock config)``: the class this one extends and a copy of the config as that class's
        config (without ``slim_width``); what a uniform width exports to (:func:`hf_dynamic.slim.export_width`)."""
        values = self.config.to_dict()
        for key in (*_NOT_CARRIED, SLIM_WIDTH):
            values.pop(key, None)
        config = self.stock_class.config_class.from_dict(values)
        config.architectures = [self.stock_class.__name__]
        return self.stock_class, config

    @classmethod
    def from_dense(cls, dense_model_or_path, importance: str = "magnitude", calibration_batches=None,
                   **config_overrides):
        """This slimmable class around a stock model's weights (``docs/slim.md``, "## Registered model types").

        ``dense_model_or_path``: an instance of :attr:`stock_class` (e.g. ``BertForSequenceClassification`` for
        ``SlimmableBertForSequenceClassification``), which is left unchanged, or a checkpoint folder / Hub id of that
        architecture (loaded with ``stock_class.from_pretrained``). Its weights are copied, then every layer's FFN
        channels and head groups are ordered by ``importance`` (``"magnitude"``, or ``"taylor"`` over
        ``calibration_batches``: :func:`~hf_dynamic.slim.modeling.order_by_importance_`), so every width is a
        prefix; at full width the model computes what the stock one does. A model already made slimmable
        (``slim.make_slimmable``, e.g. after ``SlimmableTrainer``) keeps its order. ``config_overrides`` set config
        fields (``slim_width``, ``num_labels``, ...). Bad arguments raise ``ValueError`` / ``TypeError`` naming them
        before anything is loaded.
        """
        check_config_overrides(cls.config_class, config_overrides, f"{cls.__name__}.from_dense")
        check_choice("importance", importance, ("magnitude", "taylor"))
        stock_type = cls.stock_class.config_class.model_type
        if isinstance(dense_model_or_path, (str, os.PathLike)):
            from transformers import AutoConfig

            dense_config, dense = AutoConfig.from_pretrained(dense_model_or_path), None
            name = str(dense_model_or_path)
        elif isinstance(dense_model_or_path, cls.stock_class):
            dense = dense_model_or_path
            dense_config, name = dense.config, type(dense).__name__
        else:
            raise TypeError(f"{cls.__name__}.from_dense needs a {cls.stock_class.__name__} or a checkpoint folder, "
                            f"got {type(dense_model_or_path).__name__}")
        if dense_config.model_type == cls.config_class.model_type and dense is None:
            raise ValueError(f"{name} is a {dense_config.model_type!r} checkpoint already: load it with "
                             f"{cls.__name__}.from_pretrained (from_dense would order its trained units again)")
        if dense_config.model_type not in (stock_type, cls.config_class.model_type):
            raise ValueError(f"{cls.__name__}.from_dense needs a {stock_type!r} model; {name} has model_type "
                             f"{dense_config.model_type!r} (slim.make_slimmable works on other families in place)")
        ordered = dense is not None and is_slimmable(dense)
        if ordered and (importance != "magnitude" or calibration_batches is not None):
            raise ValueError(f"{name} is slimmable already, its units are ordered: importance={importance!r} and "
                             "calibration_batches would not be used")
        if importance == "taylor" and calibration_batches is None:
            raise ValueError("importance='taylor' needs calibration_batches (model inputs with labels)")
        values = dense_config.to_dict()
        for key in _NOT_CARRIED:
            values.pop(key, None)
        config = cls.config_class(**{**values, **config_overrides})  # checks slim_width before any loading
        if dense is None:
            stock_overrides = {k: v for k, v in config_overrides.items() if k != SLIM_WIDTH}
            dense = cls.stock_class.from_pretrained(dense_model_or_path, **stock_overrides)
        reference = next(dense.parameters())
        model = cls(config).to(device=reference.device, dtype=reference.dtype).train(dense.training)
        model.load_state_dict(dense.state_dict(), strict=True)
        if not ordered:
            order_by_importance_(model, importance, calibration_batches)
        return model
