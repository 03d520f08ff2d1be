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


def test_registration_is_idempotent():
    first = registry.register_all()
    second = registry.register_all()
    assert first == second


def test_unknown_public_name_raises_attribute_error():
    try:
        hf_dynamic.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_lazy_names_resolve():
    for name in hf_dynamic._LAZY:
        assert getattr(hf_dynamic, name) is not None, name
