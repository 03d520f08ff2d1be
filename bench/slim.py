#!/usr/bin/env python
"""Latency of a slimmable MiniLM at each width (docs/slim.md), beside its FLOPs, on real MRPC dev batches.

One all-MiniLM-L6-v2 classifier made slimmable (``slim.make_slimmable``: magnitude order; the weights do not change
the speed) runs the MRPC dev rows at widths 1.0 / 0.75 / 0.5 / 0.25 (and any ``--widths``), in eval mode without
gradients:

- batch 1: the first ``--rows_b1`` dev rows one at a time (no padding), mean milliseconds per row;
- batch 32: every dev row (408) in batches of 32 (padded to the batch's longest row), milliseconds per batch.

The widths run round-robin (each timed repeat runs every width once, after a warm-up), so machine-load changes hit
them alike; the figure is the median of ``--repeats``. Each row gives the speed-up over width 1.0 measured in the same
run with the same threads, the FLOP reduction (``hf_dynamic.slim.width_flops`` at the rows' mean
length) and their ratio (target: ≥ 0.8). Writes bench/results/slim_<machine>.json and .md.

    python bench/slim.py --machine cpu
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
from glue_speed import mrpc_batches  # noqa: E402  (MRPC pairs, padded per batch, max length 128)

WIDTHS = (1.0, 0.75, 0.5, 0.25)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", type=float, default=list(WIDTHS))
    parser.add_argument("--rows_b1", type=int, default=64, help="dev rows timed one at a time")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data_dir", default=None, help="GLUE folder (default: $HF_DYNAMIC_GLUE_DIR, ...)")
    parser.add_argument("--machine", default="cpu", help="results file label")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_dynamic import minilm_path, slim

    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = slim.make_slimmable(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2,
                                                                                    dtype=torch.float32)).eval()
    batches = {b: [{k: v for k, v in batch.items() if k != "labels"}
                   for batch in mrpc_batches(tokenizer, args.data_dir, b, "validation", rows=rows)]
               for b, rows in ((1, args.rows_b1), (32, None))}
    mean_len = round(statistics.mean(int(b["attention_mask"].sum()) for b in batches[1]))

    def run(batch_size, w):
        with torch.inference_mode(), slim.width(model, w):
            for batch in batches[batch_size]:
                model(**batch)

    times = {(b, w): [] for b in batches for w in args.widths}
    for b in batches:
        for w in args.widths:  # warm-up
            run(b, w)
    for _ in range(args.repeats):
        for b in batches:
            for w in args.widths:
                start = time.perf_counter()
                run(b, w)
                times[(b, w)].append(time.perf_counter() - start)

    full_flops = slim.width_flops(model, slim.resolve_widths(model, 1.0), seq_len=mean_len)
    rows = []
    for b in batches:
        per = len(batches[b][0]["input_ids"]) if b == 1 else 1  # b1: per row; b32: per batch of 32
        divisor = len(batches[b]) * per
        base = statistics.median(times[(b, 1.0)]) / divisor if 1.0 in args.widths else None
        for w in args.widths:
            counts = slim.resolve_widths(model, w)
            flops = slim.width_flops(model, counts, seq_len=mean_len)
            seconds = statistics.median(times[(b, w)]) / divisor
            row = {"batch_size": b, "width": w, "ms": 1000 * seconds, "times_s": times[(b, w)],
                   "flop_fraction": flops / full_flops, "units": [list(c) for c in counts]}
            if base is not None:
                row["speedup"] = base / seconds
                row["flop_reduction"] = full_flops / flops
                row["speedup_over_flop_reduction"] = row["speedup"] / row["flop_reduction"]
            rows.append(row)

    device = torch.device("cpu")
    command = "python bench/slim.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"device": machine_name(device), "command": command, "rows_b1": len(batches[1]),
              "rows_b32": sum(len(x["input_ids"]) for x in batches[32]), "mean_length_b1": mean_len,
              "repeats": args.repeats, "rows": rows}
    lines = [f"# Slimmable MiniLM: latency at each width ({machine_name(device)})", "",
             f"MRPC dev rows, eval mode, no gradients: batch 1 over the first {len(batches[1])} rows (ms per row), "
             f"batch 32 over all {result['rows_b32']} rows (ms per batch); median of {args.repeats} round-robin "
             f"repeats; FLOPs analytic at the batch-1 rows' mean length ({mean_len} tokens). Speed-up against "
             f"width 1.0 in the same run. Command: `{command}`.", "",
             "| batch | width | ms | speed-up | FLOP reduction | speed-up ÷ FLOP reduction |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['batch_size']} | {row['width']:g} | {row['ms']:.2f} | {row.get('speedup', 0):.2f}× | "
                     f"{row.get('flop_reduction', 0):.2f}× | {row.get('speedup_over_flop_reduction', 0):.2f} |")
    stem = write_results("slim", args.machine, result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {stem}.json/.md")
    return result


if __name__ == "__main__":
    main()
