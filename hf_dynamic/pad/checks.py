"""Consistency checks of PAD state shared by every model that composes partially dynamic layers (``docs/pad.md``,
"## Layouts"): a config's ``pad_state`` / ``pad_partition`` fields, and a built layer's tensors against them."""

from __future__ import annotations

import os


def check_pad_state_fields(config, layer_indices, fully_dynamic: bool, unit: str) -> None:
    """``ValueError`` unless ``config.pad_state`` / ``config.pad_partition`` agree: a fully dynamic model
    (``dynamic_ratio = 1``) is unpartitioned, and a finalised one records one count entry per partially dynamic
    layer (keys: the indices in ``layer_indices`` as strings). ``unit`` names the layers in the message."""
    if fully_dynamic and config.pad_state != "unpartitioned":
        raise ValueError(f"pad_state must be 'unpartitioned' for dynamic_ratio=1.0 (every entry dynamic), got "
                         f"{config.pad_state!r}")
    if config.pad_state == "finalized":
        if not isinstance(config.pad_partition, dict):
            raise ValueError(f"pad_partition must record the counts of every {unit} of a finalized model, got "
                             f"{config.pad_partition!r}")
        expected = {str(i) for i in layer_indices}
        if set(config.pad_partition) != expected:
            raise ValueError(f"pad_partition must have one entry per {unit} {sorted(expected)}, got keys "
                             f"{sorted(config.pad_partition)}")


def check_layer_against_config(layer, expected_shapes: dict, config, unit: str = "layer") -> None:
    """``ValueError`` (naming the ``unit``, its index, the tensor and both shapes) when a partially dynamic layer's
    own tensors do not have ``expected_shapes`` (what ``config`` implies), or when a finalised layer's masks keep
    other counts than ``config.pad_partition`` records."""
    actual = layer.expected_shapes()
    entry = (config.pad_partition or {}).get(str(layer.layer_idx))
    for name, shape in expected_shapes.items():
        if actual.get(name) != shape:
            raise ValueError(
                f"{unit} {layer.layer_idx} tensor {name!r} has shape {actual.get(name)}, but the config "
                f"(pad_state={config.pad_state!r}, pad_partition entry {entry!r}) implies {shape}")
    if layer.layout == "finalized":
        for part, count in layer.partition_counts().items():
            if count != entry.get(part):
                raise ValueError(f"{unit} {layer.layer_idx} mask {part!r} keeps {count} entries, but pad_partition "
                                 f"records {entry.get(part)}")


class CheckedCheckpointMixin:
    """``from_pretrained`` that refuses a local checkpoint whose partially dynamic tensors disagree with its config
    *before* loading (``check_checkpoint_shapes(folder, config)``, reading only the safetensors headers) and checks
    the built layers after it (``check_pad_shapes()``). Put it before the ``PreTrainedModel`` base; the model class
    provides both checks."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, plus a ValueError (naming the tensor, its shape and the config entry)
        when a local checkpoint's partially dynamic tensors disagree with the shapes its config implies."""
        if pretrained_model_name_or_path is not None and os.path.isdir(pretrained_model_name_or_path):
            config = kwargs.get("config")
            if not isinstance(config, cls.config_class):
                config = cls.config_class.from_pretrained(pretrained_model_name_or_path)
            cls.check_checkpoint_shapes(pretrained_model_name_or_path, config)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        (model[0] if isinstance(model, tuple) else model).check_pad_shapes()  # a tuple: output_loading_info=True
        return model
