"""Reading a checkpoint folder's tensor shapes without loading the tensors (docs/core.md).

Model classes use it to check, before ``from_pretrained`` loads anything, that a checkpoint's shapes agree with its
config, so a mismatch is a clear error naming the tensor rather than weights loaded onto the wrong modules.
"""

from __future__ import annotations

import glob
import os
import re

import torch


def checkpoint_tensor_shapes(folder, pattern: str | re.Pattern) -> dict[str, tuple[re.Match, tuple[int, ...]]]:
    """``{key: (match, shape)}`` for every tensor of the folder's ``*.safetensors`` files whose key matches
    ``pattern`` (``re.search``); shapes come from the file headers, no tensor is read."""
    from safetensors import safe_open

    pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
    shapes = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                match = pattern.search(key)
                if match is not None:
                    shapes[key] = (match, tuple(handle.get_slice(key).get_shape()))
    return shapes


def check_optimizer_state_shapes(optimizer, model) -> None:
    """Raise ``ValueError`` (naming the parameter, the state entry and both shapes) when ``optimizer`` holds state
    whose shape differs from its parameter's.

    ``torch.optim.Optimizer.load_state_dict`` restores state by position and checks no shapes, so a resumed
    checkpoint whose parameters were listed in another order (or had other shapes) would otherwise surface as a
    crash inside a fused optimizer step. ``model`` names the parameters in the message.
    """
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(
                        f"the optimizer state {key!r} of parameter {names.get(id(param), '<unnamed>')} has shape "
                        f"{tuple(value.shape)}, the parameter {tuple(param.shape)}: the optimizer state was saved "
                        "for another parameter order or layout (resume the checkpoint into a model of the "
                        "checkpoint's own layout, e.g. its from_pretrained)")
