"""Bad input: clear ValueErrors naming the field and value (config, targets, mask files, recipes)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_dynamic

TARGETS = ["conv", "fc1", "fc2"]


@pytest.mark.parametrize("field,value", [
    ("sparsity", 0.0), ("sparsity", 1.0), ("sparsity", -0.2), ("sparsity", 1.5),
    ("ratio", 0.0), ("ratio", 1.01), ("ratio", -1.0),
    ("strategy", "two_layer"), ("init", "xavier"), ("seed", -1), ("init_scores", "zeros"),
])
def test_config_rejects_bad_fields_naming_field_and_value(field, value):
    with pytest.raises(ValueError, match=rf"PEMNConfig\.{field}.*{value!r}".replace("(", r"\(").replace(")", r"\)")):
        hf_dynamic.PEMNConfig(target_modules=TARGETS, **{field: value})


@pytest.mark.parametrize("field,value,message", [
    ("permute", "no", r"PEMNConfig\.permute must be a bool \(True or False\), got 'no' \(str\)"),
    ("random_bias", "yes", r"PEMNConfig\.random_bias must be a bool \(True or False\), got 'yes' \(str\)"),
    ("scale_fan", 2, r"PEMNConfig\.scale_fan must be a bool \(True or False\), got 2 \(int\)"),
    ("ratio", True, r"PEMNConfig\.ratio must be a number, got True \(bool\)"),
    ("sparsity", float("nan"), r"PEMNConfig\.sparsity must be a finite number > 0 and < 1, got nan"),
    ("seed", 1.0, r"PEMNConfig\.seed must be an integer, got 1\.0 \(float\)"),
    ("target_modules", None, r"PEMNConfig\.target_modules is required"),
    ("target_modules", [], r"PEMNConfig\.target_modules must be .* list of module names \(str\), got \[\]"),
    ("target_modules", ["fc1", 2], r"PEMNConfig\.target_modules must be .*, got \['fc1', 2\]"),
    ("exclude_modules", 3, r"PEMNConfig\.exclude_modules must be .*, got 3"),
])
def test_config_refuses_values_it_used_to_coerce_or_defer(field, value, message):
    """A truthy string acting as True, a bool as a ratio, a NaN, or no targets (peft's AttributeError later): each
    a ValueError at construction, naming the field and the value."""
    kwargs = {"target_modules": TARGETS, field: value}
    with pytest.raises(ValueError, match=message):
        hf_dynamic.PEMNConfig(**kwargs)


def test_config_without_targets_fails_at_construction_not_inside_peft():
    with pytest.raises(ValueError, match=r"^PEMNConfig\.target_modules is required"):
        hf_dynamic.PEMNConfig()


def test_targets_that_match_nothing_are_named(tiny_net):
    from peft import get_peft_model

    with pytest.raises(ValueError, match=r"target_modules=.*'fc9'.*matched no module.*\['conv', 'fc1', 'fc2'\]"):
        get_peft_model(tiny_net(), hf_dynamic.PEMNConfig(target_modules=["fc9"]))


def test_a_target_of_an_unsupported_type_is_named():
    from peft import get_peft_model

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"matches '0', a Embedding; PEMN supports Linear, Conv2d"):
        get_peft_model(model, hf_dynamic.PEMNConfig(target_modules=["0", "1"]))


@pytest.fixture
def saved(tmp_path, tiny_net):
    from peft import get_peft_model

    get_peft_model(tiny_net(), hf_dynamic.PEMNConfig(target_modules=TARGETS, sparsity=0.5)).save_pretrained(tmp_path)
    return tmp_path


def edit_tensors(path, edit):
    file = path / "adapter_model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file)


def edit_config(path, **changes):
    file = path / "adapter_config.json"
    config = json.loads(file.read_text())
    config.update(changes)
    file.write_text(json.dumps(config))


def test_a_mask_with_too_many_bytes_is_rejected_naming_the_layer(saved, tiny_net):
    from peft import PeftModel

    def grow(tensors):
        key = "base_model.model.fc1.pemn_mask"
        tensors[key] = torch.cat([tensors[key], torch.zeros(3, dtype=torch.uint8)])

    edit_tensors(saved, grow)
    with pytest.raises(ValueError, match=r"mask of layer 'fc1' has \d+ bits .* needs 4608 bits"):
        PeftModel.from_pretrained(tiny_net(), saved)


def test_a_mask_for_a_differently_shaped_layer_is_rejected(saved):
    from peft import PeftModel

    from pemn_testing import TinyNet

    base = TinyNet()
    base.fc2 = torch.nn.Linear(32, 9)  # 288 weights: 36 bytes instead of 40
    with pytest.raises(ValueError, match=r"mask of layer 'fc2' has 320 bits .* needs 288 bits"):
        PeftModel.from_pretrained(base, saved)


def test_bits_beyond_the_layer_are_rejected(saved, tiny_net):
    from peft import PeftModel

    def set_padding_bit(tensors):  # conv: 36 weights in 5 bytes, bits 36..39 are padding
        tensors["base_model.model.conv.pemn_mask"][4] |= 0b10000000

    edit_tensors(saved, set_padding_bit)
    with pytest.raises(ValueError, match=r"mask of layer 'conv' sets bits beyond the layer's 36 weights"):
        PeftModel.from_pretrained(tiny_net(), saved)



def test_a_mask_with_a_wrong_kept_count_is_rejected(saved, tiny_net):
    from peft import PeftModel

    def flip_one_bit(tensors):
        tensors["base_model.model.fc1.pemn_mask"][0] ^= 1

    edit_tensors(saved, flip_one_bit)
    message = r"mask of layer 'fc1' keeps 230[35] of 4608 weights but sparsity=0.5 keeps 2304"
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(tiny_net(), saved)


def test_a_checkpoint_with_another_recipe_is_rejected(saved, tiny_net):
    from peft import PeftModel

    edit_config(saved, seed=1)  # adapter_config.json edited: the recipe no longer matches the masks' recipe
    with pytest.raises(ValueError, match=r"another prototype recipe; .*seed: 0 vs 1"):
        PeftModel.from_pretrained(tiny_net(), saved)


def test_loading_into_a_model_built_with_another_recipe_is_rejected(saved, tiny_net):
    from peft import get_peft_model
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    model = get_peft_model(tiny_net(), hf_dynamic.PEMNConfig(target_modules=TARGETS, sparsity=0.5, strategy="rp"))
    with pytest.raises(ValueError, match=r"another prototype recipe; .*strategy: 'mp' vs 'rp'"):
        set_peft_model_state_dict(model, load_peft_weights(str(saved)))
