"""SlimmableTrainer: the sandwich loss equals its formula, options are validated, and a run resumed from a
Trainer checkpoint equals an uninterrupted one."""

import pytest
import torch
from slim_testing import tiny_bert, tokens
from transformers import TrainingArguments

from hf_dynamic.core.distillation import distillation_kl_loss
from hf_dynamic.slim.modeling import make_slimmable, width
from hf_dynamic.slim.trainer import SlimmableTrainer, sandwich_widths


def dataset(n=16):
    x = tokens(n, 8)
    labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(2))
    return [{"input_ids": x[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-2, max_steps=4,
                save_steps=2, save_strategy="steps", logging_strategy="no", report_to=[], use_cpu=True, seed=3,
                dataloader_num_workers=0, disable_tqdm=True)
    return TrainingArguments(**{**base, **kw})


def test_sandwich_widths_are_a_function_of_seed_and_step():
    a = sandwich_widths(0.25, 3, seed=3, step=7)
    assert a[:2] == [1.0, 0.25] and len(a) == 5 and all(0.25 <= w <= 1.0 for w in a[2:])
    assert a == sandwich_widths(0.25, 3, seed=3, step=7)
    assert a != sandwich_widths(0.25, 3, seed=3, step=8)


def test_loss_is_task_loss_plus_distillation_at_each_width(tmp_path):
    model = make_slimmable(tiny_bert())
    trainer = SlimmableTrainer(model=model, args=args(tmp_path), train_dataset=dataset(), num_random_widths=2,
                               min_width=0.25, temperature=2.0)
    batch = trainer.data_collator(dataset()[:4])
    model.train()
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        out = model(**batch)
        expected = out.loss
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        for w in sandwich_widths(0.25, 2, seed=3, step=0)[1:]:
            with width(model, w):
                expected = expected + distillation_kl_loss(model(**inputs).logits[:, None], out.logits[:, None], 2.0)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=1e-6)
    assert loss.requires_grad


@pytest.mark.parametrize("kw, message", [
    (dict(num_random_widths=-1), "num_random_widths must be an integer >= 0, got -1"),
    (dict(num_random_widths=1.5), "num_random_widths must be an integer"),
    (dict(min_width=0.0), "min_width must be a number > 0 and <= 1, got 0.0"),
    (dict(min_width=1.2), "min_width must be a number > 0 and <= 1, got 1.2"),
    (dict(min_width=0.01), "width=0.01 keeps 0 of 4 attention head groups"),
    (dict(temperature=0), "temperature must be a number > 0, got 0"),
])
def test_bad_options_are_value_errors(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        SlimmableTrainer(model=make_slimmable(tiny_bert()), args=args(tmp_path), train_dataset=dataset(), **kw)


def test_model_must_be_slimmable(tmp_path):
    with pytest.raises(ValueError, match="not slimmable"):
        SlimmableTrainer(model=tiny_bert(), args=args(tmp_path), train_dataset=dataset())


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    model = make_slimmable(tiny_bert())
    start = {k: v.clone() for k, v in model.state_dict().items()}
    SlimmableTrainer(model=model, args=args(tmp_path / "a"), train_dataset=dataset(), num_random_widths=2).train()
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())

    resumed = make_slimmable(tiny_bert())
    trainer = SlimmableTrainer(model=resumed, args=args(tmp_path / "a"), train_dataset=dataset(), num_random_widths=2)
    trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, atol=1e-6, rtol=1e-6, msg=k)


def test_causal_lm_distills_on_attended_tokens(tmp_path):
    from slim_testing import tiny_llama

    model = make_slimmable(tiny_llama())
    x = tokens(2, 8)
    mask = torch.ones_like(x); mask[1, 5:] = 0
    labels = x.masked_fill(mask == 0, -100)
    data = [{"input_ids": x[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(2)]
    trainer = SlimmableTrainer(model=model, args=args(tmp_path), train_dataset=data, num_random_widths=1,
                               min_width=0.5, temperature=1.5)
    batch = {"input_ids": x, "attention_mask": mask, "labels": labels}
    model.train()
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        out = model(**batch)
        expected = out.loss
        keep = mask.bool()
        for w in sandwich_widths(0.5, 1, seed=3, step=0)[1:]:
            with width(model, w):
                student = model(input_ids=x, attention_mask=mask).logits
            # the KL on the attended tokens only, written out
            p = torch.log_softmax(out.logits[keep] / 1.5, -1)
            q = torch.log_softmax(student[keep] / 1.5, -1)
            expected = expected + (p.exp() * (p - q)).sum(-1).mean() * 1.5**2
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
