"""PEMN as a peft method: get_peft_model → train → save_pretrained → from_pretrained, bit-exact and small."""

import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import hf_dynamic
from hf_dynamic.pemn.api import pemn_storage_bytes

TARGETS = ["conv", "fc1", "fc2"]


def train_steps(model, batch, steps=5):
    x, y = batch
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def safetensors_header_bytes(path) -> int:
    with open(path, "rb") as handle:
        return 8 + struct.unpack("<Q", handle.read(8))[0]


@pytest.mark.parametrize("strategy", ["one_layer", "mp", "rp"])
def test_round_trip_on_a_fresh_base_is_bit_exact_and_stores_only_recipe_and_masks(tmp_path, tiny_net, batch, strategy):
    from peft import PeftModel, get_peft_model

    config = hf_dynamic.PEMNConfig(target_modules=TARGETS, strategy=strategy, sparsity=0.6, ratio=0.2, seed=5)
    model = train_steps(get_peft_model(tiny_net(), config), batch)
    masks = {n: model.base_model.model.get_submodule(n).pemn_mask("default") for n in TARGETS}
    model.eval()
    x, _ = batch
    expected = model(x)
    model.save_pretrained(tmp_path)

    torch.manual_seed(99)  # a differently initialised base: PEMN uses none of its weights
    loaded = PeftModel.from_pretrained(tiny_net(), tmp_path)
    assert torch.equal(loaded(x), expected)
    for name in TARGETS:
        assert torch.equal(loaded.base_model.model.get_submodule(name).pemn_mask("default"), masks[name])

    stored = load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(stored) == sorted([f"base_model.model.{n}.pemn_mask" for n in TARGETS] + ["base_model.pemn_recipe"])
    assert all(t.dtype == torch.uint8 for t in stored.values())
    shapes = [tuple(model.base_model.model.get_submodule(n).pemn_scores["default"].shape) for n in TARGETS]
    data_bytes = sum(t.numel() for t in stored.values())
    assert data_bytes == pemn_storage_bytes(shapes, config)
    path = tmp_path / "adapter_model.safetensors"
    assert os.path.getsize(path) == safetensors_header_bytes(path) + data_bytes
    saved_config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved_config["peft_type"] == "PEMN" and saved_config["strategy"] == strategy and saved_config["seed"] == 5


def test_a_realistic_layer_is_about_32x_smaller_than_fp32(tmp_path):
    from peft import get_peft_model
    from safetensors.torch import save_file

    linear = torch.nn.Linear
    base = torch.nn.Sequential(linear(784, 256, bias=False), torch.nn.ReLU(), linear(256, 10, bias=False))
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, tmp_path / "dense.safetensors")
    model = get_peft_model(base, hf_dynamic.PEMNConfig(target_modules=["0", "2"], strategy="rp"))
    model.save_pretrained(tmp_path / "pemn")
    pemn_file = tmp_path / "pemn" / "adapter_model.safetensors"
    ratio = os.path.getsize(tmp_path / "dense.safetensors") / os.path.getsize(pemn_file)
    assert 30 < ratio <= 32


def test_fresh_process_loads_through_plain_peft_after_import_hf_dynamic(tmp_path, tiny_net, batch):
    from peft import get_peft_model

    model = train_steps(get_peft_model(tiny_net(), hf_dynamic.PEMNConfig(target_modules=TARGETS, strategy="rp")), batch)
    model.eval()
    x, _ = batch
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x).detach(), tmp_path / "y.pt")
    model.save_pretrained(tmp_path / "adapter")
    code = f"""
import sys, torch
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
import hf_dynamic                      # registers PEMN now if peft is imported, else installs the import hook
from peft import PeftModel             # (the hook registers PEMN here; tests/test_package.py keeps peft lazy)
from pemn_testing import TinyNet
model = PeftModel.from_pretrained(TinyNet(), {str(tmp_path / "adapter")!r})
print(torch.equal(model(torch.load({str(tmp_path / "x.pt")!r})), torch.load({str(tmp_path / "y.pt")!r})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("first", ["import peft", "from hf_dynamic.pemn.config import PEMNConfig",
                                   "from hf_dynamic.pemn.layer import Linear", "hf_dynamic.PEMNConfig"])
def test_registration_happens_whatever_is_imported_first(first):
    code = (
        f"import hf_dynamic; {first}; import peft.mapping as m; "
        "print(m.PEFT_TYPE_TO_CONFIG_MAPPING['PEMN'].__name__, m.PEFT_TYPE_TO_TUNER_MAPPING['PEMN'].__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["PEMNConfig", "PEMNModel"]
    assert "could not register" not in out.stderr


def test_own_module_calls_match_peft(tmp_path, tiny_net, batch):
    from hf_dynamic.pemn import get_pemn_model, load_pemn, save_pemn

    model = train_steps(get_pemn_model(tiny_net(), hf_dynamic.PEMNConfig(target_modules=TARGETS)), batch)
    model.eval()
    x, _ = batch
    save_pemn(model, tmp_path)
    assert torch.equal(load_pemn(tiny_net(), tmp_path)(x), model(x))


def _tiny_bert(seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2)).eval()


def test_a_base_with_other_untargeted_weights_is_reported(tmp_path):
    """BERT's embeddings, LayerNorms and classifier are not targeted: they come from the base the adapter is loaded
    on. The adapter stores their fingerprint; on the trained base it loads quietly and exactly, on a base built with
    another seed (other logits) it says so."""
    from peft import PeftModel, get_peft_model
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    from hf_dynamic.pemn.model import FINGERPRINT_KEY

    config = hf_dynamic.PEMNConfig(target_modules=["query", "key", "value", "dense"], sparsity=0.5)
    model = get_peft_model(_tiny_bert(seed=0), config).eval()
    inputs = {"input_ids": torch.tensor([[1, 5, 7, 9, 2]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "adapter_model.safetensors")
    assert stored[FINGERPRINT_KEY].shape == (32,)
    shapes = [tuple(m.weight.shape) for n, m in model.base_model.model.named_modules()
              if n.endswith(("query", "key", "value", "dense")) and hasattr(m, "pemn_scores")]
    assert sum(t.numel() for t in stored.values()) == pemn_storage_bytes(shapes, config, untargeted_base=True)

    logger = logging.get_logger("hf_dynamic.pemn.model")
    with CaptureLogger(logger) as same:
        loaded = PeftModel.from_pretrained(_tiny_bert(seed=0), tmp_path).eval()
    assert "untargeted tensors" not in same.out
    assert torch.equal(loaded(**inputs).logits, expected)

    with CaptureLogger(logger) as other:
        loaded = PeftModel.from_pretrained(_tiny_bert(seed=1), tmp_path).eval()
    assert "base model whose untargeted tensors" in other.out and "bert.embeddings" in other.out
    assert not torch.allclose(loaded(**inputs).logits, expected)  # what the warning is about


def test_modules_to_save_are_not_part_of_the_fingerprint(tmp_path):
    """A classifier trained in full (modules_to_save) is stored in the adapter, not taken from the base: changing it
    does not make the trained base look foreign, and the reload is exact."""
    from peft import PeftModel, get_peft_model
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    config = hf_dynamic.PEMNConfig(target_modules=["query", "value"], modules_to_save=["classifier"])
    model = get_peft_model(_tiny_bert(seed=0), config).eval()
    with torch.no_grad():
        model.base_model.model.classifier.modules_to_save["default"].weight.add_(1.0)
    inputs = {"input_ids": torch.tensor([[1, 5, 7, 9, 2]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    with CaptureLogger(logging.get_logger("hf_dynamic.pemn.model")) as captured:
        loaded = PeftModel.from_pretrained(_tiny_bert(seed=0), tmp_path).eval()
    assert "untargeted tensors" not in captured.out
    assert torch.equal(loaded(**inputs).logits, expected)


def test_fingerprint_matches_only_the_same_tensors_and_skips_unmaterialised_ones():
    from hf_dynamic.pemn.model import base_fingerprint, check_base_fingerprint

    torch.manual_seed(0)
    real = torch.nn.Sequential(torch.nn.Linear(3, 2))
    stored = base_fingerprint(real)
    assert stored.dtype == torch.uint8 and stored.shape == (32,) and check_base_fingerprint(stored, real)
    other = torch.nn.Sequential(torch.nn.Linear(3, 2))
    assert not check_base_fingerprint(stored, other)  # other values (it warns)
    assert not check_base_fingerprint(stored, real.to(torch.float64))  # other dtype
    with torch.device("meta"):  # weights not materialised: nothing to compare, nothing claimed
        meta = torch.nn.Sequential(torch.nn.Linear(3, 2))
    assert base_fingerprint(meta) is None and check_base_fingerprint(stored, meta)
