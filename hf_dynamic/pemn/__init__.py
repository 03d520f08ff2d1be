"""PEMN: parameter-efficient masking networks (Bai et al., NeurIPS 2022) as a PEFT method (docs/pemn.md).

This package's job is registration. :func:`register` puts ``PEMNConfig`` / ``PEMNModel`` into peft's method tables
under the peft_type ``"PEMN"``, so ``peft.get_peft_model``, ``PeftModel.save_pretrained`` and
``PeftModel.from_pretrained`` handle PEMN adapters like built-in ones. ``peft.utils.register_peft_method`` cannot be
used for this: it accepts only names of the closed enum ``peft.utils.PeftType`` (it raises "Unknown PEFT type"), so
:func:`register` fills the same four public tables of ``peft.mapping`` that it fills, keyed by the string ``"PEMN"``
(``PeftType`` is a ``str`` enum and peft looks methods up by the ``peft_type`` string read from
``adapter_config.json``). Should a peft release list ``PEMN`` in ``PeftType``, ``register_peft_method`` is used.

Importing this package is cheap (neither torch nor peft): ``import hf_dynamic`` calls :func:`install_peft_hook`
(through :func:`hf_dynamic.registry.register_all`, the one registration entry point),
which registers at once if peft is already imported, else the moment peft finishes importing.
The modules themselves (config, layer, model, prototypes) import peft and torch; their public names are loaded lazily.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from ..core.lazy import lazy_attributes

_LAZY = {
    "PEMNConfig": "hf_dynamic.pemn.config",
    "PEMNModel": "hf_dynamic.pemn.model",
    "PEMNLayer": "hf_dynamic.pemn.layer",
    "edge_popup_mask": "hf_dynamic.pemn.layer",
    "keep_count": "hf_dynamic.pemn.layer",
    "build_prototype": "hf_dynamic.pemn.prototypes",
    "Prototype": "hf_dynamic.pemn.prototypes",
    "get_pemn_model": "hf_dynamic.pemn.api",
    "save_pemn": "hf_dynamic.pemn.api",
    "load_pemn": "hf_dynamic.pemn.api",
    "pemn_storage_bytes": "hf_dynamic.pemn.api",
}

PEFT_TYPE = "PEMN"


def register() -> None:
    """Make ``"PEMN"`` a peft method (idempotent). Imports peft."""
    from peft import mapping
    from peft.utils import PeftType, register_peft_method

    from .config import PEMNConfig
    from .model import PEMNModel

    current = mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(PEFT_TYPE)
    if current is PEMNConfig:
        return
    if current is not None:
        raise RuntimeError(f"peft already has a method {PEFT_TYPE!r} ({current.__module__}.{current.__qualname__})")
    if PEFT_TYPE in PeftType.__members__:
        register_peft_method(
            name=PEFT_TYPE.lower(), config_cls=PEMNConfig, model_cls=PEMNModel, prefix=PEMNModel.prefix)
        return
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = PEMNModel.prefix
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = PEMNConfig
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = PEMNModel


_pending = {"registration": False}


def _register_quietly() -> None:
    """:func:`register`, never raising: an ImportError means one of this package's modules is mid-import (its own
    import of peft fired the hook); :func:`retry_registration`, the last line of config/layer/model, finishes it."""
    try:
        register()
        _pending["registration"] = False
    except ImportError:
        _pending["registration"] = True
    except Exception as error:  # never break `import peft`
        warnings.warn(f"hf_dynamic could not register PEMN with peft: {error!r}", RuntimeWarning, stacklevel=2)


def retry_registration() -> None:
    """Finish a registration that found this package's modules mid-import (called at the end of each of them)."""
    if _pending["registration"]:
        _register_quietly()


class _RegisterAfterExec(importlib.abc.Loader):
    """Wraps peft's loader: runs peft's own module code, then :func:`register`."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _register_quietly()

    def __getattr__(self, name):  # get_source, get_resource_reader, ... of the wrapped loader
        return getattr(self.loader, name)


class _PeftImportHook(importlib.abc.MetaPathFinder):
    """One-shot finder: on the first ``import peft``, wraps its loader with :class:`_RegisterAfterExec`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "peft":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def install_peft_hook() -> None:
    """Register PEMN with peft now if peft is imported, else when it is (idempotent; imports nothing)."""
    if "peft" in sys.modules:
        _register_quietly()
    elif not any(isinstance(finder, _PeftImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PeftImportHook())


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = ["PEFT_TYPE", "install_peft_hook", "register", *sorted(_LAZY)]
