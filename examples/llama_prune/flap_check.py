#!/usr/bin/env python
"""Why is FLAP so far behind Taylor on SmolLM2-135M? One-shot perplexities that take FLAP apart (issue #27's note).

In the 80 % distillation table (``results/target_80_kd``) FLAP's one-shot perplexity is 1,287 against Taylor's 146
on the same 16 WikiText-2 windows. FLAP differs from uniform Taylor in three ways at once: its criterion (the
fluctuation metric ``Var(X_j)·‖W_:,j‖²``), its structure (standardised scores ranked globally, so each layer gets
its own widths) and its bias compensation. This script changes one at a time, with everything else as in the table
(the same dense model, the same 8 War and Peace calibration batches of 1 × 1024 tokens, seed 7; the same parameter
target; the same comparison windows), and evaluates every model one-shot (no recovery):

- ``flap``: FLAP as in the table (global structure, compensation); it must reproduce the table's one-shot row;
- ``flap_no_compensation``: the same structure and channels, no bias compensation;
- ``flap_uniform``: FLAP's criterion with uniform counts (Taylor's counts, ``match_parameter_count``), compensated;
- ``flap_on_dms``: FLAP's criterion on DMS per-layer seed 1's searched counts, compensated;
- ``taylor_on_flap``: Taylor's criterion on FLAP's structure (no compensation: Taylor has none).

Reads the table's run (``--table_dir``, default ``outputs/llama_prune/target_80_kd_b150``: its ``run_args.json``,
the parameter target from its uniform search stage and DMS per-layer seed 1's keep counts). Writes
``<results_dir>/results.{json,md}``; every finished variant is kept in ``<results_dir>/results.json`` and skipped on
a re-run.

    nice python examples/llama_prune/flap_check.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import prune_llama as P  # noqa: E402  (the table's own loading, calibration, export and evaluation)
from compare import machine_info, write_json_atomic  # noqa: E402  (prune_llama put examples/glue on the path)

VARIANTS = ("flap", "flap_no_compensation", "flap_uniform", "flap_on_dms", "taylor_on_flap")


def table_args(table_dir):
    """The table's settings (its ``run_args.json``) as ``prune_llama``'s parsed arguments."""
    with open(os.path.join(table_dir, "run_args.json")) as f:
        saved = json.load(f)
    args = P.parse_args(["--output_dir", table_dir])
    for k, v in saved.items():
        setattr(args, k, v)
    args.output_dir = table_dir
    return args


def build(variant, model, batches, target_params, args):
    """One one-shot pruned model of ``variant`` (module docstring) and its per-layer counts."""
    from safetensors.torch import load_file

    from hf_dynamic import DMSLlamaForCausalLM, DMSPruner
    from hf_dynamic.dms import baselines as B

    extra = 2 * model.config.hidden_size * model.config.num_hidden_layers  # o_proj + down_proj biases
    if variant == "flap_on_dms":
        # DMS's head-group and MLP counts on a (heads, mlp) pruner, which FLAP's functions need: exact as long as
        # the search kept every hidden channel and layer (checked; the committed searches did)
        searched, _ = P.make_pruner(model, "per_layer", args, 1e-2)
        searched.load_state_dict(load_file(os.path.join(
            args.output_dir, f"{P.reference_per_layer(args)}_pruner.safetensors")), strict=False)
        counts = P.kept_counts(searched)
        searched.remove()
        for kind, n in (("hidden", model.config.hidden_size), ("layers", 2 * model.config.num_hidden_layers)):
            kept = counts.get(kind, n)
            kept = sum(kept) if isinstance(kept, list) else kept
            if kept != n:
                raise ValueError(f"the DMS search pruned {kind} ({kept} of {n} kept): FLAP's criterion cannot be "
                                 "placed on its structure")
        pruner = DMSPruner(model, 0.5, prune=("heads", "mlp"), uniform=False, head_grouping=args.head_grouping)
        for kind in ("heads", "mlp"):
            pruner.topk[kind].set_keep_count(torch.tensor(counts[kind]))
        stats = B.calibration_statistics(pruner, batches)
        with P.same_kept_counts(pruner, "FLAP's importance on DMS's structure"):
            for kind, v in B.flap_scores(pruner, stats).items():
                pruner.set_importance(kind, v.float())
    else:
        uniform = variant == "flap_uniform"
        pruner = DMSPruner(model, 0.5, prune=("heads", "mlp"), uniform=uniform, head_grouping=args.head_grouping)
        stats = B.calibration_statistics(pruner, batches)
        if uniform:
            for kind, v in B.flap_scores(pruner, stats).items():
                pruner.set_importance(kind, v.float())
            B.match_parameter_count(pruner, target_params - extra)
        else:
            B.flap_prune(pruner, stats, target_params, extra_params=extra)
        if variant == "taylor_on_flap":
            with P.same_kept_counts(pruner, "Taylor's importance on FLAP's structure"):
                B.one_shot_taylor_importance(pruner, batches)
    counts = P.kept_counts(pruner)
    compensated = variant not in ("flap_no_compensation", "taylor_on_flap")
    biases = B.flap_compensation(pruner, stats) if compensated else None
    pruned = DMSLlamaForCausalLM.from_pruned(pruner, dtype=torch.float32)
    pruner.remove()
    if compensated:
        pruned = P.with_output_biases(pruned, biases)
    return pruned, counts, compensated


def markdown(out):
    lines = [
        "# FLAP taken apart: one-shot perplexity at the 80 % table's parameter target",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in out["machine"].items()) + f". Command: `{out['command']}`.",
        "",
        f"WikiText-2 test, the table's comparison tokens (the first {out['eval_tokens']:,}); no recovery. Calibration: "
        f"the table's {out['calibration']}. Table rows for comparison (one-shot): "
        + ", ".join(f"{k} {v:,.1f}" for k, v in out["table_one_shot"].items()) + ".",
        "",
        "| variant | criterion | structure | compensation | params | ppl |",
        "|---|---|---|---|---|---|",
    ]
    what = {"flap": ("FLAP", "FLAP global", "yes"), "flap_no_compensation": ("FLAP", "FLAP global", "no"),
            "flap_uniform": ("FLAP", "uniform (Taylor's counts)", "yes"),
            "flap_on_dms": ("FLAP", "DMS per-layer s1", "yes"), "taylor_on_flap": ("Taylor", "FLAP global", "no")}
    for v in VARIANTS:
        if v in out["variants"]:
            r = out["variants"][v]
            c, s, b = what[v]
            lines.append(f"| {v} | {c} | {s} | {b} | {r['params']:,} | {r['ppl']:,.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table_dir", default=os.path.join(REPO, "outputs", "llama_prune", "target_80_kd_b150"))
    p.add_argument("--table_results", default=os.path.join(HERE, "results", "target_80_kd", "results.json"))
    p.add_argument("--results_dir", default=os.path.join(HERE, "results", "flap_check"))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer

    from hf_dynamic import load_text

    args = table_args(a.table_dir)
    with open(a.table_results) as f:
        table = json.load(f)
    path = table["model_path"]
    n_eval = P.comparison_tokens(args, table["plan"])
    with open(os.path.join(a.table_dir, "stages", P.search_stages(args)[0][4] + ".json")) as f:
        target_params = json.load(f)["params"]  # the parameter count every row of the table matches
    tokenizer = AutoTokenizer.from_pretrained(path)
    wiki = torch.as_tensor(tokenizer(load_text("wikitext2"), verbose=False)["input_ids"])
    wiki = wiki[:n_eval] if n_eval else wiki
    blocks = P.chunks(torch.tensor(tokenizer(load_text("warpeace"), verbose=False)["input_ids"]), args.seq_len)
    batches = P.calibration_batches(blocks, args)

    os.makedirs(a.results_dir, exist_ok=True)
    json_path = os.path.join(a.results_dir, "results.json")
    out = {"variants": {}}
    if os.path.exists(json_path):  # finished variants are kept
        with open(json_path) as f:
            out = json.load(f)
    rows = {r["key"]: r for r in table["rows"]}
    out.update({
        "machine": machine_info(args.device), "command": "python examples/llama_prune/flap_check.py " + " ".join(argv or
                                                                                                     sys.argv[1:]),
        "eval_tokens": wiki.numel(), "target_params": target_params,
        "calibration": f"{args.calibration_batches} War and Peace batches ({args.search_batch_size} × {args.seq_len}, "
                       f"seed {P.CALIBRATION_SEED})", "table": os.path.relpath(a.table_results, REPO),
        "table_one_shot": {k: rows[k]["ppl_before_recovery"] for k in ("flap", "taylor", "dms_per_layer_s1")},
    })
    for v in a.variants:
        if v in out["variants"]:
            continue
        model = P.load_model(path, args.device)
        t0 = time.perf_counter()
        pruned, counts, compensated = build(v, model, batches, target_params, args)
        ppl = P.evaluate_ppl(pruned, wiki, args)["ppl"]
        out["variants"][v] = {"params": P.params_of(pruned), "ppl": ppl, "compensated": compensated,
                              "counts": counts, "seconds": time.perf_counter() - t0}
        print(f"{v}: ppl {ppl:.2f} params {out['variants'][v]['params']:,}", flush=True)
        write_json_atomic(json_path, out)
        with open(os.path.join(a.results_dir, "results.md"), "w") as f:
            f.write(markdown(out))
    return out


if __name__ == "__main__":
    main()
