"""Lazy public names for a package (PEP 562), so importing it stays cheap (docs/core.md)."""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, lazy: dict[str, str], namespace: dict):
    """``(__getattr__, __dir__)`` for ``package``: a name of ``lazy`` (name → the module defining it) is imported on
    first access and cached in ``namespace`` (the package's ``globals()``); any other name is an AttributeError."""

    def __getattr__(name):
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(lazy))

    return __getattr__, __dir__
