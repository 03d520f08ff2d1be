"""Budget calibration of boosted early exits (docs/boost.md, "## Calibration"; MSDNet budgeted batch classification)."""

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

import hf_dynamic
from hf_dynamic import BoostedEarlyExitConfig, BoostedEarlyExitForSequenceClassification
from hf_dynamic.boost.calibration import (
    collect_exit_logits,
    exit_fractions,
    simulate_exits,
    solve_exit_fractions,
    thresholds_for_fractions,
)

VOCAB = 60


def tiny_model(criterion="confidence", exit_layers=(1, 2, 3, 4), num_labels=3):
    backbone = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                          intermediate_size=24, max_position_embeddings=32)
    config = BoostedEarlyExitConfig(backbone=backbone, num_labels=num_labels, exit_layers=list(exit_layers),
                                    exit_criterion=criterion)
    model = BoostedEarlyExitForSequenceClassification(config).eval()
    with torch.no_grad():  # make the heads' confidences spread out
        for head in model.exit_heads:
            head.classifier.weight.mul_(40)
    return model


def loader(n=240, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, 10), generator=g)
    mask = torch.ones(n, 10, dtype=torch.long)
    mask[::3, 7:] = 0
    labels = torch.randint(0, 3, (n,), generator=g)
    return [
        {"input_ids": ids[i:i + batch], "attention_mask": mask[i:i + batch], "labels": labels[i:i + batch]}
        for i in range(0, n, batch)
    ]


def test_solve_exit_fractions_hits_budget_and_geometric_shape():
    costs = [1 / 6, 2 / 6, 4 / 6, 1.0]
    for budget in (0.2, 0.45, 0.7, 0.95):
        p, q = solve_exit_fractions(budget, costs)
        assert math.isclose(float((q * torch.tensor(costs, dtype=torch.float64)).sum()), budget, abs_tol=1e-9)
        ratios = q[1:] / q[:-1]
        torch.testing.assert_close(ratios, torch.full_like(ratios, p))  # q_k ∝ p^k
    assert solve_exit_fractions(1.0, costs)[1].tolist() == [0, 0, 0, 1]
    assert solve_exit_fractions(1 / 6, costs)[1].tolist() == [1, 0, 0, 0]
    torch.testing.assert_close(exit_fractions(0.0, 3), torch.full((3,), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5, float("nan")])
def test_budget_outside_unit_interval_is_rejected(budget):
    with pytest.raises(ValueError, match="budget must be a (finite )?number > 0 and <= 1"):
        hf_dynamic.calibrate_thresholds(tiny_model(), loader(n=8), budget)


def test_budget_below_first_exit_cost_is_rejected():
    with pytest.raises(ValueError, match="below the cost of the first exit"):
        hf_dynamic.calibrate_thresholds(tiny_model(exit_layers=(2, 4)), loader(n=8), 0.3)


def test_patience_criterion_cannot_be_calibrated():
    model = tiny_model(criterion="patience")
    with pytest.raises(ValueError, match="exit_criterion='patience'"):
        hf_dynamic.calibrate_thresholds(model, loader(n=8), 0.5)


def test_thresholds_for_fractions_counts():
    scores = torch.rand(100, 3)
    q = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    thresholds, exit_index = thresholds_for_fractions(scores, q)
    assert torch.bincount(exit_index, minlength=3).tolist() == [50, 30, 20]
    assert thresholds[-1] == -math.inf


@pytest.mark.parametrize("criterion, budget", [("confidence", 0.5), ("confidence", 0.8), ("entropy", 0.6)])
def test_calibration_hits_requested_cost_on_calibration_data(criterion, budget, tmp_path):
    model = tiny_model(criterion)
    data = loader()
    calibration = hf_dynamic.calibrate_thresholds(model, data, budget)
    assert model.config.exit_thresholds == calibration.thresholds and len(calibration.thresholds) == 4
    assert math.isclose(calibration.expected_cost, budget, abs_tol=1e-9)
    # measured with real early exit (dynamic mode) on the calibration data: layers executed / total
    layers = torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).exit_layer for b in data])
    measured = float(layers.float().mean() / 4)
    assert abs(measured - budget) <= 4 / 240, (measured, budget)  # rounding of n·q_k to whole samples
    assert math.isclose(measured, calibration.calibration_cost, abs_tol=1e-6)
    counts = torch.bincount(layers - 1, minlength=4).double() / 240
    simulated = simulate_exits(model.config, collect_exit_logits(model, data)[0])
    assert torch.equal(simulated + 1, layers)  # the sweep shortcut agrees with real early exit
    torch.testing.assert_close(counts, torch.tensor(calibration.exit_fractions, dtype=torch.float64), atol=0.01,
                               rtol=0)
    # thresholds survive save / load
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config.exit_thresholds == calibration.thresholds


def test_accuracy_cost_curve_and_plot(tmp_path):
    model = tiny_model()
    model.config.exit_thresholds = [0.9, 0.9, 0.9, 0.0]
    data = loader(n=96)
    curve = hf_dynamic.accuracy_cost_curve(model, data, budgets=[1.0, 0.4, 0.7])
    assert [c["budget"] for c in curve] == [0.4, 0.7, 1.0]
    for point in curve:
        assert abs(point["cost"] - point["budget"]) <= 4 / 96
        assert sum(point["exit_counts"]) == 96 and 0 <= point["metric"] <= 1
    full = curve[-1]
    labels = torch.cat([b["labels"] for b in data])
    logits = torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                              output_all_exits=True).logits for b in data])
    assert full["exit_counts"] == [0, 0, 0, 96]
    assert math.isclose(full["metric"], float((logits.argmax(-1) == labels).float().mean()))
    assert model.config.exit_thresholds == [0.9, 0.9, 0.9, 0.0]  # restored
    path = hf_dynamic.plot_accuracy_cost_curve({"boosted": curve}, tmp_path / "curve.png",
                                               anytime={"anytime": ([0.25, 0.5, 0.75, 1], [0.3, 0.3, 0.4, 0.4])})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regression_model_cannot_be_calibrated():
    model = tiny_model(num_labels=1)
    with pytest.raises(ValueError, match="regression"):
        hf_dynamic.calibrate_thresholds(model, loader(n=8), 0.5)
