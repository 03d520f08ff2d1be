#!/usr/bin/env python
"""DMS-pruned SmolLM2-135M in llama.cpp (through llama-cpp-python): prompt processing and generation speed.

Rows: dense SmolLM2 and the DMS exports of examples/llama_prune at 80 % and 50 % of the parameters (uniform and
per-layer), each written by ``hf_dynamic.save_gguf`` as ``f16`` and ``q8_0``, plus the packaged Q4_1 GGUF (written
by llama.cpp's own converter) as a second dense row. Speed depends only on the widths, so the pruned models are
built from the per-layer widths recorded in ``examples/llama_prune/results/target_*/results.json`` with the
dense model's weights sliced to them (the first heads / channels of each layer: not the searched ones, which that
file does not record, and without recovery training — their perplexity is not what this measures).

- prompt processing (pp): tokens per second of one 512-token prompt evaluated in one batch;
- generation (tg): tokens per second of 128 tokens decoded one at a time (batch 1) after a 1-token prompt, as
  llama.cpp's ``llama-bench`` does (``Llama.eval`` of one token: the Python call adds well under 1 ms a token).

Every row uses the same threads (``--threads``, default 2). Rows run round-robin (each repeat loads and times
every model once), so a change of machine load hits them alike; the table keeps each row's best repeat and its
ratio to the dense row of the same dtype from the same run. Beside them: the PyTorch speed-ups the example
measured (fp32, prefill 1 × 1024 and decode batch 1) and the FLOP reduction (dense / pruned matmul FLOPs per
token at the workload's mean context, :func:`flops_per_token`), with the target llama.cpp speed-up ≥ 0.8 × FLOP reduction. The load average is recorded: on a shared
machine the absolute numbers are noisy, the ratios less so.

    python bench/llama_cpp.py --machine cpu        # ~5-10 min on 2 cores: 11 rows x 3 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _results import cpu_model, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_RESULTS = REPO / "examples" / "llama_prune" / "results"
TARGETS = (80, 50)
VARIANTS = {"dms": "uniform", "dms_per_layer": "per-layer"}
DTYPES = ("f16", "q8_0")
SPEEDUP_TARGET = 0.8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt_tokens", type=int, default=512)
    parser.add_argument("--gen_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--machine", default="cpu", help="results file label")
    parser.add_argument("--work_dir", default=None, help="where the GGUF files go (default: a temporary folder)")
    parser.add_argument("--check", nargs="*", default=["dense_100", "dms_per_layer_80"],
                        help="models (<key>_<target>) whose llama.cpp logits and greedy text are checked against "
                             "PyTorch, exported in f32 and each timed dtype")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ models
def example_rows(target: int) -> dict:
    """The example's result rows at ``target`` %, by key (dense, dms, dms_per_layer, ...)."""
    data = json.loads((EXAMPLE_RESULTS / f"target_{target}" / "results.json").read_text())
    return {row["key"]: row for row in data["rows"]}


def sliced_model(dense, widths: dict):
    """``dense`` (a LlamaForCausalLM) cut to the recorded ``widths``: hidden channels, layers, and per layer the
    first query heads (whole KV groups), KV heads and MLP channels. A ``dms_llama`` model when the widths vary by
    layer, else a LlamaForCausalLM. Weights: the dense model's leading rows / columns."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_dynamic.models.dms_llama import DMSLlamaConfig, DMSLlamaForCausalLM

    src = dense.config
    group = src.num_attention_heads // src.num_key_value_heads
    n_layers = widths["num_hidden_layers"]
    heads = widths.get("layer_num_attention_heads", [widths["num_attention_heads"]] * n_layers)
    kv = widths.get("layer_num_key_value_heads", [h // group for h in heads])
    ff = widths.get("layer_intermediate_sizes", [widths["intermediate_size"]] * n_layers)
    base = {k: v for k, v in src.to_dict().items()
            if (k in LlamaConfig().to_dict() or k == "head_dim") and k not in ("model_type", "architectures")}
    base.update(hidden_size=widths["hidden_size"], num_hidden_layers=n_layers, head_dim=src.head_dim)
    if "layer_num_attention_heads" in widths:
        config = DMSLlamaConfig(**base, layer_num_attention_heads=heads, layer_num_key_value_heads=kv,
                                layer_intermediate_sizes=ff)
        model = DMSLlamaForCausalLM(config)
    else:
        base.update(num_attention_heads=heads[0], num_key_value_heads=kv[0], intermediate_size=ff[0])
        model = LlamaForCausalLM(LlamaConfig(**base))
    source = dense.state_dict()
    with torch.no_grad():
        for name, param in model.state_dict().items():
            param.copy_(source[name][tuple(slice(0, n) for n in param.shape)])
    return model.eval()


def flops_per_token(model, context: float) -> float:
    """Matmul FLOPs of one token attending to ``context`` positions: 2 × (weights of every linear layer, the output
    projection included) + 4 × context × (query heads × head size), summed over layers (q·k and the weighted sum
    of values)."""
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = sum(layer.self_attn.q_proj.out_features for layer in model.model.layers
                    if getattr(layer, "self_attn", None) is not None)
    return 2 * weights + 4 * context * attention


# ------------------------------------------------------------------------------------------------ accuracy
CHECK_TEXT = ("Small language models mostly run on laptops and phones, where memory and power are scarce. Pruning "
              "removes the attention heads, channels and layers a model needs least, so that the smaller model "
              "answers faster while keeping most of what the larger one knew. The question is always how much can "
              "go before the answers get worse, and whether the engine that runs the model turns fewer weights "
              "into less time.")


@torch.no_grad()
def accuracy_check(llama_cpp, model, tokenizer, path: Path, threads: int, new_tokens: int = 32) -> dict:
    """llama.cpp against PyTorch fp32 on a 64+-token English prompt: max |Δlogit| / std(logits) over the prompt,
    and the greedy continuation of ``new_tokens`` tokens (both through their KV caches)."""
    tokens = tokenizer(CHECK_TEXT)["input_ids"]
    out = model(torch.tensor([tokens]), use_cache=True)
    reference = out.logits[0].numpy()
    ref_generated = []
    for _ in range(new_tokens):  # greedy with transformers' KV cache
        ref_generated.append(int(out.logits[0, -1].argmax()))
        out = model(torch.tensor([[ref_generated[-1]]]), cache=out.cache, use_cache=True)
    f32_cache = {"type_k": 0, "type_v": 0} if path.name.endswith("_f32.gguf") else {}  # 0 = GGML_TYPE_F32
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, n_threads=threads, verbose=False,
                          **f32_cache)
    try:
        llm.eval(tokens)
        logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
        generated = []
        for _ in range(new_tokens):
            generated.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([generated[-1]])
    finally:
        llm.close()
    same = next((i for i, (a, b) in enumerate(zip(generated, ref_generated)) if a != b), new_tokens)
    return {"prompt_tokens": len(tokens), "max_abs_logit_diff_over_std": float(np.abs(logits - reference).max()
                                                                              / reference.std()),
            "greedy_tokens_equal": same, "greedy_tokens": new_tokens,
            "llama_cpp_text": tokenizer.decode(generated), "pytorch_text": tokenizer.decode(ref_generated)}


# ------------------------------------------------------------------------------------------------ timing
def time_model(llama_cpp, path: Path, args, rng) -> dict:
    """pp / tg tokens per second of one freshly loaded model."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=args.prompt_tokens + args.gen_tokens + 8,
                          n_batch=args.prompt_tokens, n_threads=args.threads, n_threads_batch=args.threads,
                          verbose=False)
    try:
        n_vocab = llm.n_vocab()
        llm.eval(rng.integers(0, n_vocab, 16).tolist())  # warm-up (allocations, first-touch of the weights)
        llm.reset()
        prompt = rng.integers(0, n_vocab, args.prompt_tokens).tolist()
        start = time.perf_counter()
        llm.eval(prompt)
        pp = args.prompt_tokens / (time.perf_counter() - start)
        llm.reset()
        llm.eval([int(rng.integers(0, n_vocab))])
        start = time.perf_counter()
        for token in rng.integers(0, n_vocab, args.gen_tokens).tolist():
            llm.eval([token])
        tg = args.gen_tokens / (time.perf_counter() - start)
        return {"pp": pp, "tg": tg}
    finally:
        llm.close()


# ------------------------------------------------------------------------------------------------ main
def import_llama_cpp():
    """The llama-cpp-python package. Run as a script, this file's folder is sys.path[0] and its own name
    (llama_cpp.py) would shadow the package, so the folder is left out of the search path for the import."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        import llama_cpp
    finally:
        sys.path[:] = saved
    return llama_cpp


def main(argv=None):
    args = parse_args(argv)
    llama_cpp = import_llama_cpp()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_dynamic

    torch.set_num_threads(1)  # PyTorch only slices the models and computes references: leave the cores to llama.cpp
    load_before = os.getloadavg()
    started = time.time()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-llama-cpp-"))
    work.mkdir(parents=True, exist_ok=True)
    smollm2 = hf_dynamic.smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    dense = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()

    rows = []  # each: name, variant, target, dtype, path, flops, pytorch ratios
    # mean attended context: a 512-token prompt attends to (512 + 1) / 2 positions on average
    pp_context = (args.prompt_tokens + 1) / 2
    tg_context = 1 + (args.gen_tokens + 1) / 2
    dense_flops = (flops_per_token(dense, pp_context), flops_per_token(dense, tg_context))
    examples = {t: example_rows(t) for t in TARGETS}
    models = {("dense", 100): (dense, None)}
    for target in TARGETS:
        for key in VARIANTS:
            models[(key, target)] = (sliced_model(dense, examples[target][key]["config"]), examples[target][key])
    export_seconds, checks = {}, {}
    for (key, target), (model, example) in models.items():
        flops = (flops_per_token(model, pp_context), flops_per_token(model, tg_context))
        dense_row = examples[TARGETS[0] if target == 100 else target]["dense"]
        pytorch = {}
        if example is not None:
            pytorch = {
                "pytorch_prefill_speedup": example["prefill_speedup_1x1024"],
                "pytorch_decode_speedup": example["decode_tokens_per_s_b1"] / dense_row["decode_tokens_per_s_b1"],
            }
        checked = f"{key}_{target}" in args.check
        for dtype in (["f32"] if checked else []) + list(args.dtypes):
            path = work / f"{key}_{target}_{dtype}.gguf"
            start = time.perf_counter()
            hf_dynamic.save_gguf(model, tokenizer, path, dtype=dtype)
            export_seconds[path.name] = round(time.perf_counter() - start, 2)
            if checked:
                checks[path.name] = accuracy_check(llama_cpp, model, tokenizer, path, args.threads)
                print(path.name, checks[path.name])
            if dtype == "f32":
                path.unlink()
                continue
            rows.append({"model": "dense" if key == "dense" else f"DMS {VARIANTS[key]} {target} %", "key": key,
                         "target": target, "dtype": dtype, "path": path, "params": model.num_parameters(),
                         "flop_reduction": dense_flops[0] / flops[0], "tg_flop_reduction": dense_flops[1] / flops[1],
                         **pytorch})
    rows.append({"model": "dense (packaged Q4_1, llama.cpp's converter)", "key": "dense_q4_1", "target": 100,
                 "dtype": "q4_1", "path": hf_dynamic.smollm2_gguf_path(), "params": dense.num_parameters(),
                 "flop_reduction": 1.0, "tg_flop_reduction": 1.0})
    del models, dense

    rng = np.random.default_rng(0)
    timings = {i: [] for i in range(len(rows))}
    for _ in range(args.repeats):
        for i, row in enumerate(rows):
            timings[i].append(time_model(llama_cpp, row["path"], args, rng))
            print(f"repeat {len(timings[i])}: {row['model']} {row['dtype']}: {timings[i][-1]}", flush=True)
    for i, row in enumerate(rows):
        row["pp_tokens_per_s"] = max(t["pp"] for t in timings[i])
        row["tg_tokens_per_s"] = max(t["tg"] for t in timings[i])
        row["repeats"] = timings[i]
    for row in rows:  # the packaged Q4_1 row is compared with the dense row of the first dtype
        dtype = row["dtype"] if row["dtype"] in args.dtypes else args.dtypes[0]
        ref = next(r for r in rows if r["key"] == "dense" and r["dtype"] == dtype)
        row["speedup_against"] = f"dense {dtype}"
        row["pp_speedup"] = row["pp_tokens_per_s"] / ref["pp_tokens_per_s"]
        row["tg_speedup"] = row["tg_tokens_per_s"] / ref["tg_tokens_per_s"]
        pruned = row["key"] in VARIANTS
        row["pp_speedup_over_flop_reduction"] = row["pp_speedup"] / row["flop_reduction"] if pruned else None
        row["tg_speedup_over_flop_reduction"] = row["tg_speedup"] / row["tg_flop_reduction"] if pruned else None
        row["meets_target"] = row["pp_speedup"] >= SPEEDUP_TARGET * row["flop_reduction"] if pruned else None
        row["path"] = row["path"].name

    command = "python bench/llama_cpp.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "command": command.strip(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
                    "llama_cpp_python": llama_cpp.__version__, "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "settings": {"prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "repeats": args.repeats},
        "export_seconds": export_seconds,
        "accuracy_checks": checks,
        "seconds": round(time.time() - started, 1),
        "rows": rows,
    }
    stem = write_results("llama_cpp", args.machine, result, markdown(result))
    print(markdown(result))
    print(f"wrote {stem}.json / .md")


def markdown(result) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        "# DMS-pruned SmolLM2-135M in llama.cpp",
        "",
        f"Command: `{result['command']}`; machine: {m['cpu']} ({m['cores']} cores), llama-cpp-python "
        f"{m['llama_cpp_python']}, {m['threads']} threads for every row; load average before "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_after'])}; {result['seconds']:.0f} s in all.",
        "",
        f"pp = prompt processing ({s['prompt_tokens']} tokens, one batch), tg = generation ({s['gen_tokens']} tokens, "
        f"batch 1); best of {s['repeats']} round-robin repeats; speed-ups against the dense row of the same dtype. "
        "Pruned models: the widths of examples/llama_prune/results (dense weights sliced to them). PyTorch "
        "columns: that example's fp32 measurements (prefill 1 × 1024, decode batch 1).",
        "",
        "| model | dtype | params | pp tok/s | tg tok/s | pp speed-up | tg speed-up | FLOP reduction (pp) | "
        "pp / FLOP red. | tg / FLOP red. (tg) | pp ≥ 0.8 × FLOP red. | PyTorch prefill speed-up | PyTorch decode speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        pt = (f"{r['pytorch_prefill_speedup']:.3f} | {r['pytorch_decode_speedup']:.3f}"
              if "pytorch_prefill_speedup" in r else "— | —")
        pruned = r["meets_target"] is not None
        ratios = (f"{r['pp_speedup_over_flop_reduction']:.3f} | {r['tg_speedup_over_flop_reduction']:.3f} | "
                  f"{'yes' if r['meets_target'] else 'no'}") if pruned else "— | — | —"
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['params']:,} | {r['pp_tokens_per_s']:.1f} | {r['tg_tokens_per_s']:.1f}"
            f" | {r['pp_speedup']:.3f} | {r['tg_speedup']:.3f} | {r['flop_reduction']:.3f} | {ratios} | {pt} |"
        )
    if result["accuracy_checks"]:
        lines += [
            "",
            "## llama.cpp against PyTorch (fp32), real weights",
            "",
            f"A {next(iter(result['accuracy_checks'].values()))['prompt_tokens']}-token English prompt: max |Δlogit| "
            "/ std(logits) over the prompt, and how many of 32 greedy tokens agree before the first difference "
            "(both decoding through their KV caches; f32 files with an f32 KV cache in llama.cpp).",
            "",
            "| file | max abs Δlogit / std | greedy tokens equal | llama.cpp continuation |",
            "|---|---|---|---|",
        ]
        for name, c in result["accuracy_checks"].items():
            text = c["llama_cpp_text"].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {name} | {c['max_abs_logit_diff_over_std']:.2e} | {c['greedy_tokens_equal']} / "
                         f"{c['greedy_tokens']} | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
