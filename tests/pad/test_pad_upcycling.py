"""Drop-Upcycling: exactly round(r·d_ff) neurons re-initialised per expert (rows of up, its bias, columns of down),
the rest and the static weight untouched, reproducible, the eval cache refreshed, bad input refused."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from hf_dynamic import PartialMoEBertForSequenceClassification, iterative_mode_partition
from hf_dynamic.pad.upcycling import drop_upcycle_

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=3)


def upcycled(**kw):
    torch.manual_seed(0)
    dense = BertForSequenceClassification(BertConfig(**{**TINY, **{k: v for k, v in kw.items() if k in TINY}}))
    with torch.no_grad():  # pre-trained FFN biases are not zero (BERT's init sets them to 0)
        for layer in dense.bert.encoder.layer:
            layer.intermediate.dense.bias.normal_(0.1, 0.02)
    kw = {k: v for k, v in kw.items() if k not in TINY}
    return dense, PartialMoEBertForSequenceClassification.from_dense(dense, **{"num_experts": 4, **kw})


def changed_neurons(layer, dense_layer, expert):
    """Per neuron: did expert ``expert``'s up row, up bias and down column each differ from the dense FFN?"""
    up = (layer.up_proj[expert] != dense_layer.intermediate.dense.weight).any(1)
    up_bias = layer.up_proj_bias[expert] != dense_layer.intermediate.dense.bias
    down = (layer.down_proj[expert] != dense_layer.output.dense.weight).any(0)
    return up, up_bias, down


@pytest.mark.parametrize("kw", [{"dynamic_ratio": 1.0}, {"dynamic_ratio": 0.5, "partition_granularity": "neuron"},
                                {"dynamic_ratio": 0.5, "partition_granularity": "element"}])
def test_drops_exactly_r_neurons_per_expert(kw):
    dense, model = upcycled(**kw)
    static_before = {n: p.clone() for n, p in model.named_parameters() if ".static_" in n}
    down_bias_before = [layer.down_proj_bias.clone() for layer in model.pad_layers() if hasattr(layer, "down_proj_bias")]
    assert model.drop_upcycle_(0.25, torch.Generator().manual_seed(3)) == 16
    for layer, dense_layer in zip(model.pad_layers(), dense.bert.encoder.layer):
        sets = []
        for expert in range(layer.num_experts):
            up, up_bias, down = changed_neurons(layer, dense_layer, expert)
            assert torch.equal(up, down) and torch.equal(up, up_bias)  # the same neurons in all three tensors
            assert int(up.sum()) == 16
            sets.append(up)
        assert len({tuple(s.tolist()) for s in sets}) > 1  # every expert draws its own neurons
    for name, param in model.named_parameters():
        if name in static_before:
            assert torch.equal(param, static_before[name]), name
    after = [layer.down_proj_bias for layer in model.pad_layers() if hasattr(layer, "down_proj_bias")]
    assert all(torch.equal(a, b) for a, b in zip(after, down_bias_before))  # no neuron axis: kept


def test_fresh_values_follow_the_tensor_statistics():
    dense, model = upcycled(dynamic_ratio=1.0, intermediate_size=512, hidden_size=64)
    layer, dense_layer = model.pad_layers()[0], dense.bert.encoder.layer[0]
    reference = dense_layer.intermediate.dense.weight.detach()
    model.drop_upcycle_(0.5, torch.Generator().manual_seed(0))
    up, _, _ = changed_neurons(layer, dense_layer, 0)
    fresh = layer.up_proj[0][up].detach()
    assert fresh.numel() == 256 * 64
    assert abs(float(fresh.std()) - float(reference.std())) < 0.05 * float(reference.std())
    assert abs(float(fresh.mean()) - float(reference.mean())) < 0.05 * float(reference.std())


def test_reproducible_and_zero_ratio_is_identity():
    _, a = upcycled(dynamic_ratio=1.0)
    _, b = upcycled(dynamic_ratio=1.0)
    _, c = upcycled(dynamic_ratio=1.0)
    a.drop_upcycle_(0.3, torch.Generator().manual_seed(7))
    b.drop_upcycle_(0.3, torch.Generator().manual_seed(7))
    before = {k: v.clone() for k, v in c.state_dict().items()}
    assert c.drop_upcycle_(0.0) == 0
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
        assert torch.equal(c.state_dict()[key], before[key]), key


def test_eval_output_follows_the_new_weights():
    """A cached eval forward before the drop must not survive it: the output equals a fresh model's with the same
    weights."""
    _, model = upcycled(dynamic_ratio=0.5, partition_granularity="neuron")
    model.eval()
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    before = model(input_ids=ids).logits
    model.drop_upcycle_(0.5, torch.Generator().manual_seed(0))
    after = model(input_ids=ids).logits
    _, fresh = upcycled(dynamic_ratio=0.5, partition_granularity="neuron")
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh(input_ids=ids).logits)


def test_bad_input_is_refused_before_any_change():
    _, model = upcycled(dynamic_ratio=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="ratio must be a number >= 0 and <= 1, got 1.5"):
        model.drop_upcycle_(1.5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    _, pad = upcycled(dynamic_ratio=0.5, partition_granularity="neuron")
    batch = {"input_ids": torch.randint(0, 100, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long),
             "labels": torch.randint(0, 3, (4,))}
    iterative_mode_partition(pad, [batch], iterations=1, num_batches=1)
    with pytest.raises(ValueError, match="layer 0 is 'finalized'"):
        drop_upcycle_(pad.pad_layers(), 0.1)
