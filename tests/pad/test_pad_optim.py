"""Learning rates of their own for routers and λ (docs/pad.md, "## Learning rates"): ``PADTrainer`` splits the
optimizer's groups before the scheduler is built, the scheduled learning rates keep the ratios, the split is the
same on resume, and bad scales are rejected before any work."""

import math
import re

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, TrainerCallback, TrainingArguments

from hf_dynamic import DynamicConv2d, IMPCallback, PADTrainer, PartialMoEBertForSequenceClassification
from hf_dynamic.pad.optim import pad_parameter_kinds, scale_pad_learning_rates

from pad_testing import Rows

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=3)
LR = 1e-3


def upcycled(dynamic_ratio=0.5):
    torch.manual_seed(0)
    dense = BertForSequenceClassification(BertConfig(**TINY))
    torch.manual_seed(1)
    return PartialMoEBertForSequenceClassification.from_dense(dense, num_experts=4, dynamic_ratio=dynamic_ratio)


def trainer_for(model, out, max_steps=4, **scales):
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, use_cpu=True,
                             report_to="none", save_strategy="steps", save_steps=2, logging_steps=1,
                             learning_rate=LR, warmup_steps=2, seed=7, disable_tqdm=True)
    return PADTrainer(model=model, args=args, train_dataset=Rows(), callbacks=[IMPCallback()], **scales)


def group_of(optimizer):
    """id(param) -> (group index, group lr)."""
    return {id(p): (i, g["lr"]) for i, g in enumerate(optimizer.param_groups) for p in g["params"]}


def test_router_and_lambda_groups_get_scaled_learning_rates(tmp_path):
    model = upcycled()
    trainer = trainer_for(model, tmp_path, router_lr_scale=10.0, lambda_lr_scale=3.0)
    optimizer = trainer.create_optimizer()
    kinds = pad_parameter_kinds(model)
    routers = [n for n, p in model.named_parameters() if kinds.get(id(p)) == "router"]
    lambdas = [n for n, p in model.named_parameters() if kinds.get(id(p)) == "lambda"]
    assert len(routers) == 2 and all(".mlp.router." in n for n in routers)  # one router per layer
    assert len(lambdas) == 2 and all(n.endswith(".mlp.phi") for n in lambdas)
    groups = group_of(optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sorted(groups) == sorted(id(p) for p in trainable)  # every parameter exactly once
    for name, param in model.named_parameters():
        expected = {"router": 10 * LR, "lambda": 3 * LR}.get(kinds.get(id(param)), LR)
        assert groups[id(param)][1] == pytest.approx(expected), name


def test_scheduled_learning_rates_keep_the_ratios_and_resume_finds_the_same_groups(tmp_path):
    seen = []

    class RecordLR(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            seen.append({g.get("pad_kind", "other"): g["lr"] for g in optimizer.param_groups})

    trainer = trainer_for(upcycled(), tmp_path / "a", router_lr_scale=10.0, lambda_lr_scale=3.0)
    trainer.add_callback(RecordLR())
    trainer.train()
    others = [lrs["other"] for lrs in seen]
    assert others[1] == pytest.approx(LR) and 0 < others[0] < LR and 0 <= others[-1] < LR  # warm-up, then decay
    for lrs in seen:  # every group on the same schedule
        assert lrs["router"] == pytest.approx(10 * lrs["other"]) and lrs["lambda"] == pytest.approx(3 * lrs["other"])
    final = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    resumed = trainer_for(upcycled(), tmp_path / "b", router_lr_scale=10.0, lambda_lr_scale=3.0)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, final[key], atol=1e-6, rtol=1e-5, msg=key)


def test_scales_of_one_leave_the_optimizer_as_the_trainer_builds_it(tmp_path):
    model = upcycled()
    optimizer = trainer_for(model, tmp_path).create_optimizer()
    assert len(optimizer.param_groups) == 2  # the Trainer's decay / no-decay groups
    assert all("pad_kind" not in g for g in optimizer.param_groups)


def test_plain_moe_has_routers_but_no_lambda_and_dynamic_conv_attention_is_routing():
    model = upcycled(dynamic_ratio=1.0)
    assert sorted(set(pad_parameter_kinds(model).values())) == ["router"]
    conv = DynamicConv2d(4, 8, 3, num_kernels=4)
    kinds = pad_parameter_kinds(conv)
    attention = [n for n, p in conv.named_parameters() if id(p) in kinds]
    assert attention and all(n.startswith("attention.") for n in attention)
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.1)
    scale_pad_learning_rates(optimizer, conv, router_lr_scale=2.0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.2]


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, True, "10"])
def test_bad_scales_are_named_before_any_work(tmp_path, value):
    with pytest.raises(ValueError, match=f"router_lr_scale must be a .*got {re.escape(repr(value))}"):
        trainer_for(upcycled(), tmp_path, router_lr_scale=value)
    with pytest.raises(ValueError, match="lambda_lr_scale must be"):
        scale_pad_learning_rates(torch.optim.SGD(upcycled().parameters(), lr=0.1), upcycled(), 1.0, value)


def test_an_optimizer_that_has_stepped_is_not_split():
    model = upcycled()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model(input_ids=torch.randint(0, 100, (2, 5)), labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    with pytest.raises(ValueError, match="already stepped"):
        scale_pad_learning_rates(optimizer, model, router_lr_scale=10.0)
