"""DMSCallback and DMSTrainer: the target ramp, the keep ratios' param group, the resource loss in the Trainer's
training loss, logging."""

import pytest
import torch

from hf_dynamic.dms.callback import DMSCallback
from hf_dynamic.dms.pruner import ELEMENT_KINDS, DMSPruner
from hf_dynamic.dms.trainer import DMSTrainer

from dms_testing import VOCAB, tiny_llama, token_batch


def batch(n=2, t=12):
    return token_batch(n, t)


def test_callback_ramp_schedule():
    pruner = DMSPruner(tiny_llama(), 0.4)
    cb = DMSCallback(pruner)
    steps = 100
    values = [cb.target_at(s, steps) for s in range(steps + 1)]
    assert values[0] == 1.0
    assert values[40] == pytest.approx(1.0 - 0.6 * 0.5)
    assert values[80] == pytest.approx(0.4) and all(v == pytest.approx(0.4) for v in values[80:])
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone
    with pytest.raises(ValueError, match="target"):
        DMSCallback(pruner, target=1.2)
    with pytest.raises(ValueError, match="ramp_fraction"):
        DMSCallback(pruner, ramp_fraction=0)



def test_structure_only_search_under_trainer(tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments

    model = tiny_llama()
    model.requires_grad_(False)  # DMS fast mode: only the keep ratios train
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = DMSPruner(model, 0.5)
    callback = DMSCallback(pruner, keep_ratio_lr=0.05)
    ids = batch(16, 12)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4, logging_steps=5, report_to=[],
        save_strategy="no", use_cpu=True, learning_rate=1e-3, disable_tqdm=True,
    )
    trainer = DMSTrainer(model=model, args=args, train_dataset=data, callbacks=[callback], pruner=pruner)
    trainer.train()
    assert pruner.num_search_steps == 10
    # the target followed the ramp: after the last step begin (step 9 of 10), ramp over 8 steps -> held at 0.5
    assert pruner.current_target == pytest.approx(0.5)
    assert [h["step"] for h in callback.history][:2] == [5, 10]  # (+ the final train summary log)
    last = callback.history[-1]
    for key in ("dms/resource_soft", "dms/resource_hard", "dms/keep_heads", "dms/keep_mlp", "dms/keep_hidden",
                "dms/keep_layers", "dms/task_loss", "dms/resource_loss", "dms/target"):
        assert key in last, key
    assert any("dms/resource_soft" in entry for entry in trainer.state.log_history)
    # keep ratios moved (their own param group, lr 0.05) and stay within [1/(2N), 1]; weights untouched
    group = [g for g in trainer.optimizer.param_groups if g["lr"] == 0.05]
    assert group and len(group[0]["params"]) == len(ELEMENT_KINDS)
    for op in pruner.topk.values():
        e = op.keep_ratio.detach()
        assert (e < 1.0).all() and (e >= op.min_keep_ratio).all()
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    # the model's own loss never carries the resource loss (only DMSTrainer's training loss does)
    with torch.no_grad():
        out = model(ids[:2], labels=ids[:2])
    assert torch.equal(out.loss, model.loss_function(out.logits, ids[:2], vocab_size=VOCAB))
    exported = pruner.export()
    assert exported.num_parameters() == int(pruner.resource(hard=True))


def test_dms_trainer_adds_its_callback_and_keeps_the_keep_ratio_lr_constant(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from hf_dynamic.dms.trainer import DMSTrainerMixin

    model = tiny_llama()
    model.requires_grad_(False)
    pruner = DMSPruner(model, 0.5)
    ids = batch(8, 12)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, logging_steps=1, report_to=[],
        save_strategy="no", use_cpu=True, learning_rate=1e-3, warmup_steps=2, lr_scheduler_type="linear",
        disable_tqdm=True,
    )

    class MyTrainer(DMSTrainerMixin, Trainer):  # the mixin on a Trainer subclass of one's own
        pass

    trainer = MyTrainer(model=model, args=args, train_dataset=data, pruner=pruner)
    callbacks = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, DMSCallback)]
    assert len(callbacks) == 1 and callbacks[0].pruner is pruner
    trainer.train()
    group = trainer.optimizer.param_groups[-1]
    assert group["lr"] == callbacks[0].keep_ratio_lr  # constant: no warm-up, no decay
    assert trainer.lr_scheduler.get_last_lr()[-1] == callbacks[0].keep_ratio_lr
    assert pruner.num_search_steps == 4
    logged = [e for e in trainer.state.log_history if "loss" in e and "dms/task_loss" in e]
    assert logged and all(e["dms/resource_loss"] >= 0 for e in logged)
    with pytest.raises(ValueError, match="target"):
        pruner.set_target(0.0)


def test_a_plain_trainer_with_only_the_callback_is_refused_before_any_step(tmp_path):
    """Before: a plain Trainer trained the keep ratios on the task loss alone (no resource term) and said nothing."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = tiny_llama()
    pruner = DMSPruner(model, 0.5)
    keep = [p.detach().clone() for p in pruner.structure_parameters()]
    ids = batch(8, 12)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[DMSCallback(pruner)])
    with pytest.raises(TypeError, match="does not add the DMS resource loss.*DMSTrainer.*DMSTrainerMixin"):
        trainer.train()
    assert trainer.state.global_step == 0 and pruner.num_search_steps == 0
    assert all(torch.equal(p, k) for p, k in zip(pruner.structure_parameters(), keep))


def test_keep_ratio_lr_is_held_by_a_chained_public_scheduler():
    """The Trainer's scheduler (one schedule for every group) is chained with KeepRatioLR: the model's group
    follows the warm-up / decay, the keep ratios' stays at keep_ratio_lr; the chain's state round-trips."""
    from torch.optim.lr_scheduler import ChainedScheduler
    from transformers import get_scheduler

    pruner = DMSPruner(tiny_llama(), 0.5)
    callback = DMSCallback(pruner, keep_ratio_lr=0.02)

    def build():
        weights = torch.nn.Parameter(torch.zeros(2))
        optimizer = torch.optim.SGD([weights], lr=0.1)
        assert callback.add_keep_ratio_group(optimizer) and not callback.add_keep_ratio_group(optimizer)
        inner = get_scheduler("linear", optimizer, num_warmup_steps=2, num_training_steps=6)
        return optimizer, callback.hold_keep_ratio_lr(optimizer, inner)

    optimizer, scheduler = build()
    assert isinstance(scheduler, ChainedScheduler)
    assert callback.hold_keep_ratio_lr(optimizer, scheduler) is scheduler  # not chained twice
    assert [g["lr"] for g in optimizer.param_groups] == [0.0, 0.02]  # warm-up starts at 0; the keep ratios do not
    seen = []
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        seen.append(scheduler.get_last_lr())
    assert [lr[0] for lr in seen] == pytest.approx([0.05, 0.1, 0.075, 0.05])  # warm-up 2 steps, linear decay to 6
    assert all(lr[1] == 0.02 for lr in seen)
    again_optimizer, again = build()  # a resumed run: same chain, state loaded (as Trainer does)
    again.load_state_dict(scheduler.state_dict())
    again_optimizer.step()
    again.step()
    optimizer.step()
    scheduler.step()
    assert again.get_last_lr() == scheduler.get_last_lr() == [pytest.approx(0.025), 0.02]


def test_a_given_scheduler_built_without_the_keep_ratios_is_refused(tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments, get_scheduler

    model = tiny_llama()
    pruner = DMSPruner(model, 0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=2)
    ids = batch(8, 12)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = DMSTrainer(model=model, args=args, train_dataset=data, pruner=pruner,
                         optimizers=(optimizer, scheduler))
    with pytest.raises(ValueError, match=r"optimizers=\(optimizer, scheduler\).*structure_parameters"):
        trainer.train()
    assert pruner.num_search_steps == 0
