"""Mixed-precision matrix on the CPU (docs/pad.md and docs/dms.md, "## Mixed precision"): a few ``Trainer`` steps of
PartialMoEBert with IMP, of the boosted early-exit model and of a DMS search, in fp32, bf16 autocast and fp16
autocast as ``Trainer(fp16=True)`` sets it up on the CPU (accelerate makes no GradScaler there, and the fp16 runs
measured identical to fp32; the GradScaler path is tested in tests/core/test_core_topk_mixed_precision.py). Losses are finite and what each
method decides (IMP masks, exit thresholds, DMS keep ratios and kept elements) equals the fp32 run's, or stays
within the tolerances stated at each check."""

import pytest
import torch
from transformers import BertConfig, Trainer, TrainingArguments

from hf_dynamic import (
    BoostedEarlyExitConfig,
    BoostedEarlyExitForSequenceClassification,
    DMSPruner,
    DMSTrainer,
    IMPCallback,
    PartialMoEBertConfig,
    PartialMoEBertForSequenceClassification,
)
from hf_dynamic.boost.calibration import calibrate_thresholds

from dms_testing import VOCAB, tiny_llama

PRECISIONS = {"fp32": {}, "bf16": {"bf16": True}, "fp16": {"fp16": True}}
BERT = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
STEPS = 4


def classification_data(n=16, length=8):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (n, length), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(length, dtype=torch.long),
             "labels": ids[i, 0] % 2} for i in range(n)]


def lm_data(n=16, length=10):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (n, length), generator=g)
    return [{"input_ids": ids[i], "labels": ids[i]} for i in range(n)]


def train(model, data, precision, tmp_path, trainer_class=Trainer, **kwargs):
    args = TrainingArguments(str(tmp_path / precision), max_steps=STEPS, per_device_train_batch_size=4,
                             learning_rate=1e-3, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                             seed=0, data_seed=0, **PRECISIONS[precision])
    trainer = trainer_class(model=model, args=args, train_dataset=data, **kwargs)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses))), losses
    return trainer, losses


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every method trained once per precision (shared by the checks below)."""
    out = {}
    for precision in PRECISIONS:
        tmp = tmp_path_factory.mktemp(precision)
        torch.manual_seed(0)
        moe = PartialMoEBertForSequenceClassification(PartialMoEBertConfig(
            **BERT, num_labels=2, num_experts=4, num_experts_per_tok=2, dynamic_ratio=0.5))
        imp = IMPCallback(iterations=2, num_batches=2)
        _, moe_losses = train(moe, classification_data(), precision, tmp, callbacks=[imp])

        torch.manual_seed(0)
        boosted = BoostedEarlyExitForSequenceClassification(BoostedEarlyExitConfig(
            backbone=BertConfig(**BERT), num_labels=2, classifier_dropout=0.0))
        trainer, boosted_losses = train(boosted, classification_data(), precision, tmp / "boost")
        calibration = calibrate_thresholds(boosted.eval(), trainer.get_train_dataloader(), budget=0.6)

        torch.manual_seed(0)
        llama = tiny_llama().train()
        pruner = DMSPruner(llama, 0.6, prune=("heads", "mlp", "hidden"))
        _, dms_losses = train(llama, lm_data(), precision, tmp / "dms", trainer_class=DMSTrainer, pruner=pruner)
        out[precision] = dict(moe=moe, imp=imp.summary, moe_losses=moe_losses, boosted_losses=boosted_losses,
                              thresholds=torch.as_tensor(calibration.thresholds, dtype=torch.float32),
                              pruner=pruner, dms_losses=dms_losses)
    return out


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_imp_masks_equal_fp32_and_training_stays_close(runs, precision):
    ref, got = runs["fp32"], runs[precision]
    # IMP scores inside the Trainer's autocast (accelerate wraps the model's forward), so entries whose scores tie
    # within the autocast dtype's rounding may swap across the cut: the global count is exact, and at most 3 % of
    # the entries change sides (measured: ≈1 % in bf16, 0 % in fp16)
    got_layers, ref_layers = got["moe"].pad_layers(), ref["moe"].pad_layers()
    assert got["imp"]["kept_counts"] == ref["imp"]["kept_counts"]
    for a, b in zip(got_layers, ref_layers):
        for part, _ in a.partition_counts().items():
            mask_a, mask_b = a.storage.masks(a)[part], b.storage.masks(b)[part]
            assert (mask_a != mask_b).float().mean() <= 0.03, part
    # the losses follow the fp32 run within the autocast dtype's resolution (bf16: 2^-8 relative, compounded)
    torch.testing.assert_close(torch.tensor(got["moe_losses"]), torch.tensor(ref["moe_losses"]), rtol=2e-2, atol=0)
    for a, b in zip(got_layers, ref_layers):
        assert a.phi.dtype == torch.float32
        assert abs(float(a.lambdas()[1].detach()) - float(b.lambdas()[1].detach())) < 1e-3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_boosted_exit_thresholds_close_to_fp32(runs, precision):
    ref, got = runs["fp32"], runs[precision]
    torch.testing.assert_close(torch.tensor(got["boosted_losses"]), torch.tensor(ref["boosted_losses"]), rtol=2e-2,
                               atol=0)
    # thresholds are confidences in [0, 1], calibrated on the trained weights: within 0.02 of fp32's
    torch.testing.assert_close(got["thresholds"], ref["thresholds"], rtol=0, atol=2e-2)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_dms_keep_ratios_and_kept_elements_equal_fp32(runs, precision):
    ref, got = runs["fp32"], runs[precision]
    torch.testing.assert_close(torch.tensor(got["dms_losses"]), torch.tensor(ref["dms_losses"]), rtol=2e-2, atol=0)
    for kind, op in got["pruner"].topk.items():
        ref_op = ref["pruner"].topk[kind]
        assert op.importance.dtype == torch.float32 and op.keep_ratio.dtype == torch.float32
        assert int(op.num_skipped) == 0 and int(op.num_updates) == int(ref_op.num_updates)
        # keep ratios (Adam steps of 1e-2 from 1.0): within 1e-3 of fp32's; the same elements kept
        torch.testing.assert_close(op.keep_ratio.detach(), ref_op.keep_ratio.detach(), rtol=0, atol=1e-3)
        assert torch.equal(op.kept_counts(), ref_op.kept_counts()), kind
        # the elements kept: the same count; near-ties in the importance may swap (measured: 1.4 % of the MLP
        # channels in bf16 after 4 steps), at most 5 % of the elements
        assert (op.hard_mask() != ref_op.hard_mask()).float().mean() <= 0.05, kind
        # importance: within 5 % of the largest value (measured: 1.9 % in bf16; activations rounded to bf16)
        scale = float(ref_op.importance.abs().max())
        assert float((op.importance - ref_op.importance).abs().max()) <= 0.05 * scale, kind
