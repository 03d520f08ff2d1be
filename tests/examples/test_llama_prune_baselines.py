"""examples/llama_prune/prune_llama.py with the distillation recovery and the extra baselines (FLAP, Wanda-sp,
criteria on DMS's per-layer structure), two per-layer search seeds and the next-token ablation, on the tiny Llama
of test_llama_prune_pipeline.py: parameters matched, FLAP's compensated export equals the mean-substituted
unpruned model and reloads, a recovery killed mid-way resumes from its Trainer checkpoint to the rows of an
uninterrupted run."""

import shutil

import pytest
import torch
from test_llama_prune_pipeline import argv, assert_same_rows, setup, stage_log  # noqa: F401  (setup: a fixture)

from hf_dynamic import DMSLlamaForCausalLM, DMSPruner
from hf_dynamic.dms.baselines import calibration_statistics, flap_compensation, flap_prune

NEW = ["--search_seeds", "1", "2", "--baselines", "flap", "wanda_sp", "taylor", "magnitude_dms", "taylor_dms",
       "--ablation_ntp", "--checkpoint_every", "1", "--no_speed"]


@pytest.fixture(scope="module")
def uninterrupted(setup):  # noqa: F811
    root, script = setup
    out = root / "kd_full"
    return out, script.main(argv(root, out, *NEW))


def test_flap_export_equals_the_unpruned_model_with_removed_channels_at_their_mean(setup, tmp_path):
    from dms_testing import tiny_llama

    _, script = setup
    model = tiny_llama(random_norms=True)
    batches = [torch.randint(0, 64, (2, 9)) for _ in range(2)]
    pruner = DMSPruner(model, 0.5, prune=("heads", "mlp"), uniform=False)
    stats = calibration_statistics(pruner, batches)
    flap_prune(pruner, stats, int(0.7 * model.num_parameters()), extra_params=2 * 32 * 3)
    small = script.with_output_biases(DMSLlamaForCausalLM.from_pruned(pruner), flap_compensation(pruner, stats))
    hard = pruner.masks("hard")
    pruner.remove()

    hooks = []  # the reference: the unpruned model, removed o_proj / down_proj inputs replaced by their mean
    for i, layer in enumerate(model.model.layers):
        for proj, removed, mean in (
            (layer.self_attn.o_proj, hard["heads_q"][i].repeat_interleave(8) == 0, stats["attn"]["mean"][i]),
            (layer.mlp.down_proj, hard["mlp"][i] == 0, stats["mlp"]["mean"][i]),
        ):
            def substitute(mod, args, removed=removed, mean=mean):
                x = args[0].clone()
                x[..., removed] = mean[removed].to(x.dtype)
                return (x,)
            hooks.append(proj.register_forward_pre_hook(substitute))
    ids = torch.randint(0, 64, (2, 11))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        torch.testing.assert_close(small(input_ids=ids).logits, reference, rtol=0, atol=1e-5)
    for h in hooks:
        h.remove()
    assert small.model.layers[0].self_attn.o_proj.bias.abs().sum() > 0
    small.save_pretrained(tmp_path / "flap")
    loaded = DMSLlamaForCausalLM.from_pretrained(tmp_path / "flap")  # a real, loadable checkpoint
    assert loaded.config.output_proj_bias is True
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, reference, rtol=0, atol=1e-5)


def test_every_baseline_is_matched_and_the_rows_are_complete(setup, uninterrupted):  # noqa: F811
    _, script = setup
    _, results = uninterrupted
    rows = {r["key"]: r for r in results["rows"]}
    assert list(rows) == ["dense", "dms", "dms_per_layer_s1", "dms_per_layer_s2", "flap", "wanda_sp", "taylor",
                          "magnitude_dms", "taylor_dms", "dms_per_layer_s1_ntp"]
    for key in ("flap", "wanda_sp", "taylor"):
        assert abs(rows[key]["params"] / rows["dms"]["params"] - 1) <= 0.01
    for key in ("magnitude_dms", "taylor_dms"):  # DMS's own per-layer structure: the same count, other elements
        assert rows[key]["params"] == rows["dms_per_layer_s1"]["params"]
        assert rows[key]["config"]["layer_intermediate_sizes"] == rows["dms_per_layer_s1"]["config"][
            "layer_intermediate_sizes"]
    assert rows["dms_per_layer_s1_ntp"]["ablation"] and rows["dms_per_layer_s1_ntp"]["ppl"] != rows[
        "dms_per_layer_s1"]["ppl"]
    assert all("ppl" in r and "ppl_before_recovery" in r and r["flops_ratio"] > 0 for r in rows.values())
    # issue #27's targets as measured ratios, dense on the whole test set beside the final models
    targets, baselines = results["targets"], [k for k in rows if k in script.BASELINES]
    best = min(baselines, key=lambda k: rows[k]["ppl"])
    assert targets["best_baseline"] == best
    for key in ("dms_per_layer_s1", "dms_per_layer_s2"):
        assert targets[f"{key}_over_dense"] == pytest.approx(rows[key]["ppl"] / rows["dense"]["ppl"])
        assert targets[f"{key}_over_best_baseline"] == pytest.approx(rows[key]["ppl"] / rows[best]["ppl"])
    assert targets["dms_per_layer_s1_kd_minus_ntp_ppl"] == pytest.approx(
        rows["dms_per_layer_s1"]["ppl"] - rows["dms_per_layer_s1_ntp"]["ppl"])
    assert rows["dense"]["ppl_full"] > 0
    full_final = [k for k in rows if "ppl_full" in rows[k] and k != "dense"]
    if "dms_per_layer_s1" in full_final and best in full_final:
        assert targets["dms_per_layer_s1_over_best_baseline_full"] == pytest.approx(
            rows["dms_per_layer_s1"]["ppl_full"] / rows[best]["ppl_full"])
    plan = results["plan"]
    assert plan["measured"]["teacher_forward_s"] > 0 and plan["recovery_tokens"] == 2 * 32
    assert "9 recoveries" in plan["reason"] and "War and Peace tokens" in plan["reason"]


def test_a_recovery_killed_mid_way_resumes_from_its_checkpoint(setup, uninterrupted, monkeypatch):
    root, script = setup
    full, reference = uninterrupted
    out = root / "kd_resumed"  # the uninterrupted run's files up to the ablation's recovery (the last one)
    shutil.copytree(full, out)
    done = [stage for event, stage in stage_log(full) if event == "done"]
    for stage in done[done.index("recover_dms_per_layer_s1_ntp"):]:
        (out / "stages" / f"{stage}.json").unlink()
    shutil.rmtree(out / "dms_per_layer_s1_ntp_model")
    from hf_dynamic.distill.trainer import DistillationTrainer

    original, calls = DistillationTrainer.training_step, []

    def dies_at_the_second_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed during recovery")
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(DistillationTrainer, "training_step", dies_at_the_second_step)
        with pytest.raises(RuntimeError, match="killed"):
            script.main(argv(root, out, *NEW))
    work = out / "recover_dms_per_layer_s1_ntp"
    assert (work / "checkpoint-1").is_dir() and not (out / "stages" / "recover_dms_per_layer_s1_ntp.json").exists()
    results = script.main(argv(root, out, *NEW))
    assert not work.exists()  # the checkpoints go once the stage is done
    log = stage_log(out)
    assert log.count(["start", "recover_dms_per_layer_s1_ntp"]) == 3  # the copied run, the killed one, this one
    assert ["skip", "recover_dms"] in log
    assert_same_rows(results["rows"], reference["rows"])


def test_flap_check_reproduces_the_table_and_changes_one_part_at_a_time(uninterrupted, tmp_path):
    """examples/llama_prune/flap_check.py on the tiny table: its ``flap`` is the table's one-shot FLAP row, and each
    other variant keeps the structure it claims to keep."""
    import importlib.util
    import pathlib

    full, results = uninterrupted
    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "llama_prune" / "flap_check.py"
    spec = importlib.util.spec_from_file_location("flap_check", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    out = check.main(["--table_dir", str(full), "--table_results", str(full / "results.json"),
                      "--results_dir", str(tmp_path)])
    rows = {r["key"]: r for r in results["rows"]}
    v = out["variants"]
    assert list(v) == list(check.VARIANTS)
    assert v["flap"]["ppl"] == pytest.approx(rows["flap"]["ppl_before_recovery"], rel=1e-5)
    assert v["flap"]["params"] == rows["flap"]["params"]
    assert v["flap_no_compensation"]["counts"] == v["taylor_on_flap"]["counts"] == v["flap"]["counts"]
    hidden, layers = 32, 2  # the two output biases per layer are all that compensation adds
    assert v["flap"]["params"] - v["flap_no_compensation"]["params"] == 2 * hidden * layers
    assert len(set(v["flap_uniform"]["counts"]["mlp"])) == 1 and len(set(v["flap_uniform"]["counts"]["heads"])) == 1
    assert v["flap_on_dms"]["counts"]["mlp"] == rows["dms_per_layer_s1"]["config"][
        "layer_intermediate_sizes"]
    assert (tmp_path / "results.md").read_text().count("| flap") == 4
    again = check.main(["--table_dir", str(full), "--table_results", str(full / "results.json"),
                        "--results_dir", str(tmp_path)])  # finished variants are kept, not re-run
    assert again["variants"] == v


def test_speed_ratios_are_tabled_when_the_last_row_is_the_ablation(setup, uninterrupted, tmp_path):
    """The ablation row (last, no speed of its own) must not hide the speed-up columns of the others."""
    root, script = setup
    full, _ = uninterrupted
    out = tmp_path / "kd_speed"
    shutil.copytree(full, out)
    flags = [f for f in NEW if f != "--no_speed"]
    results = script.main(argv(root, out, *flags, "--speed_isolation", "inprocess"))
    assert results["rows"][-1]["key"] == "dms_per_layer_s1_ntp" and "prefill_speedup_1x16" not in results["rows"][-1]
    table = (out / "results.md").read_text()
    speed = table[table.index("## Speed"):]
    header = speed.splitlines()[2]
    assert "prefill_speedup_1x16" in header and "speedup_over_flop_reduction_2x8" in header
    assert [line.split("|")[1].strip() for line in speed.splitlines()[4:7]] == ["dense", "DMS", "DMS per-layer (seed 1)"]


def test_ppl_vs_params_plots_one_run_and_several(setup, uninterrupted, tmp_path):
    _, script = setup
    full, _ = uninterrupted
    png = (full / "ppl_vs_params.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    both = tmp_path / "both.png"  # the 80 % and 50 % tables in one figure: here the same run twice
    script.main(["--plot_results", str(both), str(full / "results.json"), str(full / "results.json")])
    assert both.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(FileNotFoundError):
        script.main(["--plot_results", str(tmp_path / "x.png"), str(tmp_path / "missing.json")])
    with pytest.raises(ValueError, match="--plot_results needs OUT.png and at least one results.json"):
        script.main(["--plot_results", str(tmp_path / "x.png")])
