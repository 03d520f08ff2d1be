"""The common model tester: every model type hf_dynamic registers behaves like a transformers model.

Parametrised over :data:`hf_dynamic.registry.MODEL_PACKAGES` (each package exposes ``CONFIG_CLASS`` and
``AUTO_CLASSES``) and the tiny cases of :data:`CASES`. Per case:

- the config survives ``to_dict``/``from_dict`` and ``save_pretrained``/``from_pretrained`` (and ``AutoConfig``);
- every Auto class of the package builds exactly the registered class from the config;
- ``save_pretrained`` (safetensors) then the Auto class's ``from_pretrained`` gives an equal state dict and equal
  outputs, for every Auto class;
- two ``Trainer`` steps on a tiny random batch: finite loss, and every parameter that receives a gradient changes;
- a bad config value raises ``ValueError`` naming the field.

A registered model type without an entry in :data:`CASES` fails :func:`test_every_registered_type_has_cases`: a new
model type adds its tiny config and inputs here. Only public API is used (config constructors, Auto classes).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
import transformers
from transformers import AutoConfig, BertConfig, Trainer, TrainingArguments

import hf_dynamic  # noqa: F401  (registers the model types)
from hf_dynamic.registry import MODEL_PACKAGES

VOCAB = 64
BATCH, LENGTH = 4, 10


# ------------------------------------------------------------------------------------------------------ inputs
def encoder_inputs(num_labels: int = 2, seed: int = 0) -> dict:
    """A BERT-style batch: right padding of varying length, two segments, class labels."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (BATCH, LENGTH), generator=g)
    attention_mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    for i in range(BATCH):
        if i % 3:
            attention_mask[i, -i:] = 0
            input_ids[i, -i:] = 0
    token_type_ids = torch.zeros(BATCH, LENGTH, dtype=torch.long)
    token_type_ids[:, LENGTH // 2:] = 1
    labels = torch.arange(BATCH) % num_labels
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            "labels": labels}


def causal_lm_inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=g)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


# ------------------------------------------------------------------------------------------------------- cases
def tiny_bert_kwargs() -> dict:
    return dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_resnet_kwargs() -> dict:
    return dict(num_channels=1, embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1], layer_type="basic",
                num_labels=3)


def image_inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(BATCH, 1, 12, 12, generator=g), "labels": torch.arange(BATCH) % 3}


@dataclass
class Case:
    """One tiny configuration of a model type.

    config_kwargs: fresh keyword arguments of ``CONFIG_CLASS`` (a function, so every test gets its own objects);
    train_head: the Auto class trained under ``Trainer``; inputs: a batch with labels for that head;
    bad: ``(field, value)`` that the config must reject with a ``ValueError`` naming ``field``.
    """

    id: str
    config_kwargs: Callable[[], dict]
    train_head: str
    inputs: Callable[[], dict]
    bad: tuple
    labels_keys: tuple = field(default=("labels",))


CASES: dict[str, list[Case]] = {
    "partial_moe_bert": [
        Case(
            "kappa0.5",
            lambda: dict(**tiny_bert_kwargs(), num_labels=2, num_experts=4, num_experts_per_tok=2, dynamic_ratio=0.5),
            "AutoModelForSequenceClassification", encoder_inputs, ("dynamic_ratio", 1.5),
        ),
        Case(
            "kappa1.0",
            lambda: dict(**tiny_bert_kwargs(), num_labels=2, num_experts=4, num_experts_per_tok=2, dynamic_ratio=1.0),
            "AutoModelForSequenceClassification", encoder_inputs, ("num_experts_per_tok", 5),
        ),
    ],
    "boosted_early_exit": [
        Case(
            "bert",
            lambda: dict(backbone=BertConfig(**tiny_bert_kwargs()), num_labels=2, classifier_dropout=0.0),
            "AutoModelForSequenceClassification", encoder_inputs, ("ensemble_temperature", 0.0),
        ),
    ],
    "dynamic_resnet": [
        Case(
            "dyconv",
            lambda: dict(**tiny_resnet_kwargs(), num_kernels=3),
            "AutoModelForImageClassification", image_inputs, ("num_kernels", 0),
        ),
        Case(
            "pad_filter",
            lambda: dict(**tiny_resnet_kwargs(), num_kernels=2, routing="sigmoid", dynamic_ratio=0.5,
                         partition_granularity="filter"),
            "AutoModelForImageClassification", image_inputs, ("dynamic_convs", [99]),
        ),
    ],
    "dms_llama": [
        Case(
            "per_layer",
            lambda: dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                         tie_word_embeddings=True, layer_num_attention_heads=[4, 2, 4],
                         layer_num_key_value_heads=[2, 1, 2], layer_intermediate_sizes=[48, 16, 0]),
            "AutoModelForCausalLM", causal_lm_inputs, ("layer_intermediate_sizes", [4]),
        ),
    ],
    "pruned_bert": [
        Case(
            "per_layer",  # layer 0 keeps 1 of 2 heads and 8 of 24 FFN channels, layer 1 its full widths
            lambda: dict(**tiny_bert_kwargs(), num_labels=2, layer_num_attention_heads=[1, 2],
                         layer_intermediate_sizes=[8, 24]),
            "AutoModelForSequenceClassification", encoder_inputs, ("layer_num_attention_heads", [1, 0]),
        ),
    ],
    "slimmable_bert": [
        Case(
            "per_layer",  # layer 1 at half its heads and a quarter of its FFN channels
            lambda: dict(**tiny_bert_kwargs(), num_labels=2, slim_width={1: {"attention": 0.5, "mlp": 0.25}}),
            "AutoModelForSequenceClassification", encoder_inputs, ("slim_width", 0.2),
        ),
    ],
    "slimmable_llama": [
        Case(
            "half",  # 1 of 2 KV groups and 24 of 48 channels in every layer
            lambda: dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                         tie_word_embeddings=True, slim_width=0.5),
            "AutoModelForCausalLM", causal_lm_inputs, ("slim_width", {"2": 0.5}),
        ),
    ],
}


def registered_packages() -> dict:
    """model_type -> package, for every registered model package."""
    out = {}
    for path in MODEL_PACKAGES:
        package = importlib.import_module(path)
        out[package.CONFIG_CLASS.model_type] = package
    return out


PACKAGES = registered_packages()
PARAMS = [pytest.param(model_type, case, id=f"{model_type}-{case.id}")
          for model_type in sorted(PACKAGES) for case in CASES.get(model_type, [])]


@pytest.mark.parametrize("model_type", sorted(PACKAGES))
def test_every_registered_type_has_cases(model_type):
    assert CASES.get(model_type), (
        f"model type {model_type!r} is registered but has no tiny case in tests/models/test_common.py CASES; "
        "add one (config kwargs, trained head, inputs, a bad config value)")


def test_cases_name_registered_types_and_heads():
    assert set(CASES) <= set(PACKAGES), f"CASES has unregistered model types: {set(CASES) - set(PACKAGES)}"
    for model_type, cases in CASES.items():
        for case in cases:
            assert case.train_head in PACKAGES[model_type].AUTO_CLASSES, (model_type, case.id, case.train_head)


# ------------------------------------------------------------------------------------------------------ helpers
def make_config(model_type, case, **overrides):
    return PACKAGES[model_type].CONFIG_CLASS(**{**case.config_kwargs(), **overrides})


def without_labels(batch: dict, case: Case) -> dict:
    return {k: v for k, v in batch.items() if k not in case.labels_keys}


def output_tensors(output, prefix="") -> dict:
    """Every tensor in a model output (ModelOutput fields, nested tuples), by a stable name."""
    items = output.items() if hasattr(output, "items") else enumerate(output)
    found = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if torch.is_tensor(value):
            found[name] = value
        elif isinstance(value, (tuple, list)):
            found.update(output_tensors(value, prefix=name + "."))
    return found


def value_errors(exc: BaseException):
    """``exc`` and its causes / contexts that are ``ValueError``s (huggingface_hub's strict-dataclass validators,
    which transformers' own configs use, wrap the validator's ``ValueError``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ValueError):
            yield exc
        exc = exc.__cause__ or exc.__context__


# -------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("model_type,case", PARAMS)
def test_config_round_trips(model_type, case, tmp_path):
    config_class = PACKAGES[model_type].CONFIG_CLASS
    config = make_config(model_type, case)
    assert type(config) is config_class and config.model_type == model_type
    as_dict = config.to_dict()
    again = config_class.from_dict(as_dict)
    assert type(again) is config_class
    assert again.to_dict() == as_dict

    config.save_pretrained(tmp_path)
    loaded = config_class.from_pretrained(tmp_path)
    auto = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is config_class and type(auto) is config_class
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert auto.to_diff_dict() == config.to_diff_dict()


@pytest.mark.parametrize("model_type,case", PARAMS)
def test_auto_classes_resolve_the_config(model_type, case):
    package = PACKAGES[model_type]
    config = make_config(model_type, case)
    assert type(AutoConfig.for_model(model_type)) is package.CONFIG_CLASS
    for auto_name, model_class in package.AUTO_CLASSES.items():
        auto_class = getattr(transformers, auto_name)
        torch.manual_seed(0)
        model = auto_class.from_config(config)
        assert type(model) is model_class, f"{auto_name}.from_config gave {type(model).__name__}"
        assert type(model.config) is package.CONFIG_CLASS


@pytest.mark.parametrize("model_type,case", PARAMS)
def test_save_pretrained_from_pretrained_is_exact(model_type, case, tmp_path):
    package = PACKAGES[model_type]
    batch = without_labels(case.inputs(), case)
    for auto_name, model_class in package.AUTO_CLASSES.items():
        torch.manual_seed(0)
        model = model_class(make_config(model_type, case)).eval()
        folder = tmp_path / auto_name
        model.save_pretrained(folder)
        assert (folder / "model.safetensors").is_file(), sorted(p.name for p in folder.iterdir())
        loaded = getattr(transformers, auto_name).from_pretrained(folder).eval()
        assert type(loaded) is model_class

        expected, actual = model.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys()
        for key in expected:
            assert expected[key].dtype == actual[key].dtype, key
            assert torch.equal(expected[key], actual[key]), f"{auto_name}: {key} differs after loading"

        with torch.no_grad():
            out_expected, out_actual = output_tensors(model(**batch)), output_tensors(loaded(**batch))
        assert out_expected and out_expected.keys() == out_actual.keys()
        for key in out_expected:
            torch.testing.assert_close(out_actual[key], out_expected[key], rtol=0, atol=0, msg=f"{auto_name}.{key}")


@pytest.mark.parametrize("model_type,case", PARAMS)
def test_two_trainer_steps_finite_loss_parameters_change(model_type, case, tmp_path):
    model_class = PACKAGES[model_type].AUTO_CLASSES[case.train_head]
    torch.manual_seed(0)
    model = model_class(make_config(model_type, case))
    batch = case.inputs()

    # Which parameters a step on this batch moves: those with a nonzero gradient.
    model.train()
    model(**batch).loss.backward()
    moved = {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    model.zero_grad(set_to_none=True)
    assert moved, "no parameter receives a gradient"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    dataset = [{k: v[i] for k, v in batch.items()} for i in range(BATCH)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=BATCH, max_steps=2,
                             learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), trainer.state.log_history
    after = dict(model.named_parameters())
    unchanged = sorted(n for n in moved if torch.equal(before[n], after[n].detach()))
    assert not unchanged, f"parameters with a gradient did not change: {unchanged}"


@pytest.mark.parametrize("model_type,case", PARAMS)
def test_bad_config_value_raises_value_error_naming_the_field(model_type, case):
    name, value = case.bad
    with pytest.raises(Exception) as info:
        make_config(model_type, case, **{name: value})
    errors = list(value_errors(info.value))
    assert errors, f"{name}={value!r} raised {type(info.value).__name__}, not a ValueError: {info.value}"
    assert any(name in str(e) for e in errors), f"the ValueError does not name {name!r}: {errors}"


TEXT_PARAMS = [p for p in PARAMS if "input_ids" in p.values[1].inputs()]


@pytest.mark.parametrize("model_type,case", TEXT_PARAMS)
def test_resize_token_embeddings_then_save_and_load_is_exact(model_type, case, tmp_path):
    """Adding tokens and resizing is an everyday step: the config that is saved must describe the new vocabulary,
    so the folder reloads with the same weights and outputs."""
    model_class = PACKAGES[model_type].AUTO_CLASSES[case.train_head]
    torch.manual_seed(0)
    model = model_class(make_config(model_type, case)).eval()
    model.resize_token_embeddings(VOCAB + 7)
    assert model.get_input_embeddings().weight.shape[0] == VOCAB + 7
    assert model.config.get_text_config().vocab_size == VOCAB + 7
    model.save_pretrained(tmp_path)
    loaded = getattr(transformers, case.train_head).from_pretrained(tmp_path).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    batch = without_labels(case.inputs(), case)
    batch["input_ids"] = batch["input_ids"].clone()
    batch["input_ids"][:, 1] = VOCAB + 3  # a new token
    with torch.no_grad():
        expected, actual = output_tensors(model(**batch)), output_tensors(loaded(**batch))
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("model_type,case", TEXT_PARAMS)
def test_output_hidden_states_are_returned(model_type, case):
    """Every transformers model accepts ``output_hidden_states``: embeddings + one entry per layer."""
    model_class = PACKAGES[model_type].AUTO_CLASSES[case.train_head]
    torch.manual_seed(0)
    config = make_config(model_type, case)
    model = model_class(config).eval()
    batch = without_labels(case.inputs(), case)
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True)
    hidden = output.hidden_states
    layers = config.get_text_config().num_hidden_layers
    assert hidden is not None and len(hidden) == layers + 1
    for state in hidden:
        assert state.shape[:2] == batch["input_ids"].shape and torch.isfinite(state).all()
