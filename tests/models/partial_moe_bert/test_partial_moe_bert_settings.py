"""PartialMoEBert settings a user expects to act: gradient checkpointing (legacy config field and the Trainer's
argument) really recomputes the MoE layers, unknown ``from_dense`` keywords are a TypeError, and a folder loads with
the model's own config object (``docs/pad.md``, "## Partially dynamic MoE")."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from hf_dynamic import PartialMoEBertConfig, PartialMoEBertForSequenceClassification
from hf_dynamic.pad.layers import PartialDynamicFFN

from pad_testing import Rows

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def moe_config(**kw):
    return PartialMoEBertConfig(**{**TINY, "num_experts": 4, "num_experts_per_tok": 2, **kw})


def count_ffn_calls(model) -> list[int]:
    """A one-element counter of the forward calls of every MoE FFN of ``model`` (recomputations included)."""
    calls = [0]

    def hook(module, args):
        calls[0] += 1

    for module in model.modules():
        if isinstance(module, PartialDynamicFFN):
            module.register_forward_pre_hook(hook)
    return calls


def loss_and_grads(model, ids, labels):
    model.zero_grad()
    model(input_ids=ids, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("granularity", ["element", "neuron"])
def test_legacy_gradient_checkpointing_config_recomputes_the_moe_layers(granularity):
    torch.manual_seed(0)
    plain = PartialMoEBertForSequenceClassification(moe_config(partition_granularity=granularity)).train()
    checkpointed = PartialMoEBertForSequenceClassification(
        moe_config(partition_granularity=granularity, gradient_checkpointing=True)).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.is_activation_checkpointing
    ids, labels = torch.randint(0, 100, (3, 7)), torch.tensor([0, 1, 2])
    calls_plain, calls_checkpointed = count_ffn_calls(plain), count_ffn_calls(checkpointed)
    expected = loss_and_grads(plain, ids, labels)
    got = loss_and_grads(checkpointed, ids, labels)
    assert calls_plain[0] == 2 and calls_checkpointed[0] == 4  # each of the 2 MoE layers runs again in backward
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_trainer_gradient_checkpointing_recomputes_the_moe_layers(tmp_path):
    torch.manual_seed(0)
    model = PartialMoEBertForSequenceClassification(moe_config())
    calls = count_ffn_calls(model)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, use_cpu=True,
                             report_to="none", save_strategy="no", activation_checkpointing=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=Rows(4)).train()
    assert calls[0] == 4  # one step: 2 MoE layers, each forward once and recomputed once


def test_from_dense_rejects_unknown_keywords():
    dense = BertForSequenceClassification(BertConfig(**TINY))
    with pytest.raises(TypeError, match="num_expert.*num_experts_per_token|num_experts_per_token.*num_expert"):
        PartialMoEBertForSequenceClassification.from_dense(dense, num_expert=8, num_experts_per_token=2)


@pytest.mark.parametrize("kwargs", [dict(dynamic_ratio=0.5), dict(dynamic_ratio=1.0)])
def test_from_pretrained_with_the_models_own_config(tmp_path, kwargs):
    """transformers' ``test_load_with_mismatched_shapes`` loads ``from_pretrained(folder, config=model.config)``."""
    torch.manual_seed(0)
    model = PartialMoEBertForSequenceClassification(moe_config(**kwargs)).eval()
    model.save_pretrained(tmp_path)
    loaded = PartialMoEBertForSequenceClassification.from_pretrained(tmp_path, config=model.config).eval()
    ids = torch.randint(0, 100, (2, 5))
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
