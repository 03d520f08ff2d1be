"""examples/glue/variant_slim.py (run_glue --variant slim / slim_alone) and examples/glue/slim_table.py."""

import json
import os
import sys

import pytest

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SHARED_GLUE = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "glue"))

sys.path.insert(0, os.path.join(REPO, "examples", "glue"))

import run_glue  # noqa: E402
import slim_table  # noqa: E402

HIDDEN, INTERMEDIATE, LAYERS, HEADS = 384, 1536, 6, 12
COMMON = ["--task", "mrpc", "--data_dir", SHARED_GLUE, "--carve_validation", "0.1", "--max_train_samples", "8",
          "--max_eval_samples", "12", "--max_steps", "1", "--per_device_train_batch_size", "8", "--save_model",
          "false", "--disable_tqdm", "true"]


def _encoder_params(heads, channels):
    """Weights + biases of one MiniLM layer's projections at ``heads`` heads (of 32) and ``channels`` FFN channels."""
    d = HIDDEN // HEADS
    attention = 3 * (HIDDEN * heads * d + heads * d) + heads * d * HIDDEN + HIDDEN
    ffn = HIDDEN * channels + channels + channels * HIDDEN + HIDDEN
    return attention + ffn


def test_slim_variant_reports_every_width_on_carved_and_dev_rows(tmp_path):
    results = run_glue.main(COMMON + ["--variant", "slim", "--slim_eval_widths", "1.0,0.5",
                                      "--slim_search", "false", "--slim_gate", "false",
                                      "--output_dir", str(tmp_path)])
    widths = results["slim"]["widths"]
    assert set(widths) == {"1.0", "0.5"}
    # full width: the carved metric is exactly what run_glue itself measured (the model is back at full width)
    assert widths["1.0"]["carved"]["accuracy"] == pytest.approx(results["metrics"]["carved"]["accuracy"])
    assert widths["1.0"]["units"] == [[HEADS, INTERMEDIATE]] * LAYERS
    assert widths["0.5"]["units"] == [[HEADS // 2, INTERMEDIATE // 2]] * LAYERS
    # dev is read again (12 rows) although the run carved
    assert abs(widths["0.5"]["validation"]["accuracy"] * 12 - round(widths["0.5"]["validation"]["accuracy"] * 12)) \
        < 1e-6
    # active parameters: the sliced weights, exactly
    saved = _encoder_params(HEADS, INTERMEDIATE) - _encoder_params(HEADS // 2, INTERMEDIATE // 2)
    assert widths["1.0"]["active_parameters"] - widths["0.5"]["active_parameters"] == LAYERS * saved
    assert widths["1.0"]["flop_fraction"] == 1.0
    assert 0.49 < widths["0.5"]["flop_fraction"] < 0.51  # heads and channels halve; pooler/head stay


def test_search_and_gate_meet_the_uniform_widths_budgets_on_carved_rows(tmp_path):
    results = run_glue.main(COMMON + ["--variant", "slim", "--slim_eval_widths", "1.0,0.9,0.7", "--slim_search_rows",
                                      "8", "--slim_search_mlp_step", "0.5", "--slim_gate_train_rows", "8",
                                      "--slim_gate_cost_weights", "0,1", "--output_dir", str(tmp_path)])
    out = results["slim"]
    for w in ("0.9", "0.7"):  # one search down to width 0.7's FLOPs answers both budgets
        budget = out["widths"][w]["flop_fraction"]
        searched = out["search"]["budgets"][w]
        assert searched["budget"] == budget and budget - 0.1 < searched["flop_fraction"] <= budget
    assert out["search"]["trajectory"][0]["cost_fraction"] == 1.0 and out["search"]["rows"] == 8
    # the gate's narrowest choice keeps layer 0 at full width: 1/6 + 5/6 · 0.7 of the encoder > width 0.7's FLOPs
    costs = out["gate"]["costs"]
    assert costs[0] > out["widths"]["0.7"]["flop_fraction"] and "0.7" not in out["gate"]["budgets"]
    gate = out["gate"]["budgets"]["0.9"]
    assert gate["cost_weight"] in (0.0, 1.0) and gate["carved_cost"] <= gate["budget"] + 1e-9
    counts = gate["width_counts"]
    assert sum(counts) == 12  # every dev row took one of the widths
    assert gate["flop_fraction"] == pytest.approx(sum(n * c for n, c in zip(counts, costs)) / 12)
    assert 0.0 <= gate["validation"]["accuracy"] <= 1.0


def test_slim_alone_trains_only_its_width(tmp_path):
    results = run_glue.main(COMMON + ["--variant", "slim_alone", "--slim_width", "0.25",
                                      "--output_dir", str(tmp_path)])
    assert list(results["slim"]["widths"]) == ["0.25"]
    assert results["slim"]["widths"]["0.25"]["units"] == [[3, 384]] * LAYERS


@pytest.mark.parametrize("flag,value", [("--slim_width", "0"), ("--slim_eval_widths", "1.0,1.5"),
                                        ("--slim_importance", "random")])
def test_bad_slim_flags_are_rejected_before_work(tmp_path, flag, value):
    with pytest.raises(ValueError, match=flag.removeprefix("--")):
        run_glue.main(COMMON + ["--variant", "slim", flag, value, "--output_dir", str(tmp_path)])


def _fabricated_run(task, run, seed, metric_by_width, searched=None):
    widths = {str(w): {"validation": {"f1": m}, "flop_fraction": w, "active_parameters": int(w * 1e6)}
              for w, m in metric_by_width.items()}
    slim = {"widths": widths}
    if searched is not None:
        slim["search"] = {"budgets": {str(w): {"validation": {"f1": m}, "flop_fraction": w - 0.01}
                                      for w, m in searched.items()}}
    return {"task": task, "run": run, "seed": seed, "main_metric_name": "f1", "slim": slim,
            "machine": {"cpu": "test cpu", "cores": 2, "torch_threads": 2, "torch": "x"}}


def test_table_claims_are_the_paired_differences_and_the_one_point_target(tmp_path):
    slim_scores = {1: 0.85, 2: 0.86, 3: 0.84}
    runs = []
    for seed, base in slim_scores.items():
        uniform = {w: base - (1 - w) * 0.02 for w in slim_table.WIDTHS}
        searched = {w: uniform[w] + 0.01 + 0.001 * seed for w in slim_table.WIDTHS[1:]}  # ~1 point above uniform
        runs.append(_fabricated_run("mrpc", "slim", seed, uniform, searched))
        for w in slim_table.WIDTHS:
            # alone: 0.5 points above slim at every width but 0.25, where it is 3 points (+ seed noise) above
            gap = 0.005 + 0.0005 * seed if w != 0.25 else 0.03 + 0.001 * seed
            runs.append(_fabricated_run("mrpc", f"alone_{w}", seed, {w: base - (1 - w) * 0.02 + gap}))
    for r in runs:
        path = tmp_path / r["task"] / f"{r['run']}-s{r['seed']}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(r))
    summary = slim_table.summarise(slim_table.load_runs(str(tmp_path)), ["mrpc"])
    full = summary["claims"]["mrpc/1.0"]
    assert full["mean_diff"] == pytest.approx(-0.006) and full["n"] == 3
    assert full["within_target"]  # −0.6 points ± 0.12 (t interval): above −1
    quarter = summary["claims"]["mrpc/0.25"]
    assert quarter["mean_diff"] == pytest.approx(-0.032) and not quarter["within_target"]
    rows = summary["tasks"]["mrpc"]["rows"]
    assert rows[0]["slim"]["mean"] == pytest.approx(85.0) and rows[0]["slim"]["n"] == 3
    half = next(b for b in summary["tasks"]["mrpc"]["budgets"] if b["width"] == 0.5)
    assert half["search_vs_uniform"]["mean_diff"] == pytest.approx(0.012) and half["search_vs_uniform"]["holds"]
    assert half["search_cost"] == pytest.approx(0.49) and half["gate"] is None
    text = slim_table.markdown(summary, runs, {})
    assert slim_table.plot(summary, runs, {}, "mrpc", str(tmp_path / "plot.png"))
    assert "| 0.25 |" in text and "✗" in text and "✓" in text
    assert f"{summary['tasks']['mrpc']['majority']:.1f}" in text


def test_driver_writes_one_run_file_and_skips_it_on_restart(tmp_path, monkeypatch):
    launched = []

    def fake_launch(cmd, env):  # stands in for the run_glue.py process: writes its eval_results.json
        launched.append(cmd)
        out = cmd[cmd.index("--output_dir") + 1]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "eval_results.json"), "w") as f:
            json.dump({"slim": {"widths": {}}, "metrics": {"carved": {"f1": 0.8}}, "train_runtime_s": 1.0}, f)

    monkeypatch.setattr(slim_table.compare, "launch", fake_launch)
    argv = ["--tasks", "mrpc", "--seeds", "4", "--runs", "alone_0.5", "--results_dir", str(tmp_path / "results"),
            "--work_dir", str(tmp_path / "work")]
    args, passthrough = slim_table.parse_args(argv)
    assert slim_table.ensure_run(args, "mrpc", "alone_0.5", 4, passthrough)
    record = json.loads((tmp_path / "results" / "mrpc" / "alone_0.5-s4.json").read_text())
    assert record["run"] == "alone_0.5" and record["seed"] == 4 and "--slim_width 0.5" in record["command"]
    assert "--carve_validation 0.1" in record["command"] and record["metrics"]["carved"]["f1"] == 0.8
    assert not slim_table.ensure_run(args, "mrpc", "alone_0.5", 4, passthrough)  # finished: skipped
    assert len(launched) == 1
