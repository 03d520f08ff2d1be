"""Sharing checkpoints with users who do not have hf_dynamic (docs/architecture.md, "## Sharing").

``save_pretrained`` of every hf_dynamic model type (through :class:`HubSharingMixin`, :mod:`.mixin`) writes, beside
the config and the safetensors:

- **remote code** (:mod:`.remote_code`): ``configuration_<type>.py``, ``modeling_<type>.py`` and the library
  modules they need, rewritten to import each other from the same folder, and ``auto_map`` in ``config.json``, so
  ``AutoModel*.from_pretrained(folder, trust_remote_code=True)`` loads it where only transformers is installed;
- **a model card** ``README.md`` (:mod:`.model_card`, a ``huggingface_hub.ModelCard``; only when the folder has
  none): the method, a config summary, how to load it with and without hf_dynamic, and the metrics of an
  ``eval_results.json`` in the folder.

The package imports nothing of hf_dynamic outside itself. The model types it bundles are handed to it by
:func:`hf_dynamic.registry.register_all` (:func:`.model_types.register_model_type`). Model types import
:class:`HubSharingMixin` from this package (never from its submodules): the bundle replaces the whole package by a
stand-in whose mixin does nothing.
"""

from .mixin import HubSharingMixin
from .model_card import TEMPLATE_CARD_MARK, build_model_card, model_card, write_model_card
from .model_types import register_model_type
from .remote_code import (
    BundleError,
    auto_map,
    bundled_name,
    bundled_source,
    import_closure,
    remote_code_files,
    write_remote_code,
)

__all__ = ["BundleError", "HubSharingMixin", "TEMPLATE_CARD_MARK", "auto_map", "build_model_card", "bundled_name",
           "bundled_source", "import_closure", "model_card", "register_model_type", "remote_code_files",
           "write_model_card", "write_remote_code"]
