"""Resuming a Trainer run that used IMPCallback (docs/pad.md, "## Resume and distributed training").

An uninterrupted 6-step run saves checkpoints at steps 3 and 6; resuming its step-3 checkpoint must end with the
uninterrupted run's weights, masks and loss, by either route a user takes: rebuild the model with ``from_dense`` and
``trainer.train(resume_from_checkpoint=...)``, or ``from_pretrained(checkpoint)`` first. The checkpoint is written
before IMP (a run without IMP), between IMP and finalisation (``finalize_at="train_end"``) or after finalisation
(``"train_begin"``).
"""

import math
import re

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from hf_dynamic import IMPCallback, PartialMoEBertForSequenceClassification
from hf_dynamic.core.checkpoints import check_optimizer_state_shapes
from hf_dynamic.pad.imp import pad_layers

from pad_testing import Rows

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=3)


def upcycled(granularity):
    torch.manual_seed(0)
    dense = BertForSequenceClassification(BertConfig(**TINY))
    torch.manual_seed(1)
    return PartialMoEBertForSequenceClassification.from_dense(
        dense, num_experts=4, dynamic_ratio=0.5, partition_granularity=granularity)


def train(model, out, callbacks, resume=None, max_steps=6):
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, use_cpu=True,
                             report_to="none", save_strategy="steps", save_steps=3, logging_steps=1,
                             learning_rate=1e-3, seed=7, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=callbacks)
    result = trainer.train(resume_from_checkpoint=resume)
    return trainer, result


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_model(a, b):
    assert a.config.pad_state == b.config.pad_state and a.config.pad_partition == b.config.pad_partition
    sa, sb = state_of(a), state_of(b)
    assert list(sa) == list(sb)
    for key in sa:  # same data order, same RNG: equal up to float reassociation
        torch.testing.assert_close(sa[key], sb[key], atol=1e-6, rtol=1e-5, msg=key)


def last_loss(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h][-1]


@pytest.mark.parametrize("route", ["from_dense", "from_pretrained"])
@pytest.mark.parametrize("finalize_at,granularity,checkpoint_state", [
    ("train_begin", "neuron", "finalized"),      # after finalisation
    ("train_begin", "element", "finalized"),
    ("train_end", "neuron", "partitioned"),      # between IMP and finalisation
])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, route, finalize_at, granularity, checkpoint_state):
    full = upcycled(granularity)
    imp = IMPCallback(num_batches=2, finalize_at=finalize_at)
    trainer, _ = train(full, tmp_path / "full", [imp])
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert '"pad_state": "%s"' % checkpoint_state in (checkpoint / "config.json").read_text()

    if route == "from_dense":
        model = upcycled(granularity)   # unpartitioned; the checkpoint's layout is adopted when it loads
    else:
        model = PartialMoEBertForSequenceClassification.from_pretrained(checkpoint)
    again = IMPCallback(num_batches=2, finalize_at=finalize_at)
    resumed, _ = train(model, tmp_path / "resumed", [again], resume=str(checkpoint))
    assert again.summary is None  # IMP never re-runs on a model that has masks
    assert model.config.pad_state == "finalized"
    assert_same_model(full, model)
    assert last_loss(resumed) == pytest.approx(last_loss(trainer), rel=1e-5)


@pytest.mark.parametrize("route", ["from_dense", "from_pretrained"])
def test_resume_of_a_checkpoint_written_before_imp_runs_imp_once(tmp_path, route):
    """A checkpoint of a run that had not partitioned yet (no masks): the resumed run runs IMP on its weights."""
    train(upcycled("neuron"), tmp_path / "plain", [], max_steps=3)
    checkpoint = tmp_path / "plain" / "checkpoint-3"
    results = {}
    for name in ("from_dense", "from_pretrained"):
        model = (upcycled("neuron") if name == "from_dense"
                 else PartialMoEBertForSequenceClassification.from_pretrained(checkpoint))
        imp = IMPCallback(num_batches=2, finalize_at="train_begin")
        trainer, result = train(model, tmp_path / name, [imp], resume=str(checkpoint))
        assert imp.summary is not None and model.config.pad_state == "finalized"
        assert math.isfinite(result.training_loss)
        results[name] = model
    assert_same_model(results["from_dense"], results["from_pretrained"])


@pytest.mark.parametrize("granularity", ["element", "neuron"])
def test_parameter_order_is_the_same_in_every_layout(tmp_path, granularity):
    """The optimizer's state is restored by position: a finalised model built from its config must list its
    parameters in the order of the masked model it was finalised from."""
    from hf_dynamic import iterative_mode_partition

    model = upcycled(granularity)
    masked_order = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    g = torch.Generator().manual_seed(3)
    batches = [{"input_ids": torch.randint(0, 100, (4, 9), generator=g),
                "labels": torch.randint(0, 3, (4,), generator=g)} for _ in range(2)]
    iterative_mode_partition(model, batches, num_batches=2)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in masked_order]
    model.save_pretrained(tmp_path)
    loaded = PartialMoEBertForSequenceClassification.from_pretrained(tmp_path)
    assert ([(n, tuple(p.shape)) for n, p in loaded.named_parameters()]
            == [(n, tuple(p.shape)) for n, p in model.named_parameters()])


def test_optimizer_state_of_other_shapes_is_a_clear_error():
    model = upcycled("neuron")
    params = [p for _, p in model.named_parameters()]
    optimizer = torch.optim.AdamW(params)
    swapped = torch.optim.AdamW(params)
    swapped.state[params[0]] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3),
                                "exp_avg_sq": torch.zeros(3)}
    check_optimizer_state_shapes(optimizer, model)  # no state yet: fine
    name = next(n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match=f"'exp_avg' of parameter {re.escape(name)} has shape \\(3,\\)"):
        check_optimizer_state_shapes(swapped, model)


def test_imp_callback_does_not_rerun_on_a_model_with_masks():
    """A from_dense model whose masks were loaded (pad_state still says unpartitioned) is treated as partitioned."""
    from hf_dynamic import iterative_mode_partition

    source = upcycled("element")
    g = torch.Generator().manual_seed(3)
    batches = [{"input_ids": torch.randint(0, 100, (4, 9), generator=g),
                "labels": torch.randint(0, 3, (4,), generator=g)} for _ in range(2)]
    iterative_mode_partition(source, batches, num_batches=2, finalize=False)
    target = upcycled("element")
    target.load_state_dict(source.state_dict())
    assert target.config.pad_state == "partitioned"
    assert all(torch.equal(a.partition_mask(), b.partition_mask())
               for a, b in zip(pad_layers(source), pad_layers(target)))
