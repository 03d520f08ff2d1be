"""Resuming a DMSTrainer run (docs/dms.md, "## Resume"): the pruner's state (keep ratios, Taylor importance EMA,
adapted resource weight, target ramp) and the keep ratios' param group survive, so an interrupted + resumed search
ends where the uninterrupted one does."""

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments

from hf_dynamic.dms.callback import PRUNER_STATE_NAME
from hf_dynamic.dms.pruner import DMSPruner
from hf_dynamic.dms.trainer import DMSTrainer

from dms_testing import tiny_llama, token_batch


def search(out, resume=None):
    torch.manual_seed(0)
    model = tiny_llama()
    pruner = DMSPruner(model, 0.5, resource_weight_adapt=0.1)
    torch.manual_seed(1)
    ids = token_batch(24, 12)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(output_dir=str(out), max_steps=6, per_device_train_batch_size=4, logging_steps=1,
                             save_strategy="steps", save_steps=3, report_to=[], use_cpu=True, learning_rate=1e-3,
                             seed=3, disable_tqdm=True)
    trainer = DMSTrainer(model=model, args=args, train_dataset=data, pruner=pruner)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, model, pruner


def test_resumed_search_equals_the_uninterrupted_one(tmp_path):
    trainer, model, pruner = search(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert (checkpoint / PRUNER_STATE_NAME).is_file()
    resumed_trainer, resumed_model, resumed_pruner = search(tmp_path / "resumed", resume=str(checkpoint))

    assert resumed_pruner.resource_weight == pytest.approx(pruner.resource_weight)
    assert resumed_pruner.resource_weight != 1.0  # the adaptive weight moved (the test has teeth)
    assert resumed_pruner.current_target == pytest.approx(pruner.current_target)
    assert resumed_pruner.num_search_steps == pruner.num_search_steps == 6
    for name, value in pruner.state_dict().items():
        if torch.is_tensor(value):
            torch.testing.assert_close(resumed_pruner.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name)
    # the keep ratios kept their own constant-lr group through the resume
    groups = resumed_trainer.optimizer.param_groups
    assert len(groups) == len(trainer.optimizer.param_groups) and groups[-1]["lr"] == pytest.approx(1e-2)
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (trainer, resumed_trainer)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)  # steps 1-3 come from the checkpoint's log history


def test_resume_without_the_pruner_state_is_a_clear_error(tmp_path):
    search(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoint-3"
    (checkpoint / PRUNER_STATE_NAME).unlink()
    with pytest.raises(ValueError, match="pruner's state"):
        search(tmp_path / "resumed", resume=str(checkpoint))


def test_resume_from_true_restores_the_last_checkpoint_through_public_seams(tmp_path):
    from transformers import Trainer

    from hf_dynamic.dms.trainer import DMSTrainerMixin

    # the mixin overrides no private Trainer method (project rule: public seams only)
    private = [n for n in vars(DMSTrainerMixin) if n.startswith("_") and not n.startswith("__")]
    assert [n for n in private if hasattr(Trainer, n)] == []
    _, _, pruner = search(tmp_path / "run")
    _, _, resumed_pruner = search(tmp_path / "run", resume=True)  # checkpoint-6: nothing left to train
    assert resumed_pruner.num_search_steps == pruner.num_search_steps == 6
    assert resumed_pruner.resource_weight == pytest.approx(pruner.resource_weight)
    for name, value in pruner.state_dict().items():
        if torch.is_tensor(value):
            torch.testing.assert_close(resumed_pruner.state_dict()[name], value, msg=name)
