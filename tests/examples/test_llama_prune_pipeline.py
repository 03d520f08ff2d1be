"""examples/llama_prune/prune_llama.py as resumable stages, on a tiny random Llama with a word-level tokenizer and a
tiny text folder (HF_DYNAMIC_TEXT_DIR): a stopped / crashed run continues where it stopped and ends with the rows
of an uninterrupted run; baselines match the DMS parameter count within 1 %; results.md, results.json and the
search plot are written; the speed stage runs each model in a subprocess."""

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "llama_prune" / "prune_llama.py"
WORDS = ["the", "a", "war", "peace", "prince", "andrew", "natasha", "moscow", "army", "said", "and", "of", "to",
         "was", "he", "she", "in", "that", "his", "her", "with", "had", "at", "not", "as", "on", "for", "is"]
TIMING = {"seconds", "search_s", "prune_s", "recovery_s", "finished"}


def load_script():
    spec = importlib.util.spec_from_file_location("prune_llama", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_text(words: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(words // 12)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama_prune")
    text = root / "text"
    (text / "wikitext-2-raw").mkdir(parents=True)
    (text / "gutenberg").mkdir()
    (text / "wikitext-2-raw" / "wiki.test.raw").write_text(tiny_text(600, 1))
    (text / "gutenberg" / "warpeace_input.lf.txt").write_text(tiny_text(6000, 2))
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
                         max_position_embeddings=128)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    os.environ["HF_DYNAMIC_TEXT_DIR"] = str(text)
    yield root, load_script()
    os.environ.pop("HF_DYNAMIC_TEXT_DIR")


def argv(root, out, *extra):
    return ["--model_path", str(root / "tiny"), "--device", "cpu", "--threads", "1", "--target", "0.6",
            "--dms_variants", "uniform", "per_layer", "--prune", "heads", "mlp", "--max_search_steps", "4",
            "--keep_ratio_lr", "0.3", "--seq_len", "32",
            "--recovery_steps", "2", "--eval_window", "32", "--eval_windows", "4", "--calibration_batches", "1",
            "--prefill_shapes", "1x16", "2x8", "--decode_tokens", "2", "--output_dir", str(out), *extra]


def stage_log(out):
    return [line.split()[1:] for line in (out / "stages.log").read_text().splitlines()]


def assert_same_rows(rows, reference):
    """Equal rows up to float rounding, timings left out."""
    assert [r["model"] for r in rows] == [r["model"] for r in reference]
    for row, ref in zip(rows, reference):
        row, ref = ({k: v for k, v in r.items() if k not in TIMING} for r in (row, ref))
        floats = {k for k, v in ref.items() if isinstance(v, float)}
        assert {k: v for k, v in row.items() if k not in floats} == {k: v for k, v in ref.items() if k not in floats}
        assert {k: row.get(k) for k in floats} == pytest.approx({k: ref[k] for k in floats}, rel=1e-5)


@pytest.fixture(scope="module")
def uninterrupted(setup):
    root, script = setup
    out = root / "full"
    return out, script.main(argv(root, out, "--no_speed"))


def test_stopped_and_crashed_runs_continue_to_the_uninterrupted_rows(setup, uninterrupted, monkeypatch):
    root, script = setup
    out = root / "resumed"
    script.main(argv(root, out, "--no_speed", "--stop_after", "search_per_layer"))
    assert [s for e, s in stage_log(out) if e == "done"] == ["plan", "dense_eval", "search_uniform",
                                                             "search_per_layer"]
    search_file = out / "stages" / "search_uniform.json"
    stamp = search_file.stat().st_mtime_ns

    def crash(*a, **k):
        raise RuntimeError("killed during recovery")

    with monkeypatch.context() as m:  # a stage dying mid-way leaves neither its stage file nor its model
        m.setattr(script, "recover", crash)
        with pytest.raises(RuntimeError, match="killed"):
            script.main(argv(root, out, "--no_speed"))
    assert not (out / "stages" / "recover_dms.json").exists() and not (out / "dms_model").exists()
    assert (out / "stages" / "eval_dms_pruned.json").exists()

    results = script.main(argv(root, out, "--no_speed"))
    log = stage_log(out)
    assert log.count(["start", "recover_dms"]) == 2 and log.count(["done", "recover_dms"]) == 1
    for stage in ("plan", "dense_eval", "search_uniform", "search_per_layer", "prune_magnitude", "eval_dms_pruned"):
        assert log.count(["start", stage]) == 1 and ["skip", stage] in log
    assert search_file.stat().st_mtime_ns == stamp
    _, reference = uninterrupted
    assert [r["model"] for r in results["rows"]] == ["dense", "DMS", "DMS per-layer", "magnitude", "taylor"]
    assert_same_rows(results["rows"], reference["rows"])
    assert all("ppl_before_recovery" in r and "ppl" in r for r in results["rows"])

    with pytest.raises(ValueError, match="target"):  # a re-run must keep the settings of the files it continues
        script.main(argv(root, out, "--no_speed") + ["--target", "0.5"])


def test_baselines_match_the_dms_parameter_count_within_one_percent(uninterrupted):
    out, results = uninterrupted
    rows = {r["key"]: r for r in results["rows"]}
    dense = rows["dense"]["params"]
    assert rows["dms"]["params"] < 0.75 * dense  # the search did prune
    for key in ("magnitude", "taylor"):
        assert abs(rows[key]["params"] / rows["dms"]["params"] - 1) <= 0.01
        assert LlamaForCausalLM.from_pretrained(out / f"{key}_model").num_parameters() == rows[key]["params"]
    assert results["targets"]["baselines_within_1pct_of_dms_params"] is True


def test_results_plot_and_speed_stage(setup, uninterrupted):
    root, script = setup
    out, _ = uninterrupted
    results_dir = root / "results"
    before = len(stage_log(out))
    results = script.main(argv(root, out, "--results_dir", str(results_dir), "--speed_isolation", "inprocess"))
    # it resumed: only the speed stage ran
    assert [s for e, s in stage_log(out)[before:] if e == "start"] == ["speed"]
    saved = json.loads((results_dir / "results.json").read_text())
    assert_same_rows(saved["rows"], results["rows"])
    assert saved["plan"]["measured"]["search_step_s"] > 0 and saved["plan"]["max_search_steps"] == 4
    assert saved["machine"]["cores"] and saved["command"].startswith("python examples/llama_prune/prune_llama.py")
    assert set(saved["search_log"]) == {"search_uniform", "search_per_layer"}
    assert set(saved["stage_seconds"]) >= {"plan", "speed", "full_eval_final_dms", "full_eval_best_baseline"}
    for r in saved["rows"]:
        assert r["prefill_tokens_per_s_1x16"] > 0 and r["prefill_tokens_per_s_2x8"] > 0
        assert r["decode_tokens_per_s_b1"] > 0
        assert r["flops_measured"]["1x16"] > 0
    assert any("ppl_full" in r for r in saved["rows"][1:3]) and any("ppl_full" in r for r in saved["rows"][3:])
    dms = saved["rows"][1]
    assert dms["flop_reduction_1x16"] == pytest.approx(1 / dms["flops_ratio"], rel=0.2)
    table = (results_dir / "results.md").read_text()
    for text in ("| DMS (pruning only) |", "| taylor + recovery |", "## Speed", "## Full WikiText-2 test set",
                 "Per-layer DMS", "## Plan", "median of 5 (prefill) / 3 (decode) reps", "prefill_speedup_1x16"):
        assert text in table
    png = (results_dir / "search_trajectory.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_speed_worker_measures_one_model_in_a_fresh_process(setup, tmp_path):
    root, _ = setup
    out = tmp_path / "speed.json"
    subprocess.run([sys.executable, str(SCRIPT), "--speed_worker", str(root / "tiny"), str(out), "--threads", "1",
                    "--prefill_shapes", "1x16", "--decode_tokens", "2", "--decode_batches", "1"], check=True)
    speed = json.loads(out.read_text())
    assert speed["prefill_tokens_per_s_1x16"] > 0 and speed["decode_tokens_per_s_b1"] > 0 and speed["threads"] == 1
    assert speed["peak_rss_mb"] >= speed["baseline_rss_mb"] > 50 and speed["model_peak_mb"] >= 0
    if sys.platform == "linux":  # this process's own high-water mark, not one inherited from pytest
        assert speed["memory_source"] == "VmHWM"
