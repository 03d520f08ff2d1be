"""Reading a checkpoint folder's tensor shapes without loading the tensors (docs/core.md).

Model classes use it to check, before ``from_pretrained`` loads anything, that a checkpoint's shapes agree with its
config, so a mismatch is a clear error naming the tensor rather than weights loaded onto the wrong modules.
"""

from __future__ import annotations

import glob
import os
import re


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
