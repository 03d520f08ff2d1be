"""Iterative Mode Partition: exact κ, schedule, scores, determinism, errors, finalisation, IMPCallback in Trainer."""

import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from hf_dynamic import IMPCallback, PartialMoEBertForSequenceClassification, iterative_mode_partition
from hf_dynamic.pad.imp import _score_iteration, finalize_partition, pad_layers

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=3)


def upcycled(**kw):
    torch.manual_seed(0)
    dense = BertForSequenceClassification(BertConfig(**TINY))
    torch.manual_seed(1)
    return PartialMoEBertForSequenceClassification.from_dense(dense, **{"num_experts": 4, **kw})


def batches(n=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 100, (4, 9), generator=g),
             "attention_mask": torch.ones(4, 9, dtype=torch.long),
             "labels": torch.randint(0, 3, (4,), generator=g)} for _ in range(n)]


def masks_of(model):
    return [layer.partition_mask() for layer in pad_layers(model)]


@pytest.mark.parametrize("granularity", ["element", "neuron"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_keeps_exactly_kappa(granularity, scope):
    model = upcycled(partition_granularity=granularity, dynamic_ratio=0.3)
    summary = iterative_mode_partition(model, batches(), iterations=3, num_batches=2, scope=scope, finalize=False)
    masks = masks_of(model)
    total = sum(m.numel() for m in masks)
    if scope == "layer":
        assert all(int(m.sum()) == round(0.3 * m.numel()) for m in masks)
    else:
        assert sum(int(m.sum()) for m in masks) == round(0.3 * total)
    # exponential schedule κ^((t+1)/T) with exact counts at each step
    assert summary["schedule"] == pytest.approx([0.3 ** (1 / 3), 0.3 ** (2 / 3), 0.3])
    if scope == "global":
        assert summary["kept_counts"] == [round(k * total) for k in summary["schedule"]]
    assert summary["score"] == "grad_variance" and summary["batches_per_iteration"] == 2
    assert model.config.pad_state == "partitioned"


def test_deterministic_and_data_dependent():
    first = upcycled()
    second = upcycled()
    iterative_mode_partition(first, batches(), num_batches=3, finalize=False)
    iterative_mode_partition(second, batches(), num_batches=3, finalize=False)
    assert all(torch.equal(a, b) for a, b in zip(masks_of(first), masks_of(second)))
    third = upcycled()
    iterative_mode_partition(third, batches(seed=7), num_batches=3, finalize=False)
    assert not all(torch.equal(a, b) for a, b in zip(masks_of(first), masks_of(third)))


class CountingBatches:
    """An iterable of batches that counts how many it has handed out."""

    def __init__(self, items):
        self.items, self.served = items, 0

    def __iter__(self):
        for item in self.items:
            self.served += 1
            yield item


def test_tied_experts_are_scored_once_and_equal_one_shot():
    data = CountingBatches(batches())
    iterated = upcycled(dynamic_ratio=0.3)
    summary = iterative_mode_partition(iterated, data, iterations=3, num_batches=2, finalize=False)
    assert summary["scored_iterations"] == 1 and data.served == 2
    one_shot = upcycled(dynamic_ratio=0.3)
    iterative_mode_partition(one_shot, batches(), iterations=1, num_batches=2, finalize=False)
    assert all(torch.equal(a, b) for a, b in zip(masks_of(iterated), masks_of(one_shot)))
    # untied experts: every iteration is scored on fresh gradients
    torch.manual_seed(3)
    untied = PartialMoEBertForSequenceClassification(upcycled(dynamic_ratio=0.3).config)
    data = CountingBatches(batches())
    summary = iterative_mode_partition(untied, data, iterations=3, num_batches=2, finalize=False)
    assert summary["scored_iterations"] == 3 and data.served == 6


def test_snip_is_zero_on_upcycled_model_and_auto_switches():
    model = upcycled()
    layers = pad_layers(model)
    assert all(layer.experts_tied() for layer in layers)
    model.eval()
    snip, _ = _score_iteration(model, layers, batches(), 2, "snip", torch.device("cpu"))
    for layer in layers:
        layer.imp_end()
    variance, _ = _score_iteration(model, layers, batches(), 2, "grad_variance", torch.device("cpu"))
    for layer in layers:
        layer.imp_end()
    assert min(float(s.max()) for s in variance) > 0
    # docs/pad.md, "## Iterative Mode Partition": dL/dM ≡ 0 for identical experts (what remains is fp rounding,
    # far below the gradients)
    grad_scale = max(float(s.sqrt().max()) for s in variance)
    assert max(float(s.abs().max()) for s in snip) <= 1e-6 * grad_scale
    # random (non-identical) experts: SNIP is defined and auto uses it
    torch.manual_seed(3)
    random_model = PartialMoEBertForSequenceClassification(upcycled().config)
    summary = iterative_mode_partition(random_model, batches(), num_batches=2, finalize=False)
    assert summary["score"] == "snip"


def test_snip_matches_finite_difference(monkeypatch):
    """dL/dM from IMP equals a finite difference of the loss in one mask entry (neuron mode, random model)."""
    import hf_dynamic.core.routing as routing

    def top_k_softmax_fp64(router_logits, top_k):
        weights, index = torch.topk(torch.softmax(router_logits, dim=-1), top_k, dim=-1)
        return weights / weights.sum(dim=-1, keepdim=True), index

    # The router's softmax runs in fp32 and transformers computes the aux loss in fp32, both below the resolution of
    # a finite difference in fp64: here routing runs in fp64 and the aux loss is off.
    monkeypatch.setattr(routing, "top_k_softmax", top_k_softmax_fp64)
    torch.manual_seed(4)
    config = upcycled(partition_granularity="neuron", router_aux_loss_coef=0.0).config
    model = PartialMoEBertForSequenceClassification(config).double()
    model.eval()
    layer = pad_layers(model)[0]
    batch = batches(1)[0]
    layer.imp_begin()
    loss = model(**batch).loss
    grads = torch.autograd.grad(loss, layer.imp_inputs())
    layer.imp_end()
    j, eps = 17, 1e-5
    with torch.no_grad():
        def loss_at(value):
            relaxed = layer.partition_mask().double()
            relaxed[j] = value
            layer.imp_begin(relaxed)
            out = model(**batch).loss
            layer.imp_end()
            return out
        numeric = (loss_at(1 + eps) - loss_at(1 - eps)) / (2 * eps)
    assert math.isclose(float(grads[0][j]), float(numeric), rel_tol=1e-4, abs_tol=1e-9)


def test_errors_before_any_work():
    model = upcycled()
    with pytest.raises(ValueError, match="dynamic_ratio must be a number > 0 and < 1, got 1.5"):
        iterative_mode_partition(model, batches(), dynamic_ratio=1.5)
    with pytest.raises(ValueError, match="scope must be one of .* got 'all'"):
        iterative_mode_partition(model, batches(), scope="all")
    with pytest.raises(ValueError, match="iterations"):
        iterative_mode_partition(model, batches(), iterations=0)
    with pytest.raises(ValueError, match="no batches"):
        iterative_mode_partition(model, [])
    assert model.config.pad_state == "unpartitioned"
    with pytest.raises(ValueError, match="nothing to partition"):
        iterative_mode_partition(upcycled(dynamic_ratio=1.0), batches())
    iterative_mode_partition(model, batches(), num_batches=1, finalize=False)
    with pytest.raises(ValueError, match="pad_state='partitioned'"):
        iterative_mode_partition(model, batches())
    finalize_partition(model)
    with pytest.raises(ValueError, match="pad_state='finalized'"):
        iterative_mode_partition(model, batches())


def test_dynamic_ratio_argument_overrides_config():
    model = upcycled(dynamic_ratio=0.5, partition_granularity="neuron")
    iterative_mode_partition(model, batches(), dynamic_ratio=0.25, num_batches=1, scope="layer")
    assert model.config.dynamic_ratio == 0.25 and model.config.pad_state == "finalized"
    assert model.config.pad_partition == {"0": {"dynamic_neurons": 16}, "1": {"dynamic_neurons": 16}}


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


@pytest.mark.parametrize("bf16,granularity,finalize_at", [(False, "neuron", "auto"), (True, "element", "train_end")])
def test_imp_callback_in_trainer(tmp_path, bf16, granularity, finalize_at):
    model = upcycled(partition_granularity=granularity)
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 100, (9,), generator=g), "labels": int(torch.randint(0, 3, (), generator=g))}
            for _ in range(24)]
    callback = IMPCallback(iterations=2, num_batches=2, finalize_at=finalize_at)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, bf16=bf16,
                             use_cpu=True, report_to="none", save_strategy="no", logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=_ListDataset(rows), callbacks=[callback])
    params_before = {n: p for n, p in model.named_parameters()}
    result = trainer.train()
    assert callback.summary is not None and callback.summary["batches_per_iteration"] == 2
    # single process: "auto" makes the model compact before the first optimiser step
    assert callback.summary["finalize_at"] == ("train_begin" if finalize_at == "auto" else finalize_at)
    assert model.config.pad_state == "finalized" and model.config.pad_partition is not None
    assert all(params_before[n] is p for n, p in model.named_parameters())  # identity kept (optimiser valid)
    assert math.isfinite(result.training_loss)
    phi = pad_layers(model)[0].phi
    assert float(phi.detach()) != 0.0  # φ was trained
