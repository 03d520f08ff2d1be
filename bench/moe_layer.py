#!/usr/bin/env python
"""Expert-layer speed: hf_dynamic's kernel against transformers' and against dense FFNs.

1. One FFN layer (BERT-base 768 → 3072 → 768 with biases, GELU), forward (no grad) and forward+backward, timed
   round-robin in one run: ``dense`` (the BERT FFN), ``dense_equal_flops`` (width top_k·d_ff: the MoE's active
   FLOPs, the practical limit), ``transformers_grouped_mm`` (transformers' ``grouped_mm`` experts with biases,
   the peer), ``ours_moe`` (κ = 1 on ``hf_dynamic_grouped_mm``) and ``ours_pad_neuron`` (PAD neuron mode κ = 0.5:
   a shared (1 − κ)·d_ff FFN plus routed κ·d_ff experts). MoE layers include their router. Targets (GPU): ours_moe
   ≤ 1.3× (fwd) / 1.5× (fwd+bwd) of dense_equal_flops; ours_pad_neuron fwd+bwd ≤ 0.85× ours_moe.
   ``extra_rows``: PAD element mode at inference (finalised, merged weights cached) against ours_moe.
2. Correctness on the same device: ours against the eager reference loop (output and input/weight gradients, at
   up to 2,048 tokens), as the largest error relative to the reference's largest magnitude per tensor.
3. Whole model: PartialMoEBert training steps/s (AdamW, batch × 128 tokens, bf16 autocast on the GPU) against
   dense BERT, at MiniLM size and BERT-base size (random weights).

    python bench/moe_layer.py --device cuda --machine gpu    # E 4/8/16, top-1/2, 4k-64k tokens, bf16 and fp32
    python bench/moe_layer.py --device cpu --machine cpu     # one point: E 8, top-2, 2,048 tokens, fp32

Writes bench/results/moe_layer_<machine>.json (``{"device", "rows": [...], ...}``) and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _layers import (  # noqa: E402
    DTYPES,
    DenseFFN,
    machine_name,
    make_step,
    moe_layer,
    random_partition_,
    time_interleaved,
)
from _results import write_results  # noqa: E402
from hf_dynamic.pad.experts import EXPERTS_IMPLEMENTATION  # noqa: E402

LAYERS = ("dense", "dense_equal_flops", "transformers_grouped_mm", "ours_moe", "ours_pad_neuron")


def build_layers(hidden, ffn, experts, top_k, kappa):
    return {
        "dense": DenseFFN(hidden, ffn),
        "dense_equal_flops": DenseFFN(hidden, top_k * ffn),
        "transformers_grouped_mm": moe_layer(hidden, ffn, experts, top_k, 1.0, "element", "grouped_mm"),
        "ours_moe": moe_layer(hidden, ffn, experts, top_k, 1.0, "element", EXPERTS_IMPLEMENTATION),
        "ours_pad_neuron": moe_layer(hidden, ffn, experts, top_k, kappa, "neuron", EXPERTS_IMPLEMENTATION),
    }


def check_against_eager(layer, x, grad) -> float:
    """Largest relative error of ``layer`` (ours) against the eager loop: output, dx and every weight gradient."""
    results = []
    for implementation in (EXPERTS_IMPLEMENTATION, "eager"):
        layer.config._experts_implementation = implementation
        layer.zero_grad(set_to_none=True)
        x = x.detach().requires_grad_(True)
        out, _ = layer(x)
        out.backward(grad)
        results.append([out.detach(), x.grad] + [p.grad for p in layer.parameters() if p.grad is not None])
    layer.config._experts_implementation = EXPERTS_IMPLEMENTATION
    layer.zero_grad(set_to_none=True)
    # Each tensor's error over its largest reference magnitude, floored at 1e-3 of the largest over all tensors:
    # a gradient that is zero up to rounding (the router's under top-1, whose renormalised weight is 1) has no
    # meaningful relative error of its own.
    scales = [float(b.float().abs().max()) for b in results[1]]
    floor = 1e-3 * max(scales)
    return max(float((a.float() - b.float()).abs().max()) / max(scale, floor)
               for a, b, scale in zip(*results, scales))


def bench_layer_rows(args, device):
    rows, extra_rows = [], []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for experts in args.experts:
            for top_k in args.top_k:
                torch.manual_seed(0)
                layers = {n: m.to(device=device, dtype=dtype).train()
                          for n, m in build_layers(args.hidden, args.ffn, experts, top_k, args.dynamic_ratio).items()}
                element = moe_layer(args.hidden, args.ffn, experts, top_k, args.dynamic_ratio, "element")
                element = element.to(device=device, dtype=dtype).eval()
                n_check = min(2048, max(args.tokens))
                x_check = torch.randn(n_check, args.hidden, device=device, dtype=dtype)
                g_check = torch.randn_like(x_check)
                errors = {n: check_against_eager(layers[n], x_check, g_check) for n in ("ours_moe", "ours_pad_neuron")}
                for tokens in args.tokens:
                    x = torch.randn(tokens, args.hidden, device=device, dtype=dtype, requires_grad=True)
                    grad = torch.randn(tokens, args.hidden, device=device, dtype=dtype)
                    fwd_steps = {n: make_step(m, x, grad, False, args.inner) for n, m in layers.items()}
                    fwd_steps["ours_pad_element_inference"] = make_step(element, x, grad, False, args.inner)
                    fwd = time_interleaved(fwd_steps, args.repeats, args.inner)
                    fwdbwd = time_interleaved({n: make_step(m, x, grad, True, args.inner) for n, m in layers.items()},
                                              args.repeats, args.inner)
                    common = {"hidden": args.hidden, "ffn": args.ffn, "tokens": tokens, "experts": experts,
                              "top_k": top_k, "dtype": dtype_name}
                    for name in LAYERS:
                        row = {"layer": name, **common, "fwd_ms": fwd[name] * 1e3, "fwdbwd_ms": fwdbwd[name] * 1e3,
                               "fwd_vs_dense_equal_flops": fwd[name] / fwd["dense_equal_flops"],
                               "fwdbwd_vs_dense_equal_flops": fwdbwd[name] / fwdbwd["dense_equal_flops"],
                               "fwd_vs_ours_moe": fwd[name] / fwd["ours_moe"],
                               "fwdbwd_vs_ours_moe": fwdbwd[name] / fwdbwd["ours_moe"]}
                        if name in errors:
                            row["max_rel_err_vs_eager"] = errors[name]
                        rows.append(row)
                    extra_rows.append({"layer": "ours_pad_element_inference", **common,
                                       "fwd_ms": fwd["ours_pad_element_inference"] * 1e3,
                                       "fwd_vs_ours_moe": fwd["ours_pad_element_inference"] / fwd["ours_moe"]})
                    print(f"{dtype_name} E={experts} top-{top_k} {tokens} tokens: " + ", ".join(
                        f"{n} {fwd[n] * 1e3:.2f}/{fwdbwd[n] * 1e3:.2f} ms" for n in LAYERS), flush=True)
                    del x, grad
                del layers, element
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows, extra_rows


MODEL_SIZES = {"minilm": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12),
               "bert-base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12)}


def build_model(size, variant, experts, top_k, kappa):
    from transformers import BertConfig, BertForSequenceClassification

    from hf_dynamic.models.partial_moe_bert import PartialMoEBertConfig, PartialMoEBertForSequenceClassification
    from hf_dynamic.pad.imp import finalize_partition, pad_layers

    if variant == "dense":
        return BertForSequenceClassification(BertConfig(**MODEL_SIZES[size], num_labels=2))
    kappa = 1.0 if variant.startswith("moe") else kappa
    granularity = "neuron" if variant == "pad_neuron" else "element"
    config = PartialMoEBertConfig(**MODEL_SIZES[size], num_labels=2, num_experts=experts, num_experts_per_tok=top_k,
                                  dynamic_ratio=kappa, partition_granularity=granularity)
    model = PartialMoEBertForSequenceClassification(config)
    model.set_experts_implementation("grouped_mm" if variant == "moe_transformers_grouped_mm" else
                                     EXPERTS_IMPLEMENTATION)
    if kappa < 1:
        for layer in pad_layers(model):
            random_partition_(layer, kappa)
        model.config.pad_state = "partitioned"
        finalize_partition(model)
    return model


def bench_models(args, device):
    rows = []
    cuda = device.type == "cuda"
    for size in args.model_sizes:
        variants = ["dense", "moe", "moe_transformers_grouped_mm", "pad_neuron", "pad_element"]
        models, optimizers = {}, {}
        for variant in variants:
            torch.manual_seed(0)
            models[variant] = build_model(size, variant, 8, 2, args.dynamic_ratio).to(device).train()
            optimizers[variant] = torch.optim.AdamW(models[variant].parameters(), lr=1e-5)
        batch = {"input_ids": torch.randint(1000, 20000, (args.model_batch, 128), device=device),
                 "attention_mask": torch.ones(args.model_batch, 128, dtype=torch.long, device=device),
                 "labels": torch.randint(0, 2, (args.model_batch,), device=device)}

        def step_fn(variant):
            def step():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    loss = models[variant](**batch).loss
                loss.backward()
                optimizers[variant].step()
                optimizers[variant].zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.synchronize()
            return step

        start = time.perf_counter()
        seconds = time_interleaved({v: step_fn(v) for v in variants}, args.model_steps)
        for variant in variants:
            rows.append({"size": size, "variant": variant, "batch": args.model_batch, "seq_len": 128,
                         "experts": 8, "top_k": 2, "dynamic_ratio": 1.0 if variant.startswith("moe") else
                         (None if variant == "dense" else args.dynamic_ratio),
                         "autocast": "bf16" if cuda else "none", "steps_per_s": 1.0 / seconds[variant],
                         "vs_dense": seconds["dense"] / seconds[variant]})
            print(f"model {size} {variant}: {1.0 / seconds[variant]:.2f} steps/s "
                  f"({seconds['dense'] / seconds[variant]:.2f}× dense)", flush=True)
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
        models.clear()
        optimizers.clear()
        if cuda:
            torch.cuda.empty_cache()
    return rows


def markdown(result) -> str:
    lines = [f"# Expert-layer benchmark ({result['device']})", "", f"Command: `{result['command']}`", "",
             f"One FFN layer ({result['rows'][0]['hidden']} → {result['rows'][0]['ffn']}, biases, GELU); MoE rows include the router. Ratios against `dense_equal_flops` "
             "(targets: ours_moe ≤ 1.3 fwd, ≤ 1.5 fwd+bwd) and against `ours_moe` (target: ours_pad_neuron fwd+bwd "
             "≤ 0.85). Error: largest |ours − eager| over the largest |eager|, output and gradients.", "",
             "| dtype | E | k | tokens | layer | fwd ms | fwd+bwd ms | fwd / dense-eq | fwd+bwd / dense-eq | "
             "fwd+bwd / ours_moe | rel. err vs eager |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        err = f"{r['max_rel_err_vs_eager']:.1e}" if "max_rel_err_vs_eager" in r else ""
        lines.append(f"| {r['dtype']} | {r['experts']} | {r['top_k']} | {r['tokens']} | {r['layer']} | "
                     f"{r['fwd_ms']:.2f} | {r['fwdbwd_ms']:.2f} | {r['fwd_vs_dense_equal_flops']:.2f} | "
                     f"{r['fwdbwd_vs_dense_equal_flops']:.2f} | {r['fwdbwd_vs_ours_moe']:.2f} | {err} |")
    lines += ["", "PAD element mode at inference (finalised, merged weights cached):", "",
              "| dtype | E | k | tokens | fwd ms | fwd / ours_moe |", "|---|---|---|---|---|---|"]
    for r in result["extra_rows"]:
        lines.append(f"| {r['dtype']} | {r['experts']} | {r['top_k']} | {r['tokens']} | {r['fwd_ms']:.2f} | "
                     f"{r['fwd_vs_ours_moe']:.2f} |")
    if result.get("model_rows"):
        lines += ["", "Whole model, training steps (AdamW), E = 8, top-2:", "",
                  "| size | variant | batch × 128 | autocast | steps/s | vs dense |", "|---|---|---|---|---|---|"]
        for r in result["model_rows"]:
            lines.append(f"| {r['size']} | {r['variant']} | {r['batch']} | {r['autocast']} | {r['steps_per_s']:.2f} | "
                         f"{r['vs_dense']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=None,
                        help="default: bf16 fp32 on cuda, fp32 on cpu")
    parser.add_argument("--experts", nargs="+", type=int, default=None, help="default: 4 8 16 on cuda, 8 on cpu")
    parser.add_argument("--top_k", nargs="+", type=int, default=None, help="default: 1 2 on cuda, 2 on cpu")
    parser.add_argument("--tokens", nargs="+", type=int, default=None,
                        help="default: 4096 16384 65536 on cuda, 2048 on cpu")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--dynamic_ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=None, help="default: 10 on cuda, 3 on cpu")
    parser.add_argument("--inner", type=int, default=None, help="calls per timed sample (default: 5 cuda, 1 cpu)")
    parser.add_argument("--model_sizes", nargs="*", choices=list(MODEL_SIZES), default=None,
                        help="whole-model sizes (default: minilm bert-base on cuda, minilm on cpu: five BERT-base "
                             "MoE variants with AdamW state need more than 24 GB); none to skip")
    parser.add_argument("--model_batch", type=int, default=None, help="default: 32 on cuda, 8 on cpu")
    parser.add_argument("--model_steps", type=int, default=None, help="timed steps (default: 10 cuda, 2 cpu)")
    parser.add_argument("--machine", default=None, help="results file label (default: gpu / cpu)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.dtypes = args.dtypes or (["bf16", "fp32"] if cuda else ["fp32"])
    args.experts = args.experts or ([4, 8, 16] if cuda else [8])
    args.top_k = args.top_k or ([1, 2] if cuda else [2])
    args.tokens = args.tokens or ([4096, 16384, 65536] if cuda else [2048])
    args.repeats = args.repeats or (10 if cuda else 3)
    args.inner = args.inner or (5 if cuda else 1)
    args.model_batch = args.model_batch or (32 if cuda else 8)
    if args.model_sizes is None:
        args.model_sizes = list(MODEL_SIZES) if cuda else ["minilm"]
    args.model_steps = args.model_steps or (10 if cuda else 2)
    args.machine = args.machine or ("gpu" if cuda else "cpu")
    if any(k > e for k in args.top_k for e in args.experts):
        raise ValueError(f"every --top_k must be <= every --experts, got top_k={args.top_k}, experts={args.experts}")
    rows, extra_rows = bench_layer_rows(args, device)
    result = {"benchmark": "moe_layer", "device": machine_name(device), "torch": torch.__version__,
              "command": "python bench/moe_layer.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "rows": rows, "extra_rows": extra_rows,
              "model_rows": bench_models(args, device) if args.model_sizes else []}
    stem = write_results("moe_layer", args.machine, result, markdown(result))
    print(f"wrote {stem}.json and {stem}.md")
    return result


if __name__ == "__main__":
    main()
