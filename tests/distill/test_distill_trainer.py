"""DistillationTrainer on tiny random Llamas: the loss is α·KL + (1 − α)·next-token (+ β·hidden MSE); the teacher
gets no gradients, stays in eval mode, is not in the optimizer and not in checkpoints; a resumed run ends where an
uninterrupted one does."""

import os

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from hf_dynamic import DistillationTrainer
from hf_dynamic.core.distillation import distillation_kl_loss, hidden_state_mse

VOCAB = 48


def llama(intermediate, seed):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=intermediate,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                        head_dim=8, max_position_embeddings=32, tie_word_embeddings=True))


def data(n=8, t=10):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (n, t), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100  # a "prompt" that no loss counts
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def targs(out, **kw):
    base = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2,
                report_to=[], use_cpu=True, disable_tqdm=True, seed=3, save_strategy="no", logging_steps=1)
    return TrainingArguments(**{**base, **kw})


def test_loss_is_the_alpha_mix_of_kl_next_token_and_hidden_mse(tmp_path):
    student, teacher = llama(24, 0), llama(32, 1)
    trainer = DistillationTrainer(model=student, args=targs(tmp_path), train_dataset=data(), teacher=teacher,
                                  alpha=0.3, temperature=2.0, hidden_weight=0.7)
    batch = data()[:2]
    inputs = {k: torch.tensor(v) for k, v in batch.items()}
    student.train()
    loss = trainer.compute_loss(student, inputs).detach()
    with torch.no_grad():
        s = student(**inputs, output_hidden_states=True)
        t = teacher(input_ids=inputs["input_ids"], output_hidden_states=True)
    kept = inputs["labels"] != -100  # hidden states: the tokens whose own label counts
    expected = (0.3 * distillation_kl_loss(s.logits, t.logits, 2.0, labels=inputs["labels"]) + 0.7 * s.loss
                + 0.7 * hidden_state_mse(s.hidden_states, t.hidden_states, kept))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    student.eval()  # evaluation: the student's own loss
    assert float(trainer.compute_loss(student, inputs)) == pytest.approx(float(s.loss), rel=1e-5)


def test_teacher_is_frozen_in_eval_mode_outside_the_optimizer_and_the_checkpoints(tmp_path):
    student, teacher = llama(24, 0), llama(32, 1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()
    trainer = DistillationTrainer(model=student, args=targs(tmp_path, save_strategy="steps", save_steps=4),
                                  train_dataset=data(), teacher=teacher, alpha=1.0)
    trainer.train()
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    assert in_optimizer == {id(p) for p in student.parameters()}
    saved = load_file(os.path.join(tmp_path, "checkpoint-4", "model.safetensors"))
    shapes = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in saved.items()}.items() <= shapes.items()
    assert saved["model.layers.0.mlp.up_proj.weight"].shape[0] == 24  # the student's, not the teacher's 32


def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
    def run(out, resume=None):
        trainer = DistillationTrainer(model=llama(24, 0), args=targs(out, save_strategy="steps", save_steps=2),
                                      train_dataset=data(), teacher=llama(32, 1), alpha=0.5, temperature=2.0)
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model.state_dict(), [h["loss"] for h in trainer.state.log_history if "loss" in h]

    full, losses = run(tmp_path / "full")
    resumed, resumed_losses = run(tmp_path / "full_again", resume=str(tmp_path / "full" / "checkpoint-2"))
    assert resumed_losses == pytest.approx(losses, rel=1e-6)  # the first two come from the checkpoint's state
    for k, v in full.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=1e-7)


def test_alpha_zero_never_runs_a_teacher_and_bad_settings_raise(tmp_path):
    student = llama(24, 0)
    trainer = DistillationTrainer(model=student, args=targs(tmp_path), train_dataset=data(), alpha=0.0)
    assert trainer.teacher is None
    inputs = {k: torch.tensor(v) for k, v in data()[:2].items()}
    student.train()
    assert float(trainer.compute_loss(student, inputs)) == pytest.approx(float(student(**inputs).loss), rel=1e-6)
    with pytest.raises(TypeError, match="teacher"):
        DistillationTrainer(model=student, args=targs(tmp_path), train_dataset=data(), alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        DistillationTrainer(model=student, args=targs(tmp_path), teacher=llama(32, 1), alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        DistillationTrainer(model=student, args=targs(tmp_path), teacher=llama(32, 1), temperature=0)
    with pytest.raises(ValueError, match="share parameters"):
        DistillationTrainer(model=student, args=targs(tmp_path), teacher=student)
