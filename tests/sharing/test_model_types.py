"""The model types hf_dynamic.sharing knows come from the registry (hf_dynamic/sharing/model_types.py)."""

import importlib
from pathlib import Path

import pytest
import transformers

import hf_dynamic
from hf_dynamic import registry, sharing
from hf_dynamic.sharing.model_types import package_for_config, package_for_model, register_model_type


@pytest.mark.parametrize("path", registry.MODEL_PACKAGES)
def test_register_all_hands_every_model_package_to_sharing(path):
    package = importlib.import_module(path)
    assert package_for_config(package.CONFIG_CLASS) is package
    for model_class in package.AUTO_CLASSES.values():
        assert package_for_model(model_class) is package
        assert sharing.auto_map(package)["AutoConfig"].endswith("." + package.CONFIG_CLASS.__name__)


def test_a_class_outside_the_model_package_is_refused_by_name(tmp_path):
    """A user's subclass shares the config class of a registered type, but its code is not in the bundle: saving it
    raises BundleError naming the class (remote code would silently load the parent class)."""
    class MyPAD(hf_dynamic.PartialMoEBertForSequenceClassification):
        pass

    config = hf_dynamic.PartialMoEBertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32, num_experts=2)
    assert package_for_model(MyPAD) is None
    with pytest.raises(sharing.BundleError, match=r"MyPAD is not a class of a registered hf_dynamic model type"):
        MyPAD(config).save_pretrained(tmp_path)


def test_register_model_type_refuses_what_is_not_a_model_package():
    with pytest.raises(TypeError, match=r"'transformers' is not a model-type package: it lacks \['CONFIG_CLASS', "
                                        r"'AUTO_CLASSES'\]"):
        register_model_type(transformers)


def test_register_all_is_the_one_entry_point():
    """The package root does nothing but call register_all for registration; register_all installs PEMN's peft hook
    (or registers PEMN, when peft is already imported)."""
    import sys

    from hf_dynamic import pemn

    source = Path(hf_dynamic.__file__).read_text(encoding="utf-8")
    assert "_register_all()" in source and "install_peft_hook" not in source and ".register(" not in source
    registry.register_all()
    hooked = any(isinstance(finder, pemn._PeftImportHook) for finder in sys.meta_path)
    if "peft" in sys.modules:
        from peft import mapping

        assert hooked or mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(pemn.PEFT_TYPE) is not None
    else:
        assert hooked
