"""The three PEMN calls without going through peft's names, and the storage formula (docs/pemn.md, "## Storage").

``get_pemn_model`` / ``save_pemn`` / ``load_pemn`` are ``peft.get_peft_model`` / ``PeftModel.save_pretrained`` /
``PeftModel.from_pretrained`` after making sure PEMN is registered (:func:`hf_dynamic.pemn.register`), for code that
imported peft in a way the import hook did not see, or that wants one obviously-PEMN entry point.
"""

from __future__ import annotations

import json
import math
import os

from ..core.masks import packed_numel
from . import register
from .config import PEMNConfig

FINGERPRINT_BYTES = 32  # SHA-256 of the untargeted base tensors (hf_dynamic.pemn.model.base_fingerprint)


def get_pemn_model(model, config: PEMNConfig, adapter_name: str = "default"):
    """``peft.get_peft_model(model, config)`` for a :class:`PEMNConfig` (the targeted layers become masked random)."""
    import peft

    if not isinstance(config, PEMNConfig):
        raise ValueError(f"config must be a PEMNConfig, got {type(config).__name__}")
    register()
    return peft.get_peft_model(model, config, adapter_name=adapter_name)


def save_pemn(model, path: str | os.PathLike) -> None:
    """``model.save_pretrained(path)``: ``adapter_config.json`` (the recipe) and the bit-packed masks."""
    register()
    model.save_pretrained(str(path))


def load_pemn(base_model, path: str | os.PathLike, is_trainable: bool = False, adapter_name: str = "default"):
    """``PeftModel.from_pretrained(base_model, path)``: regenerates the prototype from the seed, restores the masks."""
    from peft import PeftModel

    register()
    return PeftModel.from_pretrained(base_model, str(path), is_trainable=is_trainable, adapter_name=adapter_name)


def pemn_storage_bytes(shapes, config: PEMNConfig, untargeted_base: bool = False) -> int:
    """Tensor bytes of a saved PEMN adapter: ``sum(ceil(numel / 8))`` over the target layers' weight ``shapes``
    plus the recipe's JSON, plus the 32-byte fingerprint of the base's untargeted tensors when the model has any
    (``untargeted_base``: embeddings, LayerNorms, ...). The safetensors file adds its header (8 bytes + a JSON index
    of the tensors)."""
    recipe = len(json.dumps(config.recipe(), sort_keys=True).encode("utf-8"))
    fingerprint = FINGERPRINT_BYTES if untargeted_base else 0
    return sum(packed_numel(math.prod(shape)) for shape in shapes) + recipe + fingerprint
