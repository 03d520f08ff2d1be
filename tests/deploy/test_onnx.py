"""ONNX export for ONNX Runtime (``hf_dynamic.export_onnx``, docs/onnx.md): every model type, both exporters, run in
onnxruntime at batch sizes and lengths other than the traced ones and compared with torch within 1e-4; real early
exit in onnxruntime (stage graphs + the torch-free runtime) against the PyTorch dynamic mode; refusals.

Models are tiny and built through public APIs only (``from_dense``, ``from_static``, ``from_backbone``,
``iterative_mode_partition``, ``finalize_partition``, ``calibrate_thresholds``). Exports are slow-ish (the dynamo
exporter takes several seconds per graph), so each exported folder is made once per module (``folders`` fixture).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    ResNetConfig,
    ResNetForImageClassification,
)

import hf_dynamic
from hf_dynamic import (
    BoostedEarlyExitForSequenceClassification,
    DynamicResNetForImageClassification,
    PartialMoEBertForSequenceClassification,
    calibrate_thresholds,
    export_onnx,
    finalize_partition,
    iterative_mode_partition,
)
from hf_dynamic.deploy.onnx import OnnxExportError

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = [
    # torch.export's decomposition pass deep-copies a pytree LeafSpec, deprecated in torch 2.13 (not our code)
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:.*legacy TorchScript-based ONNX export"),
    pytest.mark.filterwarnings("ignore:Exporting a model while it is in training mode"),
    pytest.mark.filterwarnings("ignore:.*will not be used, since it shares the same shape constraints"),
]

EXPORTERS = ("dynamo", "torchscript")
TINY_BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
BASIC_RESNET = dict(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="basic",
                    num_labels=10)


# ------------------------------------------------------------------------------------------------- models
def text_batch(batch, length, vocab=100, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(batch):  # right padding of varying length
        if i % 4:
            mask[i, -(i % 4):] = 0
            ids[i, -(i % 4):] = 0
    types = (torch.arange(length) >= length // 2).long().expand(batch, -1).contiguous()
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def labelled(batches, num_labels=3):
    return [{**b, "labels": torch.arange(b["input_ids"].shape[0]) % num_labels} for b in batches]


def moe_model(variant):
    """PartialMoEBert upcycled from a tiny BERT: a plain MoE (κ = 1, experts perturbed apart) or PAD finalised in
    element / neuron mode after IMP."""
    torch.manual_seed(0)
    dense = BertForSequenceClassification(BertConfig(**TINY_BERT, num_labels=3)).eval()
    if variant == "moe":
        model = PartialMoEBertForSequenceClassification.from_dense(dense, num_experts=4, num_experts_per_tok=2,
                                                                   dynamic_ratio=1.0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "proj" in name:
                    param.add_(torch.randn_like(param) * 0.05)
        return model.eval()
    model = PartialMoEBertForSequenceClassification.from_dense(
        dense, num_experts=4, num_experts_per_tok=2, dynamic_ratio=0.5, partition_granularity=variant)
    iterative_mode_partition(model, labelled([text_batch(4, 7, seed=s) for s in range(2)]), num_batches=2)
    assert model.config.pad_state == "finalized"
    return model.eval()


def static_resnet():
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(**BASIC_RESNET))
    with torch.no_grad():  # trained-looking batch norms
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def image_batches(count=2, batch=4):
    generator = torch.Generator().manual_seed(3)
    return [{"pixel_values": torch.randn(batch, 1, 16, 16, generator=generator),
             "labels": torch.randint(0, 10, (batch,), generator=generator)} for _ in range(count)]


def resnet_model(variant):
    """DynamicResNet from a static ResNet: Dynamic Convolution (softmax), CondConv (sigmoid), PAD element / filter,
    partitioned (masked layout) or finalised."""
    static = static_resnet()
    if variant in ("dyconv", "condconv"):
        model = DynamicResNetForImageClassification.from_static(
            static, routing="softmax" if variant == "dyconv" else "sigmoid")
        with torch.no_grad():  # kernels apart, so the routing matters
            for conv in model.dynamic_convs():
                conv.weight.add_(torch.randn_like(conv.weight) * 0.1)
        return model.eval()
    granularity, state = variant.split("_")
    model = DynamicResNetForImageClassification.from_static(static, dynamic_ratio=0.3,
                                                            partition_granularity=granularity)
    iterative_mode_partition(model, image_batches(), num_batches=2, finalize=state == "finalized")
    return model.eval()


def boosted_model():
    """A 3-layer BERT with exits after layers 1, 2, 3, confident enough heads, thresholds calibrated at budget 0.6
    (so a batch splits across exits), and MiniLM's vocabulary size (its real tokenizer serves it)."""
    torch.manual_seed(0)
    backbone = BertModel(BertConfig(**{**TINY_BERT, "vocab_size": 30522, "hidden_size": 16, "num_attention_heads": 2,
                                       "intermediate_size": 24, "num_hidden_layers": 3}))
    model = BoostedEarlyExitForSequenceClassification.from_backbone(backbone, num_labels=3, classifier_dropout=0.0)
    model.config.id2label = {0: "neg", 1: "neutral", 2: "pos"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    with torch.no_grad():
        for head in model.exit_heads:
            head.classifier.weight.mul_(80)
    model.eval()
    calibrate_thresholds(model, [text_batch(16, 9, vocab=30522, seed=s) for s in range(3)], budget=0.6)
    return model


# ------------------------------------------------------------------------------------------------ helpers
def run_graph(folder, inputs):
    session = ort.InferenceSession(os.path.join(folder, "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, {name: inputs[name].numpy() for name in names})
    return dict(zip([o.name for o in session.get_outputs()], outputs))


def assert_close(got, expected, atol=1e-4):
    np.testing.assert_allclose(got, expected.detach().numpy(), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Export on first use, once per (model, exporter): ``folders(kind, variant, exporter) -> (model, folder)``."""
    cache = {}
    builders = {"moe": moe_model, "resnet": resnet_model, "boosted": lambda _: boosted_model()}

    def get(kind, variant, exporter, **kwargs):
        key = (kind, variant, exporter)
        if key not in cache:
            model = builders[kind](variant)
            folder = tmp_path_factory.mktemp(f"{kind}-{variant}-{exporter}")
            export_onnx(model, folder, exporter=exporter, **kwargs)
            cache[key] = model, str(folder)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(hf_dynamic.minilm_path())


# --------------------------------------------------------------------------------------------- PartialMoEBert
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("variant", ["moe", "element", "neuron"])
def test_partial_moe_bert_round_trip(folders, variant, exporter):
    """Dynamic batch and sequence length: other sizes than the traced (2, 8) give torch's logits."""
    model, folder = folders("moe", variant, exporter)
    manifest = json.load(open(os.path.join(folder, "hf_dynamic_onnx.json")))
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["outputs"] == ["logits"] and manifest["exporter"] == exporter
    for batch, length in ((1, 5), (6, 13)):
        inputs = text_batch(batch, length, seed=batch)
        with torch.no_grad():
            expected = model(**inputs).logits
        assert_close(run_graph(folder, inputs)["logits"], expected)


def test_exported_moe_routes_like_torch_on_every_expert(folders):
    """The traced batch reaches some experts; a long batch reaches all of them, and still matches (a graph that
    baked in the traced batch's routing would not)."""
    model, folder = folders("moe", "moe", "torchscript")
    inputs = text_batch(8, 30, seed=5)
    routers = [m for m in model.modules() if type(m).__name__ == "TopKRouter"]
    hit = []
    hooks = [r.register_forward_hook(lambda mod, args, out: hit.append(out[2].unique().numel())) for r in routers]
    with torch.no_grad():
        expected = model(**inputs).logits
    for hook in hooks:
        hook.remove()
    assert hit and all(n == model.config.num_experts for n in hit)
    assert_close(run_graph(folder, inputs)["logits"], expected)


# ------------------------------------------------------------------------------------------------ DynamicResNet
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("variant", ["dyconv", "condconv", "element_partitioned", "element_finalized",
                                     "filter_partitioned", "filter_finalized"])
def test_dynamic_resnet_round_trip(folders, variant, exporter):
    model, folder = folders("resnet", variant, exporter)
    generator = torch.Generator().manual_seed(7)
    for batch in (1, 5):
        pixels = torch.randn(batch, 1, 16, 16, generator=generator)
        with torch.no_grad():
            expected = model(pixel_values=pixels).logits
        assert_close(run_graph(folder, {"pixel_values": pixels})["logits"], expected)


def test_training_mode_model_is_exported_in_eval_mode_and_left_in_training_mode(tmp_path):
    """A model straight from ``from_static`` is in training mode: the graph is the eval-mode model's (batch-norm
    running statistics), and the model's own mode is restored."""
    model = DynamicResNetForImageClassification.from_static(static_resnet())
    assert model.training
    export_onnx(model, tmp_path, exporter="torchscript")
    assert model.training and all(m.training for m in model.modules())
    pixels = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        expected = model.eval()(pixel_values=pixels).logits
    assert_close(run_graph(tmp_path, {"pixel_values": pixels})["logits"], expected)
    facts = json.load(open(tmp_path / "hf_dynamic_onnx.json"))["preprocessing"]
    assert facts["num_channels"] == 1 and facts["image_size"] == [32, 32]


# ---------------------------------------------------------------------------------------------- early exit
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_boosted_anytime_graph(folders, exporter):
    """``model.onnx``: the last exit's logits and every exit's, as ``output_all_exits=True`` returns them."""
    model, folder = folders("boosted", "calibrated", exporter)
    inputs = text_batch(5, 12, vocab=30522, seed=11)
    with torch.no_grad():
        expected = model(**inputs, output_all_exits=True)
    got = run_graph(folder, inputs)
    assert_close(got["logits"], expected.logits)
    assert_close(got["all_exit_logits"], expected.all_exit_logits)


def load_runtime(folder):
    """The runtime copied into the folder, imported from there (as a user without hf_dynamic does)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("exported_ort_early_exit", os.path.join(folder, "ort_early_exit.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_early_exit_in_onnxruntime_equals_pytorch_dynamic_mode(folders, exporter):
    model, folder = folders("boosted", "calibrated", exporter)
    manifest = json.load(open(os.path.join(folder, "hf_dynamic_onnx.json")))
    exits = manifest["early_exit"]
    assert exits["exit_layers"] == [1, 2, 3] and exits["criterion"] == "confidence"
    assert exits["thresholds"] == pytest.approx(model.config.exit_thresholds)
    assert exits["stages"] == ["stage_0.onnx", "stage_1.onnx", "stage_2.onnx"]
    runtime = load_runtime(folder)
    session = runtime.EarlyExitSession(folder, threads=1)
    # the stage sessions' thread pools do not spin between stages (they would slow the next stage 2-5x)
    assert session.session_options.get_session_config_entry(runtime.ALLOW_SPINNING) == "0"
    inputs = text_batch(24, 10, vocab=30522, seed=21)
    with torch.no_grad():
        expected = model(**inputs)
    got = session.run(**{k: v.numpy() for k, v in inputs.items()})
    layers = expected.exit_layer.tolist()
    assert got.exit_layer.tolist() == layers
    assert min(layers) < 3 and max(layers) == 3, f"the batch should split between early and last exits: {layers}"
    assert (got.logits.argmax(-1) == expected.logits.argmax(-1).numpy()).all()
    assert_close(got.logits, expected.logits)
    full = session.run(**{k: v.numpy() for k, v in inputs.items()}, dynamic=False)
    with torch.no_grad():
        last = model(**inputs, output_all_exits=True).logits
    assert (full.exit_layer == 3).all()
    assert_close(full.logits, last)


@pytest.mark.parametrize("criterion", ["entropy", "patience"])
def test_early_exit_settings_follow_the_config(tmp_path, criterion):
    """Entropy criterion with joint exits (no boosting), patience with boosted ones: the runtime reads the
    criterion, its settings and the ensemble from the manifest."""
    model = boosted_model()
    model.config.exit_thresholds = None
    model.config.exit_criterion = criterion
    if criterion == "entropy":
        model.config.boosting = False
        calibrate_thresholds(model, [text_batch(16, 9, vocab=30522, seed=s) for s in range(3)], budget=0.6)
    else:
        model.config.exit_patience = 1
    export_onnx(model, tmp_path, exporter="torchscript")
    session = load_runtime(tmp_path).EarlyExitSession(tmp_path)
    inputs = text_batch(24, 10, vocab=30522, seed=22)
    with torch.no_grad():
        expected = model(**inputs)
    got = session.run(**{k: v.numpy() for k, v in inputs.items()})
    assert got.exit_layer.tolist() == expected.exit_layer.tolist()
    assert len(set(got.exit_layer.tolist())) > 1
    assert_close(got.logits, expected.logits)


TORCH_FREE_SCRIPT = r"""
import builtins, json, sys
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split(".")[0] in ("torch", "transformers", "hf_dynamic"):
        raise ImportError(f"{name} is blocked in this test")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
folder = sys.argv[1]
sys.path.insert(0, folder)
from ort_early_exit import EarlyExitSession
session = EarlyExitSession(folder, threads=1)
texts = ["a gripping, funny film", "dull", "I did not expect the ending at all, and neither will you"]
pairs = ["the plot", "the cast", "the script"]
out = session.run(**session.tokenize(texts, pairs))
print(json.dumps({"logits": out.logits.tolist(), "exit_layer": out.exit_layer.tolist(),
                  "predict": session.predict(texts, pairs),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))}))
"""


def test_runtime_runs_without_torch_and_predicts_what_pytorch_predicts(folders, tokenizer, tmp_path):
    model, _ = folders("boosted", "calibrated", "torchscript")
    folder = tmp_path / "with-tokenizer"
    export_onnx(model, folder, tokenizer, exporter="torchscript")
    assert (folder / "tokenizer.json").is_file() and (folder / "ort_early_exit.py").is_file()
    script = tmp_path / "run.py"
    script.write_text(TORCH_FREE_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["loaded"] == []
    texts = ["a gripping, funny film", "dull", "I did not expect the ending at all, and neither will you"]
    encoded = tokenizer(texts, ["the plot", "the cast", "the script"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**encoded)
    assert got["exit_layer"] == expected.exit_layer.tolist()
    assert_close(np.array(got["logits"]), expected.logits)
    names = [model.config.id2label[i] for i in expected.logits.argmax(-1).tolist()]
    assert [p["label"] for p in got["predict"]] == names


# ---------------------------------------------------------------------------------------------- refusals
def test_a_graph_that_disagrees_with_torch_is_refused_and_removed(tmp_path):
    """The post-export check: with a tolerance below float rounding, the (correct) graph is refused, so a wrong
    graph certainly is; no graph is left in the folder."""
    model = resnet_model("dyconv")
    with pytest.raises(OnnxExportError, match=r"model.onnx: onnxruntime and torch differ by .* \(> atol=1e-12\)"):
        export_onnx(model, tmp_path, exporter="torchscript", atol=1e-12)
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "hf_dynamic_onnx.json").exists()


@pytest.mark.parametrize("kwargs,error,match", [
    ({"exporter": "onnxscript"}, ValueError, r"exporter must be one of \('dynamo', 'torchscript'\), got 'onnxscript'"),
    ({"opset": 0}, ValueError, "opset must be an integer >= 1, got 0"),
    ({"atol": 0}, ValueError, r"atol must be a number in \(0, 1\), got 0"),
    ({"early_exit_stages": "yes"}, ValueError, "early_exit_stages must be a bool, got 'yes'"),
    ({"tokenizer": "bert-base-uncased"}, TypeError, "tokenizer must be a transformers tokenizer"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, kwargs, error, match):
    model = BertForSequenceClassification(BertConfig(**TINY_BERT))
    with pytest.raises(error, match=match):
        export_onnx(model, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_models_export_onnx_cannot_serve_are_refused(tmp_path, tokenizer):
    with pytest.raises(TypeError, match="needs a transformers PreTrainedModel, got Linear"):
        export_onnx(nn.Linear(2, 2), tmp_path)
    with pytest.raises(ValueError, match="tokenizer given for DynamicResNetForImageClassification"):
        export_onnx(resnet_model("dyconv"), tmp_path, tokenizer)
    distil = DistilBertModel(DistilBertConfig(vocab_size=100, dim=16, n_layers=2, n_heads=2, hidden_dim=24))
    model = BoostedEarlyExitForSequenceClassification.from_backbone(distil, num_labels=2)
    with pytest.raises(ValueError, match="per-exit ONNX graphs support backbones with the BERT layout .* 'distilbert'"):
        export_onnx(model, tmp_path / "distil")
    assert not (tmp_path / "distil").exists()


def test_runtime_refuses_a_folder_without_early_exit(folders):
    from hf_dynamic.deploy.ort_early_exit import EarlyExitSession

    _, folder = folders("resnet", "dyconv", "torchscript")
    with pytest.raises(ValueError, match="without early-exit stages; run its model.onnx"):
        EarlyExitSession(folder)
