#!/usr/bin/env python
"""Training and inference speed of the GLUE table's models on real MRPC batches: dense all-MiniLM-L6-v2, the
upcycled MoE (κ = 1, E = 8, top-2) and PAD-MoE κ = 0.5 in neuron and element mode (IMP on one MRPC batch, then
finalised: the layout that trains and ships).

- training: AdamW steps per second on batches of 32 MRPC train pairs (dynamic padding, max length 128);
- inference: samples per second of a no-grad forward over MRPC dev at batch 64 (eval mode).

The models run round-robin (each timed repeat runs every model once, after warm-ups), so machine-load changes hit
them alike and the ratios to dense stay meaningful on a shared machine. Writes bench/results/glue_speed_<machine>.json
and .md.

    python bench/glue_speed.py --machine cpu              # CPU: 3 repeats of 4 training steps, dev at batch 64
    python bench/glue_speed.py --device cuda --machine gpu
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _layers import machine_name  # noqa: E402
from _results import write_results  # noqa: E402

MODELS = {
    "dense": {},
    "moe": {"dynamic_ratio": 1.0},
    "pad_neuron": {"dynamic_ratio": 0.5, "partition_granularity": "neuron"},
    "pad_element": {"dynamic_ratio": 0.5, "partition_granularity": "element"},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--train_steps", type=int, default=4, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval_samples", type=int, default=None, help="dev rows timed (default: all 408)")
    parser.add_argument("--data_dir", default=None, help="GLUE folder (default: $HF_DYNAMIC_GLUE_DIR, ...)")
    parser.add_argument("--machine", default=None, help="results file label (default: cpu / gpu)")
    return parser.parse_args(argv)


def mrpc_batches(tokenizer, data_dir, batch_size, split, rows=None):
    from hf_dynamic.data.glue import load_glue

    data = load_glue("mrpc", data_dir=data_dir)[split]
    if rows is not None:
        data = data.select(range(min(rows, len(data))))
    batches = []
    for start in range(0, len(data), batch_size):
        chunk = data[start:start + batch_size]
        encoded = tokenizer(chunk["sentence1"], chunk["sentence2"], truncation=True, max_length=128,
                            padding=True, return_tensors="pt")
        encoded["labels"] = torch.tensor(chunk["label"])
        batches.append(dict(encoded))
    return batches


def build(name, path, imp_batch):
    from transformers import AutoModelForSequenceClassification

    from hf_dynamic import PartialMoEBertForSequenceClassification, iterative_mode_partition

    if name == "dense":
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, dtype=torch.float32)
    model = PartialMoEBertForSequenceClassification.from_dense(path, num_labels=2, num_experts=8,
                                                               num_experts_per_tok=2, **MODELS[name])
    if MODELS[name]["dynamic_ratio"] < 1:
        iterative_mode_partition(model, [imp_batch], num_batches=1)
    return model


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    from transformers import AutoTokenizer

    from hf_dynamic import minilm_path

    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    train = mrpc_batches(tokenizer, args.data_dir, 32, "train", rows=32 * args.train_steps)
    dev = mrpc_batches(tokenizer, args.data_dir, 64, "validation", rows=args.eval_samples)
    n_dev = sum(len(b["labels"]) for b in dev)
    to = lambda batch: {k: v.to(device) for k, v in batch.items()}  # noqa: E731

    models, optimizers = {}, {}
    for name in args.models:
        torch.manual_seed(0)
        models[name] = build(name, path, train[0]).to(device)
        optimizers[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-5)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_run(name):
        model, optimizer = models[name], optimizers[name]
        model.train()
        for batch in train:
            loss = model(**to(batch)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()

    def eval_run(name):
        model = models[name]
        model.eval()
        with torch.no_grad():
            for batch in dev:
                model(**{k: v for k, v in to(batch).items() if k != "labels"})
        sync()

    times = {(kind, name): [] for kind in ("train", "eval") for name in models}
    for name in models:  # warm-up
        train_run(name)
        eval_run(name)
    for _ in range(args.repeats):
        for name in models:
            for kind, fn in (("train", train_run), ("eval", eval_run)):
                start = time.perf_counter()
                fn(name)
                times[(kind, name)].append(time.perf_counter() - start)

    rows = []
    for name, model in models.items():
        train_s = statistics.median(times[("train", name)])
        eval_s = statistics.median(times[("eval", name)])
        rows.append({"model": name, "num_parameters": model.num_parameters(),
                     "train_steps_per_s": len(train) / train_s, "eval_samples_per_s": n_dev / eval_s,
                     "train_times_s": times[("train", name)], "eval_times_s": times[("eval", name)]})
    base = next((r for r in rows if r["model"] == "dense"), rows[0])
    for row in rows:
        row["train_speed_vs_dense"] = row["train_steps_per_s"] / base["train_steps_per_s"]
        row["eval_speed_vs_dense"] = row["eval_samples_per_s"] / base["eval_samples_per_s"]

    machine = args.machine or ("gpu" if device.type == "cuda" else "cpu")
    command = "python bench/glue_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"device": machine_name(device), "command": command, "train_batches": len(train),
              "train_batch_size": 32, "eval_samples": n_dev, "eval_batch_size": 64, "repeats": args.repeats,
              "rows": rows}
    lines = [f"# GLUE models' speed on MRPC ({machine_name(device)})", "",
             f"Training: AdamW steps/s, batch 32 (dynamic padding, max length 128), {len(train)} steps per repeat; "
             f"inference: samples/s over {n_dev} dev rows at batch 64; median of {args.repeats} round-robin "
             f"repeats. Command: `{command}`.", "",
             "| model | params (M) | train steps/s | vs dense | inference samples/s | vs dense |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['num_parameters'] / 1e6:.1f} | {row['train_steps_per_s']:.3f} | "
                     f"{row['train_speed_vs_dense']:.2f}× | {row['eval_samples_per_s']:.1f} | "
                     f"{row['eval_speed_vs_dense']:.2f}× |")
    stem = write_results("glue_speed", machine, result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {stem}.json/.md")
    return result


if __name__ == "__main__":
    main()
