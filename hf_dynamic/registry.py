"""Registration of hf_dynamic's model types with transformers' Auto classes.

Each model package under ``hf_dynamic/models/`` exposes two names:

- ``CONFIG_CLASS``: a ``PretrainedConfig`` subclass with a namespaced ``model_type``;
- ``AUTO_CLASSES``: ``{"AutoModel": ModelClass, "AutoModelForSequenceClassification": ..., ...}``.

and may expose ``PUBLIC`` (extra public names such as helper functions). Adding a model type means adding its
module path to :data:`MODEL_PACKAGES`; nothing else changes.

:func:`register_all` also registers hf_dynamic's experts kernel (``"hf_dynamic_grouped_mm"``) in transformers'
``ALL_EXPERTS_FUNCTIONS``, so any transformers MoE model can select it.
"""

import importlib

import transformers

MODEL_PACKAGES = [
    "hf_dynamic.models.boosted_early_exit",
    "hf_dynamic.models.dms_llama",
    "hf_dynamic.models.dynamic_resnet",
    "hf_dynamic.models.partial_moe_bert",
]


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
    """Import every model package, register it and our experts kernel; return the public names (for
    ``hf_dynamic.__init__``)."""
    from .pad.experts import register_experts_implementation

    register_experts_implementation()
    public = {}
    for path in MODEL_PACKAGES:
        package = importlib.import_module(path)
        register_model(package.CONFIG_CLASS, package.AUTO_CLASSES)
        public[package.CONFIG_CLASS.__name__] = package.CONFIG_CLASS
        for model_class in package.AUTO_CLASSES.values():
            public[model_class.__name__] = model_class
        public.update(getattr(package, "PUBLIC", {}))
    return public
