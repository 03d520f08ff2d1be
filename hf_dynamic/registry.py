"""Registration of hf_dynamic with transformers and peft: the one entry point, :func:`register_all`.

Each model package under ``hf_dynamic/models/`` exposes two names:

- ``CONFIG_CLASS``: a ``PretrainedConfig`` subclass with a namespaced ``model_type``;
- ``AUTO_CLASSES``: ``{"AutoModel": ModelClass, "AutoModelForSequenceClassification": ..., ...}``.

and may expose ``PUBLIC`` (extra public names such as helper functions) and ``MODEL_CARD`` (what a saved
checkpoint's card says). Adding a model type means importing its package here and adding it to
:data:`MODEL_PACKAGES`; nothing else changes.

:func:`register_all`, called once by ``import hf_dynamic``, does all of hf_dynamic's registration:

- every model type with transformers' Auto classes (:func:`register_model`) and with :mod:`hf_dynamic.sharing`
  (which bundles a type's remote code and writes its model card, and never imports a model package itself);
- hf_dynamic's experts kernel (``"hf_dynamic_grouped_mm"``) in transformers' ``ALL_EXPERTS_FUNCTIONS``, so any
  transformers MoE model can select it;
- PEMN as a peft method, through an import hook that acts when peft is imported (nothing is imported now).
"""

import transformers

from .models import (
    boosted_early_exit,
    dms_llama,
    dynamic_resnet,
    partial_moe_bert,
    pruned_bert,
    slimmable_bert,
    slimmable_llama,
)
from .pad.experts import register_experts_implementation
from .pemn import install_peft_hook
from .sharing import register_model_type

# Imported above by name, so that tests/test_layering.py sees what the registry depends on.
_PACKAGES = (boosted_early_exit, dms_llama, dynamic_resnet, partial_moe_bert, pruned_bert, slimmable_bert,
             slimmable_llama)
MODEL_PACKAGES = [package.__name__ for package in _PACKAGES]


def register_model(config_class, auto_classes):
    """Register ``config_class`` with ``AutoConfig`` and each model class with its Auto class.

    Registration is idempotent (``exist_ok=True``), so re-importing is harmless.
    """
    model_type = config_class.model_type
    if not model_type:
        raise ValueError(f"{config_class.__name__}.model_type is empty; a namespaced model_type is required")
    transformers.AutoConfig.register(model_type, config_class, exist_ok=True)
    for auto_name, model_class in auto_classes.items():
        auto_class = getattr(transformers, auto_name, None)
        if auto_class is None:
            raise ValueError(f"unknown Auto class {auto_name!r} for {model_class.__name__}")
        auto_class.register(config_class, model_class, exist_ok=True)


def register_all():
    """Register every model type (Auto classes and sharing), our experts kernel and PEMN's peft hook (idempotent);
    return the public names of the model packages (for ``hf_dynamic.__init__``)."""
    register_experts_implementation()
    install_peft_hook()
    public = {}
    for package in _PACKAGES:
        register_model(package.CONFIG_CLASS, package.AUTO_CLASSES)
        register_model_type(package)
        public[package.CONFIG_CLASS.__name__] = package.CONFIG_CLASS
        for model_class in package.AUTO_CLASSES.values():
            public[model_class.__name__] = model_class
        public.update(getattr(package, "PUBLIC", {}))
    return public
