"""The sizing rule of examples/llama_prune/prune_llama.py (``choose_sizes``) on given step times: the estimate fits
the budget when it can, the searches stay under 30 % of it, explicit sizes win, ``--budget_minutes 0`` is the
fixed recipe."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "llama_prune" / "prune_llama.py"
FULL_WINDOWS = 295  # WikiText-2 test, 301,947 SmolLM2 tokens in windows of 1024


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("prune_llama_plan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan(script, times, *extra):
    args = script.parse_args(["--device", "cpu", "--dms_variants", "uniform", "per_layer", *extra])
    return script.choose_sizes(times, args, FULL_WINDOWS)


@pytest.mark.parametrize("target", ["0.8", "0.5"])
def test_plan_fits_the_budget_with_a_minor_search_share(script, target):
    times = {"eval_window_s": 4.0, "search_step_s": 10.0, "recovery_step_s": 14.0}
    sizes = plan(script, times, "--target", target)
    estimate = sizes["estimate"]
    assert estimate["total_s"] == pytest.approx(120 * 60, rel=0.02)
    assert estimate["search_share_of_total"] <= 0.3
    assert sizes["eval_windows"] in (64, 32, 16) and sizes["max_search_steps"] >= 20 and sizes["recovery_steps"] >= 10
    assert sizes["keep_ratio_lr"] == pytest.approx(min(0.05, max(1e-2, 2 / sizes["max_search_steps"])))
    assert sizes["search_batch_size"] == sizes["recovery_batch_size"] == 1 and sizes["seq_len"] == 1024
    assert "budget 120 min" in sizes["reason"]


def test_plan_keeps_explicit_sizes_and_floors_when_the_budget_is_too_small(script):
    slow = {"eval_window_s": 13.0, "search_step_s": 40.0, "recovery_step_s": 60.0}
    sizes = plan(script, slow)
    assert (sizes["eval_windows"], sizes["max_search_steps"], sizes["recovery_steps"]) == (16, 20, 10)
    assert sizes["estimate"]["total_s"] > 120 * 60  # reported, not hidden
    sizes = plan(script, slow, "--max_search_steps", "7", "--eval_windows", "64")
    assert sizes["max_search_steps"] == 7 and sizes["eval_windows"] == 64 and "explicit" in sizes["reason"]
    fixed = plan(script, slow, "--budget_minutes", "0")
    assert (fixed["eval_windows"], fixed["max_search_steps"], fixed["recovery_steps"]) == (0, 300, 300)


KD_TABLE = ["--target", "0.8", "--search_seeds", "1", "2", "--baselines", "flap", "wanda_sp", "taylor", "magnitude",
            "taylor_dms", "magnitude_dms", "--ablation_ntp", "--budget_minutes", "300", "--eval_window_choices", "0",
            "128", "64", "32", "16"]


def test_distillation_table_plan_charges_the_teacher_and_prefers_the_full_test_set(script):
    times = {"eval_window_s": 1.0, "search_step_s": 3.0, "recovery_step_s": 4.0, "teacher_forward_s": 1.0}
    sizes = plan(script, times, *KD_TABLE)
    e = sizes["estimate"]
    assert sizes["eval_windows"] == 0  # the whole test set fits: every row on it, no separate full evaluations
    assert e["eval_full_s"] == 0 and e["eval_comparison_s"] == pytest.approx(FULL_WINDOWS * (1 + 9 * 0.8 + 10 * 0.8))
    assert e["total_s"] == pytest.approx(300 * 60, rel=0.02)
    # 10 recoveries: 9 distilled (student at 0.8 × the dense step + the teacher's forward) + the next-token ablation
    per_step = 9 * (0.8 * 4.0 + 1.0) + 0.8 * 4.0
    assert e["recovery_s"] == pytest.approx(sizes["recovery_steps"] * per_step)
    assert sizes["recovery_tokens"] == sizes["recovery_steps"] * 1024
    assert f"{sizes['recovery_tokens']:,} War and Peace tokens" in sizes["reason"]
    assert "10 recoveries" in sizes["reason"]
    slow = dict(times, eval_window_s=6.0)  # the full set no longer leaves half the budget: fewer windows
    assert plan(script, slow, *KD_TABLE)["eval_windows"] in (128, 64, 32, 16)


def test_cpu_clock_and_bad_combinations(script):
    args = script.parse_args(["--device", "cpu", "--plan_clock", "cpu", "--threads", "1"])
    clock = script.StepClock(args)
    assert clock("busy", lambda: sum(range(200_000))) > 0 and clock.other["busy"] > 0
    with pytest.raises(SystemExit):
        script.parse_args(["--device", "cpu", "--recovery_loss", "ntp", "--ablation_ntp",
                           "--dms_variants", "uniform", "per_layer"])
    with pytest.raises(SystemExit):
        script.parse_args(["--device", "cpu", "--baselines", "taylor_dms"])  # needs a per-layer search
