"""Input-dependent width (docs/slim.md, "## Input-dependent width"): grouped inference equals each input run alone at
its width, the cost formula equals counted FLOPs, calibration meets the budget, training with a large cost weight
moves every choice to the narrowest width, exact save / load, and bad input is refused before any work."""

import pytest
import torch
from slim_testing import TINY_BERT, tiny_bert, tokens
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from hf_dynamic.core.resources import measured_forward_flops
from hf_dynamic.slim.gate import (
    DynamicWidthModel, WidthGate, calibrate_gate, collect_gate_data, gate_loss, load_gate, save_gate, train_gate,
    width_costs,
)
from hf_dynamic.slim.modeling import make_slimmable, width


def dynamic(gate_layers=1, spread=3.0, **kw):
    """A tiny slimmable BERT with a gate whose random scores spread the choices over the widths."""
    model = DynamicWidthModel(make_slimmable(tiny_bert()), gate_layers=gate_layers, **kw)
    torch.manual_seed(4)
    last = [m for m in model.gate.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(last.weight, std=spread)
    return model


def batch(n=12, t=10):
    x = tokens(n, t)
    mask = torch.ones_like(x)
    mask[::3, t - 3:] = 0
    token_type = torch.zeros_like(x)
    token_type[:, t // 2:] = 1
    labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(5))
    return {"input_ids": x, "attention_mask": mask, "token_type_ids": token_type, "labels": labels}


@pytest.mark.parametrize("gate_layers", [0, 1])
def test_grouped_inference_equals_each_input_alone_at_its_width(gate_layers):
    dyn = dynamic(gate_layers).eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        out = dyn(**inputs)
    assert len(set(out.width_index.tolist())) >= 3  # several groups, so the scatter is exercised
    n_layers = TINY_BERT["num_hidden_layers"]
    with torch.no_grad():
        for i in range(len(out.logits)):
            alone = {k: v[i:i + 1] for k, v in inputs.items()}
            w = dyn.gate.widths[int(out.width_index[i])]
            assert float(out.widths[i]) == w
            # the reference: the stock model's own forward, layers >= gate_layers at the chosen width
            with width(dyn.model, {j: w for j in range(gate_layers, n_layers)}):
                reference = dyn.model(**alone).logits[0]
            torch.testing.assert_close(out.logits[i], reference, atol=1e-5, rtol=1e-5)
            assert int(dyn(**alone).width_index[0]) == int(out.width_index[i])  # the gate decides the same alone
    costs = width_costs(dyn.model, dyn.gate.widths, gate_layers, inputs["input_ids"].shape[1])
    torch.testing.assert_close(out.cost, costs[out.width_index].mean())
    assert dyn.model.bert.encoder.layer.__len__() == n_layers and dyn.model.bert.pooler is not None  # restored


def test_width_costs_equal_counted_flops():
    """``c_w`` equals the ratio of the FLOPs torch's FlopCounterMode counts on the sliced model (eager attention,
    which the counter books)."""
    model = make_slimmable(tiny_bert())
    model.set_attn_implementation("eager")
    x = tokens(3, 12)
    widths = (0.25, 0.5, 1.0)
    costs = width_costs(model, widths, gate_layers=1, seq_len=12)
    full = measured_forward_flops(model, input_ids=x)
    for w, cost in zip(widths, costs.tolist()):
        with width(model, {1: w}):
            counted = measured_forward_flops(model, input_ids=x)
        assert cost == pytest.approx(counted / full, rel=1e-12)
    assert costs[-1] == 1.0 and costs[0] < costs[1] < costs[2]


def test_calibration_meets_the_budget_within_one_input():
    gate = dynamic().gate
    heldout = torch.randn(400, TINY_BERT["hidden_size"], generator=torch.Generator().manual_seed(6))
    fresh = torch.randn(2000, TINY_BERT["hidden_size"], generator=torch.Generator().manual_seed(7))
    costs = gate.costs.double()
    step = float(costs[-1] - costs[0]) / len(heldout)
    betas = []
    for budget in (float(costs[0]), 0.7, 0.8, 0.9, 1.0):
        result = calibrate_gate(gate, heldout, budget)
        achieved = float(costs[gate.choose(heldout)].mean())
        assert achieved == pytest.approx(result.calibration_cost)
        assert budget - step - 1e-9 <= achieved <= budget + 1e-12
        assert sum(result.width_counts) == len(heldout)
        assert abs(float(costs[gate.choose(fresh)].mean()) - budget) < 0.03  # and on data not seen by calibration
        betas.append(result.beta)
    assert betas == sorted(betas, reverse=True)  # a larger budget, a smaller penalty


def test_calibration_through_the_model_gives_the_budget_in_real_runs():
    dyn = dynamic(cost_seq_len=10).eval()
    data = [{k: v[i:i + 4] for k, v in batch(16).items()} for i in range(0, 16, 4)]
    result = dyn.calibrate(data, 0.8)
    with torch.no_grad():
        real = torch.stack([dyn(**{k: v for k, v in b.items() if k != "labels"}).cost for b in data]).mean()
    assert float(real) == pytest.approx(result.calibration_cost) and float(real) <= 0.8
    assert 0.8 - (1 - float(dyn.gate.costs[0])) / 16 <= float(real)


def test_gate_loss_is_the_expected_loss_over_widths():
    scores, losses = torch.randn(5, 4), torch.rand(5, 4)
    costs = torch.tensor([0.25, 0.5, 0.75, 1.0])
    p = scores.softmax(-1)
    expected = sum(p[:, w] * (losses[:, w] + 2.0 * costs[w]) for w in range(4)).mean()
    torch.testing.assert_close(gate_loss(scores, losses, costs, 2.0), expected)


def test_training_forward_loss_equals_the_cached_loss():
    dyn = dynamic()
    b = batch()
    data = collect_gate_data(dyn, [b])
    dyn.cost_weight = 0.5
    dyn.train()  # the tiny model has no dropout, so train mode computes what eval mode does
    out = dyn(**b)
    expected = gate_loss(dyn.gate(data.features), data.per_width_loss, dyn.gate.costs, 0.5)
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-6)
    out.loss.backward()
    assert dyn.gate.scorer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cost_weight", [0.0, 20.0])
def test_training_trades_accuracy_for_cost(cost_weight):
    """With a large cost weight every input goes to the narrowest width; without one the gate learns each input's
    lowest-loss width (the per-width losses are made so that the widest is best for most inputs)."""
    dyn = dynamic()
    b = batch(24)
    data = collect_gate_data(dyn, [b])
    data.per_width_loss = data.per_width_loss + torch.tensor([3.0, 2.0, 1.0, 0.0])  # narrow widths err more
    before = dyn.gate.choose(data.features)
    history = train_gate(dyn.gate, data, cost_weight, epochs=60, lr=0.05, batch_size=8)
    total = data.per_width_loss + cost_weight * dyn.gate.costs.float()
    floor = float(total.min(1).values.mean())  # the loss of the best width for every input
    assert history[-1] - floor < 0.25 * (history[0] - floor)
    after = dyn.gate.choose(data.features)
    target = torch.argmin(total, dim=1)
    assert (after == target).float().mean() >= 0.9 and not torch.equal(before, target)
    if cost_weight:
        assert torch.all(after == 0)


def test_joint_training_with_the_stock_trainer_resumes_exactly(tmp_path):
    from transformers import Trainer

    rows = [{k: v[i] for k, v in batch(8).items()} for i in range(8)]

    def run(out, resume=None):
        dyn = dynamic(cost_weight=0.1)
        args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-2, max_steps=4,
                                 save_steps=2, save_strategy="steps", logging_strategy="no", report_to=[],
                                 use_cpu=True, seed=3, dataloader_num_workers=0, disable_tqdm=True)
        Trainer(model=dyn, args=args, train_dataset=rows).train(resume_from_checkpoint=resume)
        return dyn

    start = dynamic().state_dict()
    whole = run(tmp_path)
    assert not torch.equal(whole.gate.scorer.weight, start["gate.scorer.weight"])
    assert not torch.equal(whole.model.classifier.weight, start["model.classifier.weight"])  # joint
    resumed = run(tmp_path, resume=str(tmp_path / "checkpoint-2"))
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, atol=1e-6, rtol=1e-6, msg=k)


def test_save_and_load_are_exact(tmp_path):
    dyn = dynamic(hidden_dim=6)
    calibrate_gate(dyn.gate, torch.randn(50, TINY_BERT["hidden_size"]), 0.8)
    path = save_gate(dyn.gate, str(tmp_path / "gate.safetensors"))
    loaded = load_gate(path)
    assert loaded.config_dict() == dyn.gate.config_dict()
    for k, v in dyn.gate.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert float(loaded.beta) != 0.0
    # and it attaches to the same model (same costs), but not to another one
    DynamicWidthModel(dyn.model, loaded)
    other = make_slimmable(BertForSequenceClassification(BertConfig(**{**TINY_BERT, "num_hidden_layers": 3})))
    with pytest.raises(ValueError, match="the gate was built for another model"):
        DynamicWidthModel(other, load_gate(path))
    (tmp_path / "plain.safetensors").write_bytes(b"")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a width gate"):
        load_gate(str(tmp_path / "plain.safetensors"))


@pytest.mark.parametrize("build, error, message", [
    (lambda: WidthGate(32, widths=(0.5, 0.25)), ValueError, "widths must be strictly increasing"),
    (lambda: WidthGate(32, widths=(0.0, 1.0)), ValueError, r"widths\[0\] must be a number > 0 and <= 1, got 0.0"),
    (lambda: WidthGate(32, widths=(1.0,)), ValueError, "at least 2 widths"),
    (lambda: WidthGate(32, gate_layers=-1), ValueError, "gate_layers must be an integer >= 0, got -1"),
    (lambda: WidthGate(32, hidden_dim=1.5), ValueError, "hidden_dim must be an integer"),
    (lambda: DynamicWidthModel(tiny_bert()), ValueError, "not slimmable"),
    (lambda: DynamicWidthModel(make_slimmable(tiny_bert()), gate_layers=2), ValueError,
     "gate_layers=2 leaves no layer to slim"),
    (lambda: DynamicWidthModel(make_slimmable(tiny_bert()), widths=(0.1, 1.0)), ValueError,
     r"widths\[1\]=0.1 keeps 0 of 4 attention head groups"),
    (lambda: DynamicWidthModel(make_slimmable(tiny_bert()), widths=(0.5, 0.51, 1.0)), ValueError,
     "do not all keep different numbers of units"),
    (lambda: DynamicWidthModel(make_slimmable(tiny_bert()), cost_weight=-1), ValueError,
     "cost_weight must be a number >= 0, got -1"),
    (lambda: DynamicWidthModel(make_slimmable(tiny_bert()), WidthGate(16)), ValueError, "gate.hidden_size=16"),
    (lambda: DynamicWidthModel(make_slimmable(BertForSequenceClassification(BertConfig(**{**TINY_BERT,
                                                                                         "num_labels": 1})))),
     ValueError, "single-label classifier"),
    (lambda: WidthGate(32).choose(torch.zeros(1, 32)), ValueError, "no width costs"),
    (lambda: calibrate_gate(dynamic().gate, torch.zeros(4, 32), 0.1), ValueError, "below the narrowest width's cost"),
    (lambda: calibrate_gate(dynamic().gate, torch.zeros(4, 32), 1.5), ValueError, "budget must be a number > 0"),
    (lambda: calibrate_gate(dynamic().gate, torch.zeros(4, 8), 0.8), ValueError, r"features must be a non-empty"),
    (lambda: dynamic()(torch.zeros(3, dtype=torch.long)), ValueError, "input_ids must be a \\[batch, sequence\\]"),
    (lambda: train_gate(dynamic().gate, collect_gate_data(dynamic(), [batch(2)]), 1.0, epochs=0), ValueError,
     "epochs must be an integer >= 1, got 0"),
])
def test_bad_input_is_refused(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_docs_example_runs(capsys):
    """The input-dependent width example of docs/slim.md runs as written; its calibrated cost meets the budget."""
    import os
    import re

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(repo, "docs", "slim.md")) as f:
        blocks = [b for b in re.findall(r"```python\n(.*?)```", f.read(), flags=re.S) if "DynamicWidthModel" in b]
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/slim.md", "exec"), {"__name__": "__docs_example__"})
    printed = capsys.readouterr().out.split("]")
    widths = [float(w) for w in printed[0].strip("[ ").split(",")]
    cost, calibration_cost = (float(v) for v in printed[1].split())
    assert set(widths) <= {0.25, 0.5, 1.0} and len(widths) == 8
    assert 0 < calibration_cost <= 0.6 and 0 < cost <= 1


def test_registered_slimmable_bert_keeps_its_configured_width():
    """On the registered ``slimmable_bert`` type (configured at ``slim_width=0.5``) the grouped run equals each input
    alone at its width, and the model's own width is left as configured."""
    from hf_dynamic.models.slimmable_bert import SlimmableBertConfig, SlimmableBertForSequenceClassification
    from hf_dynamic.slim.modeling import get_width

    torch.manual_seed(0)
    model = SlimmableBertForSequenceClassification(SlimmableBertConfig(**TINY_BERT, slim_width=0.5)).eval()
    configured = get_width(model)
    dyn = DynamicWidthModel(model).eval()
    torch.nn.init.normal_(dyn.gate.scorer.weight, std=3.0)
    x = tokens(6, 10)
    with torch.no_grad():
        out = dyn(x)
        assert get_width(model) == configured == [(2, 20), (2, 20)]
        for i in range(len(x)):
            with width(model, {1: float(out.widths[i])}):
                torch.testing.assert_close(out.logits[i], model(input_ids=x[i:i + 1]).logits[0], atol=1e-5, rtol=1e-5)
