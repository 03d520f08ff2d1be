"""PartialMoEBert: config validation, upcycling ≡ dense, aux loss, heads, Auto classes, finalised save/load round
trip, checkpoints of earlier versions, no deprecation warnings (the layer maths: tests/pad/test_pad_layers.py)."""

import json
import os

import pytest
import torch
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
)

import hf_dynamic
from hf_dynamic import (
    PartialMoEBertConfig,
    PartialMoEBertForQuestionAnswering,
    PartialMoEBertForSequenceClassification,
    PartialMoEBertForTokenClassification,
    PartialMoEBertModel,
)
from hf_dynamic.pad.imp import finalize_partition, iterative_mode_partition
from hf_dynamic.pad.layers import PartialDynamicFFN

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def tiny_dense(num_labels=3):
    return BertForSequenceClassification(BertConfig(**TINY, num_labels=num_labels)).eval()


def tiny_config(**kw):
    return PartialMoEBertConfig(**{**TINY, "num_experts": 4, "num_experts_per_tok": 2, **kw})


def inputs(batch=3, seq=7):
    ids = torch.randint(0, 100, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq - 2:] = 0
    return ids, mask


# ----------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("field,value,match", [
    ("dynamic_ratio", 0.0, "dynamic_ratio must be a number > 0 and <= 1, got 0.0"),
    ("dynamic_ratio", 1.5, "dynamic_ratio must be a number > 0 and <= 1, got 1.5"),
    ("num_experts_per_tok", 5, "num_experts_per_tok must be an integer >= 1 and <= 4, got 5"),
    ("router_noise_std", -0.1, "router_noise_std must be a number >= 0, got -0.1"),
    ("router_aux_loss_coef", float("nan"), "router_aux_loss_coef must be a finite number >= 0, got nan"),
    ("moe_layers", [0, 2], "moe_layers has index 2"),
    ("moe_layers", [-1], "moe_layers has index -1"),
    ("partition_granularity", "row", "partition_granularity .* got 'row'"),
    ("pad_state", "finalized", "pad_partition must record"),
    # a string where a number belongs is a ValueError naming the field (it was a TypeError from `0 < "0.5"`)
    ("dynamic_ratio", "0.5", "dynamic_ratio must be a number, got '0.5' \\(str\\)"),
    ("num_experts", "8", "num_experts must be an integer, got '8'"),
    ("router_aux_loss_coef", "x", "router_aux_loss_coef must be a number, got 'x'"),
])
def test_config_rejects_bad_fields(field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**{field: value})


def test_config_round_trip_and_auto(tmp_path):
    config = tiny_config(dynamic_ratio=0.25, moe_layers=[1], partition_granularity="neuron")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, PartialMoEBertConfig) and loaded.model_type == "partial_moe_bert"
    assert (loaded.dynamic_ratio, loaded.moe_layers, loaded.partition_granularity) == (0.25, [1], "neuron")
    for auto, cls in [(AutoModel, PartialMoEBertModel),
                      (AutoModelForSequenceClassification, PartialMoEBertForSequenceClassification),
                      (AutoModelForTokenClassification, PartialMoEBertForTokenClassification),
                      (AutoModelForQuestionAnswering, PartialMoEBertForQuestionAnswering)]:
        assert type(auto.from_config(config)) is cls
    assert hf_dynamic.PartialMoEBertConfig is PartialMoEBertConfig


# ----------------------------------------------------------------------------------------------------- upcycling
@pytest.mark.parametrize("granularity,kappa", [("element", 0.5), ("neuron", 0.5), ("element", 1.0)])
def test_upcycled_equals_dense(granularity, kappa):
    dense = tiny_dense()
    model = PartialMoEBertForSequenceClassification.from_dense(
        dense, num_experts=4, dynamic_ratio=kappa, partition_granularity=granularity).eval()
    ids, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, dense(ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=0)
    assert torch.equal(model.classifier.weight, dense.classifier.weight)


def test_upcycled_minilm_equals_dense():
    path = hf_dynamic.minilm_path()
    dense = BertForSequenceClassification.from_pretrained(path, num_labels=2, dtype=torch.float32).eval()
    model = PartialMoEBertForSequenceClassification.from_dense(path, num_labels=2, num_experts=8,
                                                               num_experts_per_tok=2).eval()
    with torch.no_grad():  # from_dense(path) initialises its own classifier: copy it to compare the encoders
        dense.classifier.load_state_dict(model.classifier.state_dict())
        ids = torch.randint(1000, 20000, (2, 24))
        torch.testing.assert_close(model(ids).logits, dense(ids).logits, atol=1e-5, rtol=0)
    assert model.config.hidden_size == 384 and model.config.num_experts == 8


def test_from_dense_rejects_non_bert(tmp_path):
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'bert'.*'llama'"):
        PartialMoEBertForSequenceClassification.from_dense(str(tmp_path))
    moe = PartialMoEBertForSequenceClassification(tiny_config())
    with pytest.raises(ValueError, match="'partial_moe_bert'"):
        PartialMoEBertForSequenceClassification.from_dense(moe)


# ----------------------------------------------------------------------------------------------------- outputs
def test_aux_loss_added_and_router_logits_on_request():
    model = PartialMoEBertForSequenceClassification.from_dense(tiny_dense(), num_experts=4,
                                                               router_aux_loss_coef=0.1).eval()
    ids, mask = inputs()
    labels = torch.tensor([0, 2, 1])
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.router_logits is None and out.aux_loss is not None
    ce = F.cross_entropy(out.logits, labels)
    torch.testing.assert_close(out.loss, ce + 0.1 * out.aux_loss)
    out = model(ids, attention_mask=mask, output_router_logits=True)
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (21, 4)
    assert out.loss is None
    model.config.moe_layers = [1]
    partial = PartialMoEBertModel(tiny_config(moe_layers=[1]))
    assert len(partial.pad_layers()) == 1 and partial.pad_layers()[0].layer_idx == 1
    assert len(partial(ids, output_router_logits=True).router_logits) == 1


def test_token_classification_and_qa_heads_train():
    ids, mask = inputs()
    tok = PartialMoEBertForTokenClassification(tiny_config(num_labels=5))
    out = tok(ids, attention_mask=mask, labels=torch.randint(0, 5, ids.shape))
    out.loss.backward()
    assert out.logits.shape == (3, 7, 5) and tok.bert.pad_layers()[0].phi.grad is not None
    qa = PartialMoEBertForQuestionAnswering(tiny_config(num_labels=2, partition_granularity="neuron"))
    out = qa(ids, attention_mask=mask, start_positions=torch.tensor([1, 2, 3]), end_positions=torch.tensor([2, 3, 4]))
    out.loss.backward()
    assert out.start_logits.shape == (3, 7) and torch.isfinite(out.loss)


def test_bf16_forward_backward():
    model = PartialMoEBertForSequenceClassification(tiny_config(partition_granularity="neuron", num_labels=3))
    ids, mask = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, attention_mask=mask, labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    model_bf16 = PartialMoEBertForSequenceClassification(tiny_config()).to(torch.bfloat16)
    assert model_bf16(ids, attention_mask=mask).logits.dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------- save/load
def _imp_batches(n=2):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 100, (4, 9), generator=g), "labels": torch.randint(0, 3, (4,), generator=g)}
            for _ in range(n)]


@pytest.mark.parametrize("granularity", ["element", "neuron"])
def test_finalized_round_trip_is_exact_and_smaller(tmp_path, granularity):
    dense = tiny_dense()
    moe = PartialMoEBertForSequenceClassification.from_dense(dense, num_experts=4, dynamic_ratio=1.0)
    moe.save_pretrained(tmp_path / "moe")
    model = PartialMoEBertForSequenceClassification.from_dense(dense, num_experts=4, dynamic_ratio=0.5,
                                                               partition_granularity=granularity)
    with torch.no_grad():  # make experts differ so the round trip is a real check
        for layer in model.bert.pad_layers():
            layer.up_proj.add_(torch.randn_like(layer.up_proj) * 0.1)
    iterative_mode_partition(model, _imp_batches(), iterations=1, num_batches=2)
    assert model.config.pad_state == "finalized"
    model.save_pretrained(tmp_path / "pad")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pad")
    assert type(loaded) is PartialMoEBertForSequenceClassification
    ids, mask = inputs()
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
    pad_size = os.path.getsize(tmp_path / "pad" / "model.safetensors")
    moe_size = os.path.getsize(tmp_path / "moe" / "model.safetensors")
    assert pad_size < moe_size
    # FFN parameters: about ((1 - κ) + E·κ)/E of the MoE's (E=4, κ=0.5 -> 0.625)
    ffn = lambda m: sum(p.numel() for n, p in m.named_parameters() if ".mlp." in n and "router" not in n)  # noqa
    ratio = ffn(loaded) / ffn(moe)
    assert abs(ratio - 0.625) < 0.01, ratio


def test_finalized_checkpoint_with_wrong_shapes_is_rejected(tmp_path):
    model = PartialMoEBertForSequenceClassification.from_dense(tiny_dense(), num_experts=4,
                                                               partition_granularity="neuron")
    iterative_mode_partition(model, _imp_batches(), iterations=1, num_batches=1, scope="layer")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["pad_partition"]["0"]["dynamic_neurons"] = 30
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has shape .* pad_partition\\['0'\\]=\\{'dynamic_neurons': 30\\}"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pad_state='finalized'"):
        finalize_partition(model)


# ----------------------------------------------------------------------------------------------------- compatibility
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "fixtures",
                        "partial_moe_bert_v0")


@pytest.mark.parametrize("name", ["unpartitioned_element", "finalized_element", "finalized_neuron"])
def test_checkpoints_of_the_first_layout_load_with_the_same_logits(name):
    """Tiny checkpoints saved by the single-class PartialDynamicFFN (tests/fixtures/.../make_fixtures.py)."""
    folder = os.path.join(FIXTURES, name)
    expected = json.loads(open(os.path.join(folder, "expected.json")).read())
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert isinstance(model, PartialMoEBertForSequenceClassification)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(expected["input_ids"]),
                       attention_mask=torch.tensor(expected["attention_mask"])).logits
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), atol=1e-5, rtol=1e-5)


def test_forward_raises_no_deprecation_warning():
    import warnings

    model = PartialMoEBertForSequenceClassification(tiny_config(num_labels=3)).eval()
    ids, mask = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model(ids, attention_mask=mask, labels=torch.tensor([0, 1, 2])).loss.backward()
