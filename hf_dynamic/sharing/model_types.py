"""The model types :mod:`hf_dynamic.sharing` knows, handed to it by :func:`hf_dynamic.registry.register_all`.

A model type is its package under ``hf_dynamic/models/`` (``CONFIG_CLASS``, ``AUTO_CLASSES`` and an optional
``MODEL_CARD``). The sharing code never imports a model package itself: the registry, which imports them (a plain
import that the layering test sees), records each one here, and the bundler and the model card look them up by
config class. Importing any model package imports ``hf_dynamic`` first, whose registration fills this table, so a
model class in hand is always found.
"""

from __future__ import annotations

_BY_CONFIG: dict[type, object] = {}


def register_model_type(package) -> None:
    """Record the model-type ``package`` (any object with ``CONFIG_CLASS`` and ``AUTO_CLASSES``); idempotent."""
    missing = [name for name in ("CONFIG_CLASS", "AUTO_CLASSES") if not hasattr(package, name)]
    if missing:
        raise TypeError(f"{getattr(package, '__name__', package)!r} is not a model-type package: it lacks {missing}")
    _BY_CONFIG[package.CONFIG_CLASS] = package


def package_for_config(config_class: type):
    """The recorded package whose ``CONFIG_CLASS`` is ``config_class`` (``None`` if there is none)."""
    return _BY_CONFIG.get(config_class)


def package_for_model(model_class: type):
    """The recorded package that defines ``model_class`` (found through its ``config_class``; ``None`` for a class
    defined outside that package, such as a user's subclass)."""
    package = package_for_config(getattr(model_class, "config_class", None))
    if package is None or model_class.__module__.rpartition(".")[0] != package.__name__:
        return None
    return package
