"""Resuming a DynamicResNet Trainer run that used IMPCallback (``docs/pad.md``, "## Resume and distributed training"),
as ``tests/pad/test_pad_resume.py`` does for the MoE FFN: an uninterrupted 6-step run saves checkpoints at steps 3 and
6; resuming its step-3 checkpoint, written after IMP (finalised, or partitioned), ends with the uninterrupted run's
weights, masks and loss, whether the model is rebuilt with ``from_static`` (it adopts the checkpoint's layout while
the weights load) or loaded with ``from_pretrained`` first."""

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments

from hf_dynamic import DynamicResNetForImageClassification, IMPCallback

BASIC = dict(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
             num_labels=3)


def upcycled(granularity):
    torch.manual_seed(0)
    static = ResNetForImageClassification(ResNetConfig(**BASIC))
    torch.manual_seed(1)
    return DynamicResNetForImageClassification.from_static(static, num_kernels=2, dynamic_ratio=0.5,
                                                           partition_granularity=granularity)


def images(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(1, 12, 12, generator=g), "labels": int(torch.randint(0, 3, (), generator=g))}
            for _ in range(n)]


def train(model, out, callbacks, resume=None):
    args = TrainingArguments(output_dir=str(out), max_steps=6, per_device_train_batch_size=4, use_cpu=True,
                             report_to="none", save_strategy="steps", save_steps=3, logging_steps=1,
                             learning_rate=1e-2, seed=7, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=images(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def last_loss(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h][-1]


@pytest.mark.parametrize("route", ["from_static", "from_pretrained"])
@pytest.mark.parametrize("finalize_at,granularity,checkpoint_state", [
    ("train_begin", "element", "finalized"),   # after finalisation (filter mode: the adopt test below)
    ("train_end", "filter", "partitioned"),    # between IMP and finalisation
])
def test_resume_after_imp_reproduces_the_uninterrupted_run(tmp_path, route, finalize_at, granularity,
                                                             checkpoint_state):
    full = upcycled(granularity)
    full_trainer = train(full, tmp_path / "full", [IMPCallback(num_batches=2, finalize_at=finalize_at)])
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert f'"pad_state": "{checkpoint_state}"' in (checkpoint / "config.json").read_text()

    if route == "from_static":
        model = upcycled(granularity)  # masked and unpartitioned: adopts the checkpoint's layout when it loads
    else:
        model = DynamicResNetForImageClassification.from_pretrained(checkpoint)
    again = IMPCallback(num_batches=2, finalize_at=finalize_at)
    resumed = train(model, tmp_path / "resumed", [again], resume=str(checkpoint))
    assert again.summary is None  # the checkpoint's masks are kept: IMP does not run again
    assert model.config.pad_state == full.config.pad_state == "finalized"
    assert model.config.pad_partition == full.config.pad_partition
    expected, got = full.state_dict(), model.state_dict()
    assert list(got) == list(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    assert last_loss(resumed) == pytest.approx(last_loss(full_trainer), rel=1e-5)


@pytest.mark.parametrize("granularity", ["element", "filter"])
def test_parameter_order_is_the_same_after_adopting_a_layout(granularity):
    """The optimizer state is restored by position: a layer that adopted the finalised layout while loading lists
    its parameters as the layer finalised in place does."""
    from hf_dynamic import finalize_partition
    from hf_dynamic.pad.imp import pad_layers

    source = upcycled(granularity)
    g = torch.Generator().manual_seed(2)
    for layer in pad_layers(source):
        layer.set_partition_mask(torch.rand(layer.num_partition_entries, generator=g) < 0.5)
    source.config.pad_state = "partitioned"
    finalize_partition(source)
    target = upcycled(granularity)
    target.load_state_dict(source.state_dict())
    assert [(n, tuple(p.shape)) for n, p in target.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in source.named_parameters()]
    assert target.config.pad_state == "finalized" and target.config.pad_partition == source.config.pad_partition
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x).logits, source.eval()(x).logits, rtol=0, atol=0)
