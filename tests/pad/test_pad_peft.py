"""LoRA (PEFT) on PartialMoEBert: adapters on attention and on the expert parameters (``target_parameters``) train
in every layout, merging gives the unmerged model's outputs, and IMP on a PEFT-wrapped model works or says what
to do (docs/pad.md, "## Mixed precision")."""

import pytest
import torch

peft = pytest.importorskip("peft")
# peft 0.21's PeftModel.__init__ calls transformers' deprecated ``is_gradient_checkpointing`` (their call path, not
# ours)
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

from hf_dynamic import PartialMoEBertConfig, PartialMoEBertForSequenceClassification  # noqa: E402
from hf_dynamic.pad.imp import iterative_mode_partition  # noqa: E402

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def batches(n=2):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 100, (4, 6), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}
            for _ in range(n)]


def model_of(granularity, finalized):
    torch.manual_seed(0)
    config = PartialMoEBertConfig(**TINY, num_experts=4, num_experts_per_tok=2, dynamic_ratio=0.5, num_labels=2,
                                  partition_granularity=granularity)
    model = PartialMoEBertForSequenceClassification(config)
    if finalized:
        iterative_mode_partition(model, batches(), iterations=1, num_batches=1)
    return model


def lora(model, experts: bool):
    config = peft.LoraConfig(r=2, target_modules=["query", "value"], init_lora_weights=False,
                             target_parameters=["up_proj", "down_proj"] if experts else None)
    return peft.get_peft_model(model, config)


@pytest.mark.parametrize("finalized", [False, True], ids=["masked", "finalized"])
@pytest.mark.parametrize("granularity", ["element", "neuron"])
def test_lora_on_attention_and_experts_trains_and_merges(granularity, finalized):
    model = lora(model_of(granularity, finalized), experts=True)
    batch = batches()[0]
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(2):  # the second step must see the first step's adapters (no stale merged weights)
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(float(loss.detach()))
        optimizer.step()
    assert losses[1] != losses[0]
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert grads and all(name.count("lora_") == 1 for name in grads)
    expert_adapters = [n for n in grads if ".mlp." in n]
    attention_adapters = [n for n in grads if ".attention." in n]
    assert expert_adapters and attention_adapters
    for name, grad in grads.items():
        if "lora_A" in name or "lora_B" in name:
            assert grad is not None and float(grad.abs().sum()) > 0, name
    model.eval()
    with torch.no_grad():
        unmerged = model(**batch).logits
        merged = model.merge_and_unload()(**batch).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("granularity", ["element", "neuron"])
def test_imp_on_a_peft_model(granularity):
    # LoRA on attention only: IMP scores, partitions and finalises the (frozen) PAD layers
    model = lora(model_of(granularity, finalized=False), experts=False)
    summary = iterative_mode_partition(model, batches(), iterations=1, num_batches=1)
    assert model.config.pad_state == "finalized" and summary["kept_counts"]
    model(**batches()[0]).loss.backward()
    # LoRA on the expert parameters: scoring works, finalising (which reshapes them) is refused up front
    model = lora(model_of(granularity, finalized=False), experts=True)
    with pytest.raises(ValueError, match="before wrapping the model with PEFT"):
        iterative_mode_partition(model, batches(), iterations=1, num_batches=1)
    assert model.config.pad_state == "unpartitioned"
    iterative_mode_partition(model, batches(), iterations=1, num_batches=1, finalize=False)
    assert model.config.pad_state == "partitioned"
    model(**batches()[0]).loss.backward()
