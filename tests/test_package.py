"""The package itself: version, registration with the Auto classes, cheap import."""

import json
import subprocess
import sys

import hf_dynamic
from hf_dynamic import registry

HEAVY = ("datasets", "matplotlib", "peft", "deepspeed", "evaluate", "sklearn", "gguf")


def test_version():
    assert isinstance(hf_dynamic.__version__, str) and hf_dynamic.__version__.count(".") == 2


def test_import_does_not_pull_heavy_packages():
    code = (
        "import sys, json; import hf_dynamic; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_model_package_is_registered_with_auto_classes():
    import transformers

    for path in registry.MODEL_PACKAGES:
        package = __import__(path, fromlist=["CONFIG_CLASS"])
        config_class = package.CONFIG_CLASS
        assert transformers.AutoConfig.for_model(config_class.model_type).__class__ is config_class
        for auto_name, model_class in package.AUTO_CLASSES.items():
            auto = getattr(transformers, auto_name)
            assert auto._model_mapping[config_class] is model_class
            assert getattr(hf_dynamic, model_class.__name__) is model_class


def test_registration_is_idempotent_and_keeps_the_auto_mappings():
    import transformers

    first = registry.register_all()
    second = registry.register_all()
    assert first.keys() == second.keys()
    assert all(first[name] is second[name] for name in first)
    for path in registry.MODEL_PACKAGES:
        package = __import__(path, fromlist=["CONFIG_CLASS"])
        assert first[package.CONFIG_CLASS.__name__] is package.CONFIG_CLASS
        for auto_name, model_class in package.AUTO_CLASSES.items():
            assert first[model_class.__name__] is model_class
            assert getattr(transformers, auto_name)._model_mapping[package.CONFIG_CLASS] is model_class
        for name, value in getattr(package, "PUBLIC", {}).items():
            assert first[name] is value


def test_register_all_registers_the_experts_kernel():
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    from hf_dynamic.pad.experts import EXPERTS_IMPLEMENTATION

    registry.register_all()
    assert EXPERTS_IMPLEMENTATION == "hf_dynamic_grouped_mm"
    assert EXPERTS_IMPLEMENTATION in ALL_EXPERTS_FUNCTIONS


def test_register_model_rejects_bad_input():
    import pytest
    from transformers import PretrainedConfig, PreTrainedModel

    class NoTypeConfig(PretrainedConfig):
        model_type = ""

    class SomeConfig(PretrainedConfig):
        model_type = "hf_dynamic_test_some_type"

    class SomeModel(PreTrainedModel):
        config_class = SomeConfig

    with pytest.raises(ValueError, match="model_type is empty"):
        registry.register_model(NoTypeConfig, {})
    with pytest.raises(ValueError, match="AutoNoSuchThing"):
        registry.register_model(SomeConfig, {"AutoNoSuchThing": SomeModel})


def test_unknown_public_name_raises_attribute_error():
    try:
        hf_dynamic.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_lazy_names_resolve_to_their_modules_and_are_public():
    import importlib

    for name, module in hf_dynamic._LAZY.items():
        expected = getattr(importlib.import_module(module), name)
        assert getattr(hf_dynamic, name) is expected, name
        assert name in hf_dynamic.__all__ and name in dir(hf_dynamic), name
    for name in hf_dynamic.__all__:
        assert hasattr(hf_dynamic, name), name
