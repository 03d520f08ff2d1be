"""DynamicResNet: config validation, the convolution index, upcycling ≡ static ResNet, IMP keeps exactly κ,
finalise → save → load exact and smaller, checkpoint shape checks, ONNX round trip, Trainer with IMP and the
temperature callback, Auto classes (the layer maths: tests/pad/test_pad_conv.py)."""

import json
import logging
import math
import os

import pytest
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    BertConfig,
    BertModel,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import hf_dynamic
from hf_dynamic import (
    DynamicConv2d,
    DynamicResNetConfig,
    DynamicResNetForImageClassification,
    DynamicResNetModel,
    IMPCallback,
    PartialDynamicConv2d,
    TemperatureAnnealingCallback,
    finalize_partition,
    iterative_mode_partition,
)
from hf_dynamic.models.dynamic_resnet.configuration_dynamic_resnet import resnet_conv_specs
from hf_dynamic.pad.imp import pad_layers

BASIC = dict(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="basic",
             num_labels=10)
BOTTLENECK = dict(num_channels=2, embedding_size=8, hidden_sizes=[16, 32], depths=[2, 1], layer_type="bottleneck",
                  downsample_in_bottleneck=True, num_labels=3)


def static_resnet(kwargs=BASIC, seed=0):
    torch.manual_seed(seed)
    model = ResNetForImageClassification(ResNetConfig(**kwargs))
    with torch.no_grad():  # trained-looking batch norms, so the check does not pass on identity statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def images(batch=4, channels=1, size=16, seed=1):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def batches(n=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(8, 1, 16, 16, generator=g), "labels": torch.randint(0, 10, (8,), generator=g)}
            for _ in range(n)]


def partitioned(granularity="element", ratio=0.3, **kwargs):
    model = DynamicResNetForImageClassification.from_static(
        static_resnet(), dynamic_ratio=ratio, partition_granularity=granularity, **kwargs).eval()
    iterative_mode_partition(model, batches(), num_batches=2, finalize=False)
    return model


def checkpoint_bytes(folder):
    return os.path.getsize(os.path.join(folder, "model.safetensors"))


# ----------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("field,value,match", [
    ("num_kernels", 0, "num_kernels must be an integer >= 1, got 0"),
    ("dynamic_ratio", 0.0, r"dynamic_ratio must be a number > 0 and <= 1, got 0.0"),
    ("dynamic_ratio", 1.5, r"dynamic_ratio must be a number > 0 and <= 1, got 1.5"),
    ("dynamic_ratio", float("nan"), r"dynamic_ratio must be a finite number > 0 and <= 1, got nan"),
    ("routing", "relu", "routing must be one of .* got 'relu'"),
    ("temperature", 0.0, "temperature must be a number > 0, got 0.0"),
    ("temperature", -3, "temperature must be a number > 0, got -3"),
    ("temperature", float("inf"), "temperature must be a finite number > 0, got inf"),
    ("dynamic_convs", [8], r"dynamic_convs has index 8, but this ResNet has 8 convolutions \(indices 0..7\)"),
    ("dynamic_convs", [-1], "dynamic_convs has index -1"),
    ("dynamic_convs", [2, 2], "dynamic_convs has repeated indices"),
    ("dynamic_convs", [], "dynamic_convs must name at least one convolution"),
    ("partition_granularity", "neuron", "partition_granularity must be one of .* got 'neuron'"),
    ("attention_reduction", 0, "attention_reduction must be an integer >= 1, got 0"),
    ("pad_state", "finalized", "pad_partition must record"),
])
def test_config_rejects_bad_values_naming_field_and_value(field, value, match):
    kwargs = {**BASIC, "dynamic_ratio": 0.5, field: value}
    with pytest.raises(ValueError, match=match):
        DynamicResNetConfig(**kwargs)


def test_config_rejects_a_partitioned_fully_dynamic_model():
    with pytest.raises(ValueError, match="pad_state must be 'unpartitioned' for dynamic_ratio=1.0"):
        DynamicResNetConfig(**BASIC, pad_state="partitioned")


@pytest.mark.parametrize("kwargs", [BASIC, BOTTLENECK], ids=["basic", "bottleneck"])
def test_conv_index_matches_transformers_resnet(kwargs):
    convs = [(name, m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0])
             for name, m in static_resnet(kwargs).resnet.named_modules() if isinstance(m, nn.Conv2d)]
    specs = resnet_conv_specs(ResNetConfig(**kwargs))
    assert [(s.path, s.in_channels, s.out_channels, s.kernel_size, s.stride) for s in specs] == convs
    config = DynamicResNetConfig(**kwargs)
    assert config.dynamic_conv_indices == list(range(1, len(convs)))


# ------------------------------------------------------------------------------------------------- upcycling
@pytest.mark.parametrize("kwargs,overrides", [
    (BASIC, dict()),
    (BASIC, dict(dynamic_ratio=0.3, partition_granularity="filter", dynamic_convs=[0, 3, 5])),
    (BOTTLENECK, dict(dynamic_ratio=0.5, num_kernels=2)),
], ids=["dyconv", "pad-filter-subset", "bottleneck"])
def test_from_static_computes_what_the_static_model_computes(kwargs, overrides):
    static = static_resnet(kwargs)
    model = DynamicResNetForImageClassification.from_static(static, temperature=5.0, **overrides).eval()
    dynamic = model.dynamic_convs()
    assert len(dynamic) == len(model.config.dynamic_conv_indices)
    assert all(isinstance(m, PartialDynamicConv2d) == (model.config.dynamic_ratio < 1) for m in dynamic)
    x = images(channels=kwargs["num_channels"])
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, static(x).logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.classifier[1].weight, static.classifier[1].weight)


def test_from_static_from_a_folder_and_its_errors(tmp_path, caplog):
    static = static_resnet()
    static.save_pretrained(tmp_path / "static")
    model = DynamicResNetForImageClassification.from_static(str(tmp_path / "static")).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images()).logits, static(images()).logits, atol=1e-5, rtol=1e-5)
    BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="from_static needs a ResNet checkpoint .* model_type 'bert'"):
        DynamicResNetForImageClassification.from_static(str(tmp_path / "bert"))
    with pytest.raises(ValueError, match="got DynamicResNetForImageClassification with model_type 'dynamic_resnet'"):
        DynamicResNetForImageClassification.from_static(model)
    with caplog.at_level(logging.WARNING):
        DynamicResNetForImageClassification.from_static(static, routing="sigmoid")
    assert "does not compute what the static one does" in caplog.text


# ------------------------------------------------------------------------------------------------------- IMP
@pytest.mark.parametrize("granularity", ["element", "filter"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_imp_keeps_exactly_kappa(granularity, scope):
    model = DynamicResNetForImageClassification.from_static(static_resnet(), dynamic_ratio=0.3,
                                                            partition_granularity=granularity)
    summary = iterative_mode_partition(model, batches(), iterations=2, num_batches=2, scope=scope, finalize=False)
    masks = [layer.partition_mask() for layer in pad_layers(model)]
    assert len(masks) == 7 and summary["score"] == "grad_variance"  # upcycled: kernels tied to the static weight
    if scope == "layer":
        assert all(int(m.sum()) == round(0.3 * m.numel()) for m in masks)
    else:
        assert sum(int(m.sum()) for m in masks) == round(0.3 * sum(m.numel() for m in masks))
    assert model.config.pad_state == "partitioned"


def test_imp_on_a_model_trained_from_scratch_uses_snip_and_a_fully_dynamic_model_has_nothing_to_partition():
    torch.manual_seed(0)
    model = DynamicResNetForImageClassification(DynamicResNetConfig(**BASIC, dynamic_ratio=0.5))
    assert iterative_mode_partition(model, batches(), num_batches=1)["score"] == "snip"
    assert model.config.pad_state == "finalized"
    dyconv = DynamicResNetForImageClassification(DynamicResNetConfig(**BASIC))
    with pytest.raises(ValueError, match="nothing to partition: config.dynamic_ratio=1.0"):
        iterative_mode_partition(dyconv, batches())


@pytest.mark.parametrize("granularity", ["element", "filter"])
def test_finalise_save_load_is_exact_and_smaller(granularity, tmp_path):
    model = partitioned(granularity)
    model.save_pretrained(tmp_path / "masked")
    x = images()
    with torch.no_grad():
        masked_logits = model(x).logits
    counts = finalize_partition(model)
    assert set(counts) == {str(i) for i in range(1, 8)}
    with torch.no_grad():
        logits = model(x).logits
    torch.testing.assert_close(logits, masked_logits, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "final")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "final").eval()
    assert type(loaded) is DynamicResNetForImageClassification and loaded.config.pad_state == "finalized"
    assert loaded.config.pad_partition == counts
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys() and all(torch.equal(state[k], loaded_state[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, logits)
    DynamicResNetForImageClassification.from_static(static_resnet()).save_pretrained(tmp_path / "dyconv")
    final, masked, dyconv = (checkpoint_bytes(tmp_path / n) for n in ("final", "masked", "dyconv"))
    assert final < dyconv < masked, (final, dyconv, masked)


def test_checkpoint_whose_shapes_disagree_with_its_config_is_rejected(tmp_path):
    model = partitioned("filter")
    finalize_partition(model)
    model.save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    key = sorted(config["pad_partition"])[0]
    config["pad_partition"][key]["dynamic_filters"] += 1
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"checkpoint tensor .*convolution\.(static_)?weight has shape .* "
                                         rf"pad_partition\['{key}'\]"):
        AutoModelForImageClassification.from_pretrained(tmp_path)
    config["pad_partition"][key]["dynamic_filters"] -= 1
    config["num_kernels"] = 3
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="num_kernels=3"):
        AutoModelForImageClassification.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------------- export
# torch.export's own decomposition pass deep-copies a pytree LeafSpec, which torch 2.13 deprecates (not our code)
@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning")
@pytest.mark.parametrize("granularity", ["element", "filter"])
def test_onnx_round_trip_with_a_dynamic_batch(granularity, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = partitioned(granularity)
    finalize_partition(model)
    path = str(tmp_path / "model.onnx")
    torch.onnx.export(model, (images(batch=2),), path, dynamo=True, input_names=["pixel_values"],
                      output_names=["logits"], dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
                      verbose=False)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = images(batch=batch, seed=batch)
        (logits,) = session.run(["logits"], {"pixel_values": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(x).logits, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------- Trainer
def test_trainer_with_imp_and_the_temperature_callback(tmp_path):
    torch.manual_seed(0)
    model = DynamicResNetForImageClassification(DynamicResNetConfig(**BASIC, dynamic_ratio=0.5))
    dataset = [{"pixel_values": b["pixel_values"][i], "labels": b["labels"][i]} for b in batches(2) for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=2,
                             learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True, seed=0)
    temperature = TemperatureAnnealingCallback(start=30.0, end=1.0, anneal_epochs=1)
    seen = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append(model.dynamic_convs()[0].temperature)

    imp = IMPCallback(num_batches=1)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[imp, temperature, Record()])
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert imp.summary["score"] == "snip" and model.config.pad_state == "finalized"
    assert seen[0] == 30.0 and seen == sorted(seen, reverse=True) and seen[-1] == 1.0
    assert model.config.temperature == 1.0


# ------------------------------------------------------------------------------------------------ Auto classes
def test_auto_classes_and_public_names(tmp_path):
    config = DynamicResNetConfig(**BASIC, num_kernels=2)
    assert DynamicResNetConfig.model_type == "dynamic_resnet" and isinstance(config, ResNetConfig)
    assert issubclass(DynamicResNetForImageClassification, ResNetForImageClassification)
    assert type(AutoModelForImageClassification.from_config(config)) is DynamicResNetForImageClassification
    assert type(AutoModel.from_config(config)) is DynamicResNetModel
    config.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is DynamicResNetConfig
    assert hf_dynamic.DynamicConv2d is DynamicConv2d and hf_dynamic.PartialDynamicConv2d is PartialDynamicConv2d
    base = DynamicResNetModel.from_static(static_resnet().resnet)
    assert len(base.dynamic_convs()) == 7
