"""Bookkeeping of examples/glue/compare.py on fabricated run files: resume (finished runs skipped), tables
regenerated from partial runs, mean / sample std / n per cell, the boosted − joint difference per exit."""

import argparse
import json
import os
import statistics
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "glue"))

import compare  # noqa: E402

MACHINE = {"cpu": "Test CPU", "cores": 2, "torch_threads": 2, "torch": "2.13.0", "transformers": "5.24.0",
           "device": "cpu"}


def fake_eval_results(task, value, exits=None, params=1000):
    split = "validation"
    metric = compare.MAIN_METRIC[task]
    metrics = {metric: value, "accuracy": value - 0.01 if task == "mrpc" else value}
    result = {"task": task, "metrics": {split: metrics}, "num_parameters": params, "num_parameters_active": params // 2,
              "train_runtime_s": 60.0}
    if exits is not None:
        result["exits"] = {split: {"anytime": [{"exit_layer": i + 1, metric: v} for i, v in enumerate(exits)]}}
    return result


def write_run(results_dir, task, run, seed, value, exits=None, recipe="naive", split="validation"):
    record = {"task": task, "run": run, "seed": seed, "recipe": recipe, "split": split,
              "main_metric": value, "metrics": {split: {compare.MAIN_METRIC[task]: value, "accuracy": value}},
              "num_parameters": 1000, "num_parameters_active": 500, "train_runtime_s": 120.0, "machine": MACHINE}
    if exits is not None:
        record["exit_anytime"] = [{"exit_layer": i + 1, "metric": v} for i, v in enumerate(exits)]
    compare.write_json_atomic(compare.run_file(results_dir, recipe, task, run, seed), record)


def test_resume_runs_only_missing_runs_and_writes_run_files(tmp_path, monkeypatch):
    results_dir, work_dir = tmp_path / "results", tmp_path / "work"
    write_run(str(results_dir), "rte", "dense", 1, 0.6)  # finished before: must not run again
    launched = []

    def fake_launch(cmd, env):
        task, variant = cmd[cmd.index("--task") + 1], cmd[cmd.index("--variant") + 1]
        out = cmd[cmd.index("--output_dir") + 1]
        launched.append((task, variant, cmd[cmd.index("--seed") + 1]))
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "eval_results.json"), "w") as f:
            json.dump(fake_eval_results(task, 0.5 + 0.1 * len(launched)), f)

    monkeypatch.setattr(compare, "launch", fake_launch)
    monkeypatch.setattr(compare, "machine_info", lambda device: MACHINE)
    summary = compare.main(["--table", "pad", "--recipe", "naive", "--tasks", "rte", "--runs", "dense", "moe",
                            "--seeds", "1", "--results_dir", str(results_dir), "--work_dir", str(work_dir)])
    assert launched == [("rte", "moe", "1")]
    record = json.loads((results_dir / "naive" / "rte" / "moe-s1.json").read_text())
    assert record["main_metric"] == pytest.approx(0.6)
    assert record["machine"] == MACHINE and "commit" in record and "--num_train_epochs" in record["command"]
    assert record["epochs_reason"] == compare.RECIPES["naive"]["rte"][1]
    assert summary["dense"]["tasks"]["rte"]["n"] == 1 and summary["moe"]["tasks"]["rte"]["n"] == 1
    # a second call finds everything done
    launched.clear()
    compare.main(["--table", "pad", "--recipe", "naive", "--tasks", "rte", "--runs", "dense", "moe", "--seeds", "1",
                  "--results_dir", str(results_dir), "--work_dir", str(work_dir)])
    assert launched == []


def test_pad_table_from_partial_runs_has_mean_std_n_and_no_average_until_complete(tmp_path):
    results_dir = str(tmp_path)
    for seed, value in zip((1, 2, 3), (0.60, 0.64, 0.59)):
        write_run(results_dir, "rte", "dense", seed, value)
    write_run(results_dir, "mrpc", "dense", 1, 0.86)
    write_run(results_dir, "cola", "dense", 1, 0.30)
    write_run(results_dir, "rte", "pad_neuron", 1, 0.62)
    # --tasks chooses what runs; the table keeps every task of the recipe
    args, _ = compare.parse_args(["--table", "pad", "--recipe", "naive", "--results_dir", results_dir,
                                  "--tasks", "mrpc"])
    summary, markdown_path = compare.write_tables(args)
    assert markdown_path == os.path.join(results_dir, "pad_table_naive.md")  # the default recipe's is pad_table.md
    rte = summary["dense"]["tasks"]["rte"]
    assert rte["n"] == 3
    assert rte["mean"] == pytest.approx(100 * statistics.mean([0.60, 0.64, 0.59]))
    assert rte["std"] == pytest.approx(100 * statistics.stdev([0.60, 0.64, 0.59]))
    assert summary["dense"]["average"] == pytest.approx((rte["mean"] + 86.0 + 30.0) / 3)
    assert summary["pad_neuron"]["average"] is None  # MRPC and CoLA missing
    assert summary["pad_neuron"]["tasks"]["rte"]["std"] == 0.0
    assert summary["moe"]["tasks"] == {}
    text = open(markdown_path).read()
    assert "61.0 ± 2.6 (n=3)" in text and "86.0 ± 0.0 (n=1)" in text
    assert "| moe | – | – | – |" in text


def test_exit_table_difference_per_exit_and_plot(tmp_path):
    results_dir = str(tmp_path)
    write_run(results_dir, "rte", "boosted", 1, 0.6, exits=[0.55, 0.60])
    write_run(results_dir, "rte", "boosted", 2, 0.6, exits=[0.57, 0.62])
    write_run(results_dir, "rte", "joint", 1, 0.6, exits=[0.53, 0.61])
    for name, exits in (("boosted", [0.80, 0.84]), ("joint", [0.80, 0.81])):
        write_run(results_dir, "mrpc", name, 1, exits[-1], exits=exits)
        write_run(results_dir, "cola", name, 1, 0.3, exits=[0.2, 0.3])
    args, _ = compare.parse_args(["--table", "exit", "--recipe", "naive", "--results_dir", results_dir,
                                  "--tasks", "rte"])
    summary, markdown_path = compare.write_tables(args)
    assert markdown_path == os.path.join(results_dir, "exit_table_naive.md")
    cell = summary["tasks"]["rte"][1]
    assert cell["boosted"]["n"] == 2 and cell["joint"]["n"] == 1
    assert cell["diff"] == pytest.approx(100 * (0.56 - 0.53))
    assert summary["average"][2]["diff"] == pytest.approx(100 * ((0.61 - 0.61) + (0.84 - 0.81) + 0) / 3)
    assert os.path.isfile(os.path.join(results_dir, "exit_table_naive_rte.png"))
    assert "| 1 | 56.0 ± 1.4 (n=2) | 53.0 ± 0.0 (n=1) | +3.0 |" in open(markdown_path).read()


def test_bad_arguments_are_named_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="--runs: 'boosted' is not a run of table 'pad'"):
        compare.parse_args(["--table", "pad", "--runs", "boosted"])
    with pytest.raises(ValueError, match="--recipe: unknown recipe 'fast'"):
        compare.parse_args(["--recipe", "fast"])
    with pytest.raises(ValueError, match="--tasks: task 'sst2' has no entry"):
        compare.parse_args(["--tasks", "sst2"])


def test_corrupt_run_file_is_reported(tmp_path):
    path = compare.run_file(str(tmp_path), "naive", "rte", "dense", 1)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="dense-s1.json is not valid JSON"):
        compare.load_runs(str(tmp_path), "naive")


def test_pemn_table_run_flags_override_the_recipe_and_storage_is_tabled(tmp_path):
    args, passthrough = compare.parse_args(["--table", "pemn", "--recipe", "sst2_short",
                                            "--results_dir", str(tmp_path)])
    assert args.tasks == ["sst2"]  # the recipe's tasks by default
    cmd = compare.command(args, "sst2", "pemn", 1, passthrough)
    rates = [cmd[i + 1] for i, flag in enumerate(cmd) if flag == "--learning_rate"]
    assert rates[-1] == "1e-3" and len(rates) == 2  # argparse keeps the last: PEMN's own lr wins
    dense = compare.command(args, "sst2", "dense", 1, passthrough)
    assert [dense[i + 1] for i, f in enumerate(dense) if f == "--learning_rate"] == [rates[0]]
    record = {"task": "sst2", "run": "pemn", "seed": 1, "recipe": "sst2_short", "split": "validation",
              "main_metric": 0.7, "metrics": {"validation": {"accuracy": 0.7}}, "num_parameters": 10,
              "num_parameters_active": 10, "train_runtime_s": 60.0, "machine": MACHINE,
              "pemn": {"masked_layers": 36, "masked_weights": 10_616_832, "stored_bytes_masked_layers": 1_327_404,
                       "dense_fp32_bytes_masked_layers": 42_467_328}}
    compare.write_json_atomic(compare.run_file(str(tmp_path), "sst2_short", "sst2", "pemn", 1), record)
    _, markdown_path = compare.write_tables(args)
    text = open(markdown_path).read()
    assert "| pemn | 70.0 ± 0.0 (n=1) |" in text
    assert "| pemn | sst2 | 1 | 36 | 10.62 | 1,327,404 | 42,467,328 | 1/32.0 |" in text


def test_study_recipes_change_one_flag_and_the_report_pairs_seeds_with_naive(tmp_path):
    naive_rte = compare.RECIPES["naive"]["rte"][0]
    pad_neuron = compare.RUNS["pad_neuron"][1]
    assert compare.run_flags("study_router_lr10", "rte", "pad_neuron") == naive_rte + ["--router_lr_scale", "10"] \
        + pad_neuron
    assert compare.run_flags("study_router_lr10", "rte", "dense") == naive_rte  # MoE-only flags skip dense
    assert sorted(compare.RECIPES["study_snip"]) == ["mrpc", "rte"]
    results_dir = str(tmp_path)
    write_run(results_dir, "rte", "pad_neuron", 1, 0.58)
    write_run(results_dir, "rte", "pad_neuron", 2, 0.60)
    write_run(results_dir, "mrpc", "pad_neuron", 1, 0.86)
    write_run(results_dir, "rte", "pad_neuron", 1, 0.62, recipe="study_router_lr10")
    write_run(results_dir, "mrpc", "pad_neuron", 1, 0.85, recipe="study_router_lr10")
    write_run(results_dir, "rte", "pad_neuron", 3, 0.70, recipe="study_router_lr10")  # no naive seed 3: left out
    compare.main(["--study_report", "--results_dir", results_dir])
    text = open(os.path.join(results_dir, "study.md")).read()
    assert "| router_lr10 | routers at 10 × the lr (new parameters next to pre-trained ones) | pad_neuron | " \
           "62.0 (+4.0, n=1) | 85.0 (-1.0, n=1) | +1.5 |" in text
    assert "snip" not in text  # no runs, no row


def test_derived_recipe_shares_identical_runs_and_runs_only_its_own(tmp_path, monkeypatch):
    """A derived recipe's dense run is the naive one (same command): not run again, read from naive's folder and
    named in the table; its MoE run gets the recipe's flag and its own folder."""
    results_dir, work_dir = tmp_path / "results", tmp_path / "work"
    write_run(str(results_dir), "rte", "dense", 1, 0.6)
    write_run(str(results_dir), "rte", "pad_neuron", 1, 0.55)  # naive's: a different command, not shared
    assert compare.home_recipe("study_router_lr10", "rte", "dense") == "naive"
    assert compare.home_recipe("study_router_lr10", "rte", "pad_neuron") == "study_router_lr10"
    launched = []

    def fake_launch(cmd, env):
        out = cmd[cmd.index("--output_dir") + 1]
        launched.append(cmd)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "eval_results.json"), "w") as f:
            json.dump(fake_eval_results("rte", 0.7), f)

    monkeypatch.setattr(compare, "launch", fake_launch)
    monkeypatch.setattr(compare, "machine_info", lambda device: MACHINE)
    summary = compare.main(["--table", "pad", "--recipe", "study_router_lr10", "--tasks", "rte", "--runs", "dense",
                            "pad_neuron", "--seeds", "1", "--results_dir", str(results_dir),
                            "--work_dir", str(work_dir)])
    assert len(launched) == 1 and "--router_lr_scale" in launched[0]
    assert launched[0][launched[0].index("--output_dir") + 1].startswith(str(work_dir / "study_router_lr10"))
    record = json.loads((results_dir / "study_router_lr10" / "rte" / "pad_neuron-s1.json").read_text())
    assert record["recipe"] == "study_router_lr10" and record["epochs_reason"].endswith(
        "study: " + compare.STUDY["router_lr10"][1])
    assert not (results_dir / "study_router_lr10" / "rte" / "dense-s1.json").exists()
    assert summary["dense"]["tasks"]["rte"]["mean"] == pytest.approx(60.0)
    assert summary["pad_neuron"]["tasks"]["rte"]["mean"] == pytest.approx(70.0)
    text = (results_dir / "pad_table_study_router_lr10.md").read_text()
    assert "Shared runs (the same command, so one run file serves both recipes): dense (rte, mrpc) from recipe `naive`." in text


def test_tuned_recipe_is_naive_plus_the_chosen_study_changes_on_moe_runs_only():
    for task in ("rte", "mrpc", "cola"):
        base = compare.RECIPES["naive" if task != "cola" else f"study_{compare.TUNED_COLA}"][task][0]
        assert compare.run_flags("tuned", task, "dense") == base
        assert compare.home_recipe("tuned", task, "dense") == ("naive" if task != "cola" else
                                                               f"study_{compare.TUNED_COLA}")
        exit_added = [f for name in compare.TUNED_FROM_EXIT_STUDY for f in compare.EXIT_STUDY[name][0]]
        assert compare.run_flags("tuned", task, "boosted") == base + exit_added
        added = [f for name in compare.TUNED_FROM_STUDY for f in compare.STUDY[name][0]]
        assert added and compare.run_flags("tuned", task, "pad_element") == base + added + \
            compare.RUNS["pad_element"][1]
    # a tuned MoE run on a study task is that study recipe's run when the study change is the only one
    if compare.TUNED_FROM_STUDY == ("router_lr10",):
        assert compare.home_recipe("tuned", "rte", "pad_neuron") == "study_router_lr10"
        assert compare.home_recipe("tuned", "cola", "pad_neuron") == "tuned"
    if compare.TUNED_FROM_EXIT_STUDY == ("exit_mean",):
        assert compare.home_recipe("tuned", "mrpc", "joint") == "study_exit_mean"
        assert compare.home_recipe("tuned", "cola", "joint") == "tuned"  # CoLA's tuned schedule differs from naive's
        assert compare.home_recipe("tuned", "rte", "joint") == "tuned"
        assert compare.run_reason("tuned", "rte", "boosted").endswith("tuned: " + compare.EXIT_STUDY["exit_mean"][1])


def test_exit_study_changes_only_the_exit_runs():
    naive = compare.RECIPES["naive"]["cola"][0]
    assert compare.run_flags("study_exit_mean", "cola", "boosted") == naive + ["--exit_pooling", "mean"]
    assert compare.run_flags("study_exit_mean", "cola", "joint") == naive + ["--exit_pooling", "mean"]
    assert compare.home_recipe("study_exit_mean", "cola", "boosted") == "study_exit_mean"
    assert compare.home_recipe("study_exit_mean", "cola", "dense") == "naive"
    assert compare.run_reason("study_exit_mean", "mrpc", "joint").endswith(compare.EXIT_STUDY["exit_mean"][1])


def test_study_report_tables_the_exit_study_per_exit_mean_and_last_exit(tmp_path):
    results_dir = str(tmp_path)
    write_run(results_dir, "mrpc", "boosted", 1, 0.84, exits=[0.80, 0.84])
    write_run(results_dir, "mrpc", "boosted", 1, 0.86, exits=[0.82, 0.86], recipe="study_exit_mean")
    write_run(results_dir, "mrpc", "boosted", 2, 0.90, exits=[0.90, 0.90], recipe="study_exit_mean")  # no naive s2
    text = compare.study_report(results_dir)
    assert "| exit_mean | " + compare.EXIT_STUDY["exit_mean"][1] + " | boosted | 84.0 (+2.0, n=1) | " \
           "86.0 (+2.0, n=1) | – | – |" in text
    assert "| joint |" not in text


def test_anchor_study_changes_the_cola_schedule_of_every_run_and_is_reported_against_naive(tmp_path):
    flags = compare.run_flags("study_cola_lr1e-4", "cola", "dense")
    assert flags[flags.index("--learning_rate") + 1] == "1e-4" and flags.count("--learning_rate") == 1
    flags = compare.run_flags("study_cola_5ep", "cola", "pad_neuron")
    assert flags[flags.index("--num_train_epochs") + 1] == "5"
    assert sorted(compare.RECIPES["study_cola_5ep"]) == ["cola"]
    assert compare.home_recipe("study_cola_lr1e-4", "cola", "dense") == "study_cola_lr1e-4"
    results_dir = str(tmp_path)
    write_run(results_dir, "cola", "dense", 1, 0.25)
    write_run(results_dir, "cola", "dense", 1, 0.29, recipe="study_cola_lr1e-4")
    text = compare.study_report(results_dir)
    assert "| cola_lr1e-4 | " + compare.ANCHOR_STUDY["cola_lr1e-4"][1] + " | dense | 29.0 (+4.0, n=1) |" in text
    assert "| cola_5ep |" not in text


def test_a_shared_run_refreshes_every_existing_table_that_shows_it(tmp_path, monkeypatch):
    """A tuned MoE run on RTE lives in study_router_lr10's folder: that recipe's existing table and the study report
    are regenerated with it; the naive table (a different command) is left alone, and no table is created for a
    recipe that had none."""
    results_dir, work_dir = tmp_path / "results", tmp_path / "work"
    write_run(str(results_dir), "rte", "moe", 1, 0.55)
    for recipe in ("naive", "study_router_lr10"):
        compare.write_tables(compare.parse_args(["--recipe", recipe, "--results_dir", str(results_dir)])[0])
    naive_before = (results_dir / "pad_table_naive.md").read_text()

    def fake_launch(cmd, env):
        out = cmd[cmd.index("--output_dir") + 1]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "eval_results.json"), "w") as f:
            json.dump(fake_eval_results("rte", 0.6), f)

    monkeypatch.setattr(compare, "launch", fake_launch)
    monkeypatch.setattr(compare, "machine_info", lambda device: MACHINE)
    compare.main(["--table", "pad", "--tasks", "rte", "--runs", "moe", "--seeds", "1", "--results_dir",
                  str(results_dir), "--work_dir", str(work_dir)])
    assert "| moe | 60.0 ± 0.0 (n=1) |" in (results_dir / "pad_table_study_router_lr10.md").read_text()
    assert "| moe | 60.0 ± 0.0 (n=1) |" in (results_dir / "pad_table.md").read_text()
    assert (results_dir / "pad_table_naive.md").read_text() == naive_before
    assert not (results_dir / "pad_table_study_snip.md").exists()
    assert "| router_lr10 | " + compare.STUDY["router_lr10"][1] + " | moe | 60.0 (+5.0, n=1) | – | +5.0 |" in \
        (results_dir / "study.md").read_text()


def reference_comparison(a, b):
    """The paired t interval and test written out with scipy, to check the tables against."""
    from scipy import stats

    d = [100 * (x - y) for x, y in zip(a, b)]
    n, mean, sd = len(d), statistics.mean(d), statistics.stdev(d)
    half = stats.t.ppf(0.975, n - 1) * sd / n ** 0.5
    return mean, mean - half, mean + half, stats.ttest_rel(a, b).pvalue


def test_pad_claims_pair_seeds_and_hold_only_where_the_interval_excludes_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "majority_baseline", lambda task: {"rte": 52.7, "mrpc": 81.2, "cola": 0.0}[task])
    results_dir = str(tmp_path)
    dense = {"rte": [0.55, 0.58, 0.53], "mrpc": [0.86, 0.87, 0.85], "cola": [0.26, 0.30, 0.22]}
    # PAD element: dense + 1.0, 1.5, 2.0 points on every task (holds); MoE: ± around dense (not shown)
    element = {t: [v + g for v, g in zip(vs, (0.010, 0.015, 0.020))] for t, vs in dense.items()}
    moe = {t: [v + g for v, g in zip(vs, (0.02, -0.03, 0.005))] for t, vs in dense.items()}
    for name, values in (("dense", dense), ("pad_element", element), ("moe", moe)):
        for task, vs in values.items():
            for seed, v in zip((4, 5, 6), vs):
                write_run(results_dir, task, name, seed, v)
    write_run(results_dir, "rte", "pad_neuron", 4, 0.9)  # one seed: no interval
    args, _ = compare.parse_args(["--table", "pad", "--recipe", "naive", "--results_dir", results_dir])
    compare.write_tables(args)
    written = json.load(open(os.path.join(results_dir, "pad_table_naive.json")))
    claims = written["claims"]
    rte = claims["pad_element > dense"]["rte"]
    mean, low, high, p = reference_comparison(element["rte"], dense["rte"])
    assert (100 * rte["mean_diff"], 100 * rte["ci_low"], 100 * rte["ci_high"]) == pytest.approx((mean, low, high))
    assert rte["p_value"] == pytest.approx(p) and rte["n"] == 3 and rte["verdict"] == "holds"
    average = claims["pad_element > dense"]["average"]
    per_seed = [statistics.mean(element[t][i] for t in dense) for i in range(3)]
    base = [statistics.mean(dense[t][i] for t in dense) for i in range(3)]
    assert 100 * average["mean_diff"] == pytest.approx(reference_comparison(per_seed, base)[0])
    assert claims["moe > dense"]["mrpc"]["verdict"] == "not shown" and not claims["moe > dense"]["mrpc"]["holds"]
    assert claims["pad_element > moe"]["rte"]["verdict"] == "not shown"
    assert claims["pad_neuron > dense"]["rte"] is None  # n = 1
    assert written["majority_class"] == {"rte": 52.7, "mrpc": 81.2, "cola": 0.0}
    text = open(os.path.join(results_dir, "pad_table_naive.md")).read()
    assert f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]" in text and ": **holds**" in text
    assert "| majority class (dev) | 52.7 | 81.2 | – | 0.0 | 44.6 |" in text
    assert "– (n < 2)" in text


def test_exit_claims_per_exit_and_the_majority_class_beside_every_exit_row(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "majority_baseline", lambda task: {"rte": 52.7, "mrpc": 81.2, "cola": 0.0}[task])
    results_dir = str(tmp_path)
    boosted = {4: [0.30, 0.50], 5: [0.32, 0.52], 6: [0.31, 0.49]}
    joint = {4: [0.20, 0.50], 5: [0.21, 0.51], 6: [0.23, 0.50]}
    for task in ("rte", "mrpc", "cola"):
        for seed in (4, 5, 6):
            write_run(results_dir, task, "boosted", seed, boosted[seed][-1], exits=boosted[seed])
            write_run(results_dir, task, "joint", seed, joint[seed][-1], exits=joint[seed])
    args, _ = compare.parse_args(["--table", "exit", "--recipe", "naive", "--results_dir", results_dir])
    compare.write_tables(args)
    claims = json.load(open(os.path.join(results_dir, "exit_table_naive.json")))["claims"]
    first = claims["mrpc"]["1"]
    mean, low, high, p = reference_comparison([boosted[s][0] for s in (4, 5, 6)], [joint[s][0] for s in (4, 5, 6)])
    assert 100 * first["mean_diff"] == pytest.approx(mean) and 100 * first["ci_low"] == pytest.approx(low)
    assert first["verdict"] == "holds" and claims["average"]["1"]["verdict"] == "holds"
    assert claims["cola"]["2"]["verdict"] == "not shown"  # 0, +1, -1 points: mean 0
    text = open(os.path.join(results_dir, "exit_table_naive.md")).read()
    assert "| 1 | 31.0 ± 1.0 (n=3) | 21.3 ± 1.5 (n=3) | +9.7 | 81.2 |" in text
    assert "| 2 | 50.3 | 50.3 | +0.0 | 44.6 |" in text  # the average table


def test_majority_baseline_is_the_constant_majority_prediction_on_dev():
    # MRPC dev: 279 of 408 positive; predicting positive everywhere: precision 279/408, recall 1
    precision = 279 / 408
    assert compare.majority_baseline("mrpc") == pytest.approx(100 * 2 * precision / (1 + precision))
    assert compare.majority_baseline("rte") == pytest.approx(100 * 146 / 277)  # not_entailment: 146 of 277
    assert compare.majority_baseline("cola") == 0.0


def fake_protocol_launch(metric_of):
    """A launch that writes run_glue's eval_results.json; ``metric_of(task, run, cmd)`` gives the value, the split
    is `carved` exactly when the command carves."""
    launched = []

    def launch(cmd, env):
        task, run_name = cmd[cmd.index("--task") + 1], cmd[cmd.index("--output_dir") + 1].split(os.sep)[-2]
        split = "carved" if "--carve_validation" in cmd else "validation"
        launched.append((task, run_name, cmd[cmd.index("--seed") + 1], split, cmd))
        value = metric_of(task, run_name, cmd)
        result = fake_eval_results(task, value, exits=[value - 0.1, value] if run_name in compare.EXIT_RUNS else None)
        result["metrics"] = {split: result["metrics"]["validation"]}
        if "exits" in result:
            result["exits"] = {split: result["exits"]["validation"]}
        out = cmd[cmd.index("--output_dir") + 1]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "eval_results.json"), "w") as f:
            json.dump(result, f)

    return launch, launched


def test_fresh_protocol_runs_the_grid_then_chooses_then_runs_the_fresh_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "machine_info", lambda device: MACHINE)
    monkeypatch.setattr(compare, "majority_baseline", lambda task: 50.0)

    def metric_of(task, run, cmd):
        lr, sampler = cmd[cmd.index("--learning_rate") + 1], cmd[cmd.index("--train_sampling_strategy") + 1]
        if "--carve_validation" in cmd:  # dense likes 5e-5 random; moe: a tie between two points
            if run == "dense":
                return 0.7 if (lr, sampler) == ("5e-5", "random") else 0.6
            return 0.65 if sampler == "random" else 0.6
        return 0.8 + 0.01 * int(cmd[cmd.index("--seed") + 1])

    launch, launched = fake_protocol_launch(metric_of)
    monkeypatch.setattr(compare, "launch", launch)
    argv = ["--table", "pad", "--protocol", "fresh", "--tasks", "rte", "--runs", "dense", "moe",
            "--results_dir", str(tmp_path / "results"), "--work_dir", str(tmp_path / "work")]
    compare.main(argv)
    grid = [x for x in launched if x[3] == "carved"]
    fresh = [x for x in launched if x[3] == "validation"]
    assert len(grid) == 2 * len(compare.GRID) and {x[2] for x in grid} == {str(compare.CHOICE_SEED)}
    assert launched.index(grid[-1]) < launched.index(fresh[0])  # the whole grid before any fresh seed
    assert sorted((x[1], x[2]) for x in fresh) == [(r, s) for r in ("dense", "moe") for s in ("4", "5", "6")]
    choice = json.load(open(tmp_path / "results" / "protocol" / "choice_pad.json"))
    assert choice["rule"] == compare.CHOICE_RULE and choice["seed"] == compare.CHOICE_SEED
    assert choice["choices"]["rte"]["dense"]["point"] == "lr5e-5_random"
    assert choice["choices"]["rte"]["moe"]["point"] == "lr1e-4_random"  # the tie: the first in grid order
    dense_cmd = next(x[4] for x in fresh if x[1] == "dense")
    assert dense_cmd[dense_cmd.index("--learning_rate") + 1] == "5e-5" and "random" in dense_cmd
    assert "--carve_validation" not in dense_cmd
    assert os.path.isfile(tmp_path / "results" / "fresh_lr5e-5_random" / "rte" / "dense-s4.json")
    table = json.load(open(tmp_path / "results" / "pad_table_fresh.json"))
    assert table["summary"]["dense"]["tasks"]["rte"]["n"] == 3
    assert table["summary"]["dense"]["tasks"]["rte"]["mean"] == pytest.approx(85.0)
    text = open(tmp_path / "results" / "pad_table_fresh.md").read()
    assert "| rte | dense | lr5e-5_random | 60.0 | 60.0 | 60.0 | 70.0 |" in text
    launched.clear()
    compare.main(argv)  # resumable: everything is there
    assert launched == []


def test_protocol_refuses_a_grid_run_on_dev_and_the_choice_seed_as_a_fresh_seed(tmp_path):
    with pytest.raises(ValueError, match="--seeds: seed 1 chose the recipes"):
        compare.parse_args(["--protocol", "fresh", "--seeds", "1", "4"])
    with pytest.raises(ValueError, match="--tasks: task 'sst2' is not in the protocol"):
        compare.parse_args(["--protocol", "fresh", "--tasks", "sst2"])
    results_dir = str(tmp_path)
    for point in compare.GRID:
        write_run(results_dir, "rte", "dense", compare.CHOICE_SEED, 0.6, recipe=f"grid_{point}",
                  split="carved" if point != "lr5e-5_gbl" else "validation")
    with pytest.raises(ValueError, match="dense-s1.json reports split 'validation', not the carved rows"):
        compare.choose_recipes(results_dir, "pad", ["rte"], ["dense"])


def test_protocol_runs_live_in_their_own_folders_and_never_join_the_seed_1_3_tables():
    # fresh_lr1e-4_gbl's dense RTE command is the naive one; it must still have its own folder
    assert compare.run_flags("fresh_lr1e-4_gbl", "rte", "dense") == compare.run_flags("naive", "rte", "dense")
    assert compare.home_recipe("fresh_lr1e-4_gbl", "rte", "dense") == "fresh_lr1e-4_gbl"
    assert compare.home_recipe("tuned", "rte", "dense") == "naive"
    for point in compare.GRID:  # the same grid for every run: MoE-family runs get no router-lr axis
        for run in ("dense", "moe", "pad_element", "pad_neuron"):
            assert "--router_lr_scale" not in compare.run_flags(f"grid_{point}", "mrpc", run)
        assert "--exit_pooling" in compare.run_flags(f"grid_{point}", "mrpc", "joint")
    args, _ = compare.parse_args(["--table", "exit", "--protocol", "fresh"])
    grid = compare.command(argparse.Namespace(**{**vars(args), "recipe": "grid_lr1e-4_gbl"}), "rte", "joint", 1, [])
    fresh = compare.command(argparse.Namespace(**{**vars(args), "recipe": "fresh_lr1e-4_gbl"}), "rte", "joint", 4, [])
    assert "--save_model" in grid and "--save_model" not in fresh  # fresh exit models are kept for the speed bench


def test_fresh_seed_path_smoke_on_the_real_model(tmp_path, monkeypatch):
    """The whole protocol with run_glue.py itself (in-process): 4 grid runs on the carved rows, the choice, 2 fresh
    seeds on dev, one step each on a tiny slice of MRPC."""
    import run_glue

    monkeypatch.setattr(compare, "launch", lambda cmd, env: run_glue.main(cmd[2:]))
    shared_glue = os.path.normpath(os.path.join(compare.REPO, "..", "shared", "data", "glue"))
    compare.main(["--table", "pad", "--protocol", "fresh", "--tasks", "mrpc", "--runs", "dense", "--seeds", "4", "5",
                  "--results_dir", str(tmp_path / "results"), "--work_dir", str(tmp_path / "work"), "--",
                  "--data_dir", shared_glue, "--max_train_samples", "8", "--max_eval_samples", "8", "--max_steps",
                  "1", "--per_device_train_batch_size", "8", "--disable_tqdm", "true"])
    choice = json.load(open(tmp_path / "results" / "protocol" / "choice_pad.json"))
    point = choice["choices"]["mrpc"]["dense"]["point"]
    for p in compare.GRID:
        record = json.load(open(compare.run_file(str(tmp_path / "results"), f"grid_{p}", "mrpc", "dense", 1)))
        assert record["split"] == "carved" and "--carve_validation 0.1" in record["command"]
        assert choice["choices"]["mrpc"]["dense"]["carved_metrics"][p] == record["main_metric"]
    for seed in (4, 5):
        record = json.load(open(compare.run_file(str(tmp_path / "results"), f"fresh_{point}", "mrpc", "dense", seed)))
        assert record["split"] == "validation" and "--carve_validation" not in record["command"]
    table = json.load(open(tmp_path / "results" / "pad_table_fresh.json"))
    assert table["summary"]["dense"]["tasks"]["mrpc"]["n"] == 2
