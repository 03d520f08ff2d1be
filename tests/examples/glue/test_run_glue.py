"""examples/glue/run_glue.py end to end on the real MiniLM and a slice of the real MRPC."""

import json
import os
import sys

import pytest

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SHARED_GLUE = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "glue"))

sys.path.insert(0, os.path.join(REPO, "examples", "glue"))

import run_glue  # noqa: E402


def test_dense_mrpc_slice_writes_metrics(tmp_path):
    results = run_glue.main([
        "--task", "mrpc", "--data_dir", SHARED_GLUE, "--max_train_samples", "16", "--max_eval_samples", "24",
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path),
        "--disable_tqdm", "true",
    ])
    with open(tmp_path / "eval_results.json") as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(results))
    metrics = written["metrics"]["validation"]
    assert {"accuracy", "f1", "loss"} <= set(metrics)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    # 24 dev rows, so accuracy is a multiple of 1/24.
    assert abs(metrics["accuracy"] * 24 - round(metrics["accuracy"] * 24)) < 1e-6
    assert written["num_parameters"] > 22_000_000


def test_unknown_variant_is_rejected_before_work(tmp_path):
    with pytest.raises(ValueError, match="--variant 'nope'"):
        run_glue.main(["--variant", "nope", "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_drop_upcycling_outside_unit_interval_is_rejected_before_work(tmp_path, value):
    with pytest.raises(ValueError, match=f"--moe_drop_upcycling must be in \\[0, 1\\], got {value}"):
        run_glue.main(["--variant", "moe", "--moe_drop_upcycling", value, "--output_dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_unknown_task_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="'mnli2'"):
        run_glue.main(["--task", "mnli2", "--output_dir", str(tmp_path)])


def test_default_output_dir_names_task_variant_and_seed():
    script_args, training_args, _, _ = run_glue.parse_args(["--task", "rte", "--variant", "pad_moe", "--seed", "3"])
    assert training_args.output_dir == os.path.join("outputs", "glue", "rte-pad_moe-s3")
    _, explicit, _, _ = run_glue.parse_args(["--output_dir", "/tmp/somewhere"])
    assert explicit.output_dir == "/tmp/somewhere"
    with pytest.raises(ValueError, match=r"--output_dir 'out/\{name\}': only \{task\}"):
        run_glue.parse_args(["--output_dir", "out/{name}"])


# peft 0.21's PeftModel.__init__ calls transformers' deprecated ``is_gradient_checkpointing`` (their call path)
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_pemn_variant_masks_random_encoder_linears_and_reports_storage(tmp_path):
    """--variant pemn: only the scores of the 36 encoder Linear layers and the head train; the stored bytes are
    one bit per masked weight (+ the recipe), ~1/32 of their fp32 weights."""
    results = run_glue.main([
        "--task", "mrpc", "--data_dir", SHARED_GLUE, "--variant", "pemn", "--max_train_samples", "16",
        "--max_eval_samples", "16", "--max_steps", "1", "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-3", "--output_dir", str(tmp_path), "--save_model", "false", "--disable_tqdm", "true",
    ])
    pemn = results["pemn"]
    hidden, intermediate, layers = 384, 1536, 6
    numel = layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    assert pemn["masked_layers"] == 6 * layers and pemn["masked_weights"] == numel
    assert pemn["dense_fp32_bytes_masked_layers"] == 4 * numel
    assert numel // 8 < pemn["stored_bytes_masked_layers"] < numel // 8 + 1024
    head = hidden * 2 + 2  # the classifier, trained in full
    assert pemn["trainable_parameters"] == numel + head
    assert 0.0 <= results["metrics"]["validation"]["accuracy"] <= 1.0


def test_pad_variants_train_with_router_and_lambda_learning_rate_scales():
    import variant_pad

    from hf_dynamic import PADTrainer

    script_args, _, by_variant, variant_args = run_glue.parse_args(
        ["--variant", "pad_moe", "--router_lr_scale", "10", "--lambda_lr_scale", "3"])
    module = by_variant["pad_moe"]
    assert module is variant_pad
    cls, kwargs = module.trainer_class_and_kwargs("pad_moe", script_args, variant_args[module.__name__])
    assert cls is PADTrainer and kwargs == {"router_lr_scale": 10.0, "lambda_lr_scale": 3.0}


def test_expert_spread_is_zero_after_upcycling_and_measures_how_far_experts_moved():
    import torch
    import variant_pad
    from transformers import BertConfig, BertForSequenceClassification

    from hf_dynamic import PartialMoEBertForSequenceClassification

    torch.manual_seed(0)
    dense = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=32))
    model = PartialMoEBertForSequenceClassification.from_dense(dense, num_experts=4, dynamic_ratio=1.0)
    assert variant_pad.expert_spread(model) == {"0": 0.0, "1": 0.0}
    mlp = model.bert.encoder.layer[1].mlp
    with torch.no_grad():
        mlp.up_proj[0].mul_(2.0)
        mlp.down_proj[0].mul_(2.0)
    weights = torch.cat([mlp.up_proj.reshape(4, -1), mlp.down_proj.reshape(4, -1)], dim=1).detach()
    mean = weights.mean(0, keepdim=True)
    expected = float((weights - mean).norm(dim=1).mean() / mean.norm())
    spread = variant_pad.expert_spread(model)
    # one of 4 experts doubled: mean 1.25 w, deviations 0.75 w and 3 × 0.25 w: (0.75 + 0.75) / 4 / 1.25 = 0.3
    assert expected == pytest.approx(0.3, rel=1e-5)
    assert spread["0"] == 0.0 and spread["1"] == pytest.approx(expected)


def test_carve_split_is_disjoint_stratified_and_fixed_by_its_seed():
    import numpy as np

    labels = np.array([0] * 70 + [1] * 30)
    kept, carved = run_glue.carve_split(labels, 0.1, seed=0)
    assert len(carved) == 10 and len(kept) == 90
    assert set(kept).isdisjoint(carved) and sorted([*kept, *carved]) == list(range(100))
    assert (labels[carved] == 1).sum() == 3  # each class keeps its share
    again_kept, again_carved = run_glue.carve_split(labels, 0.1, seed=0)
    assert np.array_equal(again_carved, carved) and np.array_equal(again_kept, kept)
    assert not np.array_equal(run_glue.carve_split(labels, 0.1, seed=1)[1], carved)
    with pytest.raises(ValueError, match="fraction must be in \\(0, 1\\), got 1.0"):
        run_glue.carve_split(labels, 1.0, seed=0)


def test_carve_validation_out_of_range_is_rejected_before_work(tmp_path):
    with pytest.raises(ValueError, match="--carve_validation must be a fraction in \\(0, 1\\), got 0.0"):
        run_glue.main(["--carve_validation", "0", "--output_dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_carved_rows_leave_training_and_dev_untouched_on_real_mrpc():
    from hf_dynamic.data.glue import GLUE_TASKS, load_glue

    raw = load_glue("mrpc", data_dir=SHARED_GLUE)
    train_idx, dev_idx = list(raw["train"]["idx"]), list(raw["validation"]["idx"])
    carve = run_glue.carve_raw(raw, GLUE_TASKS["mrpc"], 0.1, seed=0)
    assert set(raw) == {"train", "carved"}  # dev is not evaluated under a carve
    carved, kept = list(raw["carved"]["idx"]), list(raw["train"]["idx"])
    assert set(carved).isdisjoint(kept) and sorted(carved + kept) == sorted(train_idx)
    assert carve["num_carved"] == len(carved) == 367 and carve["num_train"] == 3668 - 367
    # the unmodified dev split still loads whole (the carve never writes into the data)
    assert list(load_glue("mrpc", data_dir=SHARED_GLUE)["validation"]["idx"]) == dev_idx


def test_carved_run_evaluates_only_the_carved_rows_the_same_for_every_variant_and_seed(tmp_path):
    common = ["--task", "mrpc", "--data_dir", SHARED_GLUE, "--carve_validation", "0.1", "--carve_seed", "0",
              "--max_train_samples", "8", "--max_eval_samples", "16", "--max_steps", "1",
              "--per_device_train_batch_size", "8", "--save_model", "false", "--disable_tqdm", "true"]
    dense = run_glue.main(common + ["--seed", "4", "--output_dir", str(tmp_path / "dense")])
    other = run_glue.main(common + ["--seed", "5", "--variant", "joint_exit", "--exit_layers", "3,6",
                                    "--output_dir", str(tmp_path / "exit")])
    assert list(dense["metrics"]) == ["carved"] and list(other["metrics"]) == ["carved"]
    assert dense["carve"] == other["carve"]
    assert dense["carve"]["fraction"] == 0.1 and dense["carve"]["num_carved"] == 367
    assert "carved" in other["exits"] and "validation" not in other["exits"]
