#!/usr/bin/env python
"""PAD-Net MoE FFN layer speed, IMP cost and checkpoint sizes.

1. One FFN layer, forward (no grad) and forward+backward, as ratios within one run: dense FFN, a dense FFN with the
   MoE's active FLOPs (width top_k·d_ff), the full MoE (κ = 1, E experts, top-k), PAD neuron mode κ = 0.5 (a shared
   (1−κ)·d_ff FFN + routed κ·d_ff experts) and PAD element mode κ = 0.5 (finalised, merged weights), at BERT-base
   (768/3072) and MiniLM (384/1536) sizes. MoE layers include their router. Target (GPU): PAD neuron ≥ 1.25× faster
   than the full MoE.
2. IMP wall time (upcycled all-MiniLM-L6-v2, RTE train batches of 32 at max length 128, the default IMP recipe) as a
   fraction of one RTE training epoch (estimated from timed AdamW steps of the same model on the same batches).
   Target < 2 %.
3. Checkpoint sizes (safetensors) of the MiniLM classifier: dense, MoE κ = 1, PAD κ = 0.5 element / neuron.

    python bench/pad_ffn.py --device cpu --dtype fp32 --machine cpu            # CPU: fewer tokens by default
    python bench/pad_ffn.py --device cuda --dtype bf16 --machine gpu           # GPU: 16,384 tokens

Writes bench/results/pad_ffn_<machine>.json and .md.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _results import write_results  # noqa: E402
from hf_dynamic.pad.experts import EXPERTS_IMPLEMENTATION  # noqa: E402
from _layers import DTYPES, DenseFFN, machine_name, make_step, moe_layer, time_interleaved  # noqa: E402

SIZES = {"bert-base": (768, 3072), "minilm": (384, 1536)}


def bench_layers(args, device, dtype):
    rows = []
    for size in args.sizes:
        hidden, ffn = SIZES[size]
        torch.manual_seed(0)
        layers = {
            "dense": DenseFFN(hidden, ffn),
            "dense_equal_flops": DenseFFN(hidden, args.top_k * ffn),
            "moe": moe_layer(hidden, ffn, args.experts, args.top_k, 1.0, "element", args.experts_implementation),
            "pad_neuron": moe_layer(hidden, ffn, args.experts, args.top_k, args.dynamic_ratio, "neuron",
                                    args.experts_implementation),
            "pad_element": moe_layer(hidden, ffn, args.experts, args.top_k, args.dynamic_ratio, "element",
                                     args.experts_implementation),
        }
        layers = {name: layer.to(device=device, dtype=dtype).train() for name, layer in layers.items()}
        x = torch.randn(args.tokens, hidden, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn(args.tokens, hidden, device=device, dtype=dtype)
        fwd = time_interleaved({n: make_step(l, x, grad, False) for n, l in layers.items()}, args.repeats)
        fwdbwd = time_interleaved({n: make_step(l, x, grad, True) for n, l in layers.items()}, args.repeats)
        for name in layers:
            print(f"{size} {name}: fwd {fwd[name] * 1e3:.2f} ms, fwd+bwd {fwdbwd[name] * 1e3:.2f} ms", flush=True)
            rows.append({
                "layer": name, "size": size, "hidden": hidden, "ffn": ffn, "tokens": args.tokens,
                "experts": args.experts, "top_k": args.top_k, "dynamic_ratio": args.dynamic_ratio,
                "dtype": args.dtype, "experts_implementation": args.experts_implementation,
                "fwd_ms": fwd[name] * 1e3, "fwdbwd_ms": fwdbwd[name] * 1e3,
                "fwd_vs_dense": fwd[name] / fwd["dense"], "fwdbwd_vs_dense": fwdbwd[name] / fwdbwd["dense"],
                "fwd_vs_moe": fwd[name] / fwd["moe"], "fwdbwd_vs_moe": fwdbwd[name] / fwdbwd["moe"],
            })
        del layers
    return rows


def rte_batches(num, batch_size, max_length):
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from hf_dynamic.assets import minilm_path
    from hf_dynamic.data.glue import load_glue

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train = load_glue("rte")["train"].shuffle(seed=0)
    collate = DataCollatorWithPadding(tokenizer)
    batches = []
    for b in range(num):
        rows = train.select(range(b * batch_size, (b + 1) * batch_size))
        enc = tokenizer(list(rows["sentence1"]), list(rows["sentence2"]), truncation=True, max_length=max_length)
        labels = list(rows["label"])
        features = [{**{k: enc[k][i] for k in enc}, "labels": labels[i]} for i in range(batch_size)]
        batches.append(collate(features))
    return batches, len(train)


def bench_imp_and_sizes(args, device, dtype):
    from hf_dynamic.assets import minilm_path
    from hf_dynamic.models.partial_moe_bert import PartialMoEBertForSequenceClassification
    from hf_dynamic.pad.imp import iterative_mode_partition
    from transformers import BertForSequenceClassification

    out = {}
    need = max(args.imp_num_batches, args.train_steps + 1)
    batches, train_rows = rte_batches(need, 32, 128)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    steps_per_epoch = math.ceil(train_rows / 32)
    path = str(minilm_path())

    def upcycle(kappa, granularity):
        torch.manual_seed(0)
        model = PartialMoEBertForSequenceClassification.from_dense(
            path, num_labels=2, num_experts=args.experts, num_experts_per_tok=args.top_k, dynamic_ratio=kappa,
            partition_granularity=granularity)
        model.config._experts_implementation = args.experts_implementation
        return model.to(device)

    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    for granularity in args.imp_granularities:
        model = upcycle(args.dynamic_ratio, granularity)
        with autocast:
            start = time.perf_counter()
            summary = iterative_mode_partition(model, batches, iterations=args.imp_iterations,
                                               num_batches=args.imp_num_batches, finalize=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            imp_s = time.perf_counter() - start
        # one training epoch, estimated from timed AdamW steps of the (finalised) model on the same batches
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        step_times = []
        for i in range(args.train_steps + 1):
            start = time.perf_counter()
            with autocast:
                loss = model(**batches[i % len(batches)]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i > 0:  # the first step warms up (allocations, AdamW state)
                step_times.append(time.perf_counter() - start)
        epoch_s = statistics.median(step_times) * steps_per_epoch
        out[f"imp_{granularity}"] = {
            "imp_s": imp_s, "train_step_s": statistics.median(step_times), "steps_per_epoch": steps_per_epoch,
            "epoch_s_estimated": epoch_s, "imp_fraction_of_epoch": imp_s / epoch_s,
            "imp_fraction_of_10_epochs": imp_s / (10 * epoch_s), "iterations": args.imp_iterations,
            "batches_per_iteration": args.imp_num_batches, "batch_size": 32, "score": summary["score"],
        }
        print(f"IMP {granularity}: {imp_s:.2f} s = {100 * imp_s / epoch_s:.1f} % of an RTE epoch "
              f"({epoch_s:.1f} s estimated)", flush=True)
        out[f"model_{granularity}"] = model
    # checkpoint sizes
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        candidates = {
            "dense": lambda: BertForSequenceClassification.from_pretrained(path, num_labels=2, dtype=torch.float32),
            "moe": lambda: upcycle(1.0, "element"),
            **{f"pad_{g}": (lambda g=g: out[f"model_{g}"]) for g in args.imp_granularities},
        }
        for name, make in candidates.items():
            model = make().to("cpu").float()
            folder = os.path.join(tmp, name)
            model.save_pretrained(folder)
            sizes[name] = {"bytes": os.path.getsize(os.path.join(folder, "model.safetensors")),
                           "num_parameters": model.num_parameters()}
            del model
    for g in args.imp_granularities:
        out.pop(f"model_{g}")
    for name, entry in sizes.items():
        entry["vs_moe"] = entry["bytes"] / sizes["moe"]["bytes"]
    out["checkpoint_sizes"] = sizes
    return out


def markdown(result) -> str:
    lines = [f"# PAD-Net FFN benchmark ({result['machine']})", "",
             f"Command: `{result['command']}`", "",
             "| size | layer | tokens | dtype | fwd ms | fwd+bwd ms | fwd vs dense | fwd+bwd vs dense | fwd vs MoE | "
             "fwd+bwd vs MoE |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["layers"]:
        lines.append(f"| {r['size']} ({r['hidden']}/{r['ffn']}) | {r['layer']} | {r['tokens']} | {r['dtype']} | "
                     f"{r['fwd_ms']:.2f} | {r['fwdbwd_ms']:.2f} | {r['fwd_vs_dense']:.2f} | "
                     f"{r['fwdbwd_vs_dense']:.2f} | {r['fwd_vs_moe']:.2f} | {r['fwdbwd_vs_moe']:.2f} |")
    lines.append("")
    lines.append(f"E = {result['layers'][0]['experts']}, top-{result['layers'][0]['top_k']}, "
                 f"κ = {result['layers'][0]['dynamic_ratio']}, experts implementation "
                 f"`{result['layers'][0]['experts_implementation']}`; MoE layers include the router.")
    extra = result.get("imp_and_sizes")
    if extra:
        lines += ["", "| IMP (upcycled MiniLM, RTE) | IMP s | train step s | epoch s (est.) | % of one epoch | "
                  "% of 10 epochs |", "|---|---|---|---|---|---|"]
        for key, v in extra.items():
            if key.startswith("imp_"):
                lines.append(f"| {key[4:]} ({v['iterations']}×{v['batches_per_iteration']} batches of 32, "
                             f"{v['score']}) | {v['imp_s']:.2f} | {v['train_step_s']:.3f} | "
                             f"{v['epoch_s_estimated']:.1f} | {100 * v['imp_fraction_of_epoch']:.1f} | "
                             f"{100 * v['imp_fraction_of_10_epochs']:.2f} |")
        lines += ["", "| checkpoint (MiniLM classifier) | MB | parameters | size vs MoE |", "|---|---|---|---|"]
        for name, v in extra["checkpoint_sizes"].items():
            lines.append(f"| {name} | {v['bytes'] / 1e6:.1f} | {v['num_parameters']:,} | {v['vs_moe']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--tokens", type=int, default=None, help="default: 16384 on cuda, 2048 on cpu")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top_k", type=int, default=2)
    parser.add_argument("--dynamic_ratio", type=float, default=0.5)
    parser.add_argument("--experts_implementation", default=None,
                        help="default: PartialMoEBert's (hf_dynamic_grouped_mm)")
    parser.add_argument("--repeats", type=int, default=None, help="default: 20 on cuda, 3 on cpu")
    parser.add_argument("--imp_iterations", type=int, default=2)
    parser.add_argument("--imp_num_batches", type=int, default=8)
    parser.add_argument("--imp_granularities", nargs="+", default=["element", "neuron"])
    parser.add_argument("--train_steps", type=int, default=None, help="timed AdamW steps (default 20 cuda, 3 cpu)")
    parser.add_argument("--skip_imp", action="store_true", help="layer timings only")
    parser.add_argument("--machine", default=None, help="results file label (default: cpu / gpu)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.tokens = args.tokens or (16384 if cuda else 2048)
    args.repeats = args.repeats or (20 if cuda else 3)
    args.train_steps = args.train_steps or (20 if cuda else 3)
    args.machine = args.machine or ("gpu" if cuda else "cpu")
    args.experts_implementation = args.experts_implementation or EXPERTS_IMPLEMENTATION
    dtype = DTYPES[args.dtype]
    machine = machine_name(device)
    result = {"benchmark": "pad_ffn", "machine": machine, "torch": torch.__version__,
              "command": "python bench/pad_ffn.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "layers": bench_layers(args, device, dtype)}
    if not args.skip_imp:
        result["imp_and_sizes"] = bench_imp_and_sizes(args, device, dtype)
    write_results("pad_ffn", args.machine, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
