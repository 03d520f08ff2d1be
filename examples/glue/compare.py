#!/usr/bin/env python
"""Run GLUE variants × tasks × seeds through run_glue.py and tabulate dev metrics (mean ± std) with parameter
counts, like PAD-Net's table (METHODS.md §1).

    # the issue's table (GPU): dense, MoE (κ = 1), PAD κ = 0.5 (element and neuron), 3 seeds, bf16
    python examples/glue/compare.py --tasks rte mrpc cola sst2 --runs dense moe pad_element pad_neuron \\
        --seeds 1 2 3 --device cuda --bf16 --output_dir outputs/compare
    # a small CPU slice
    python examples/glue/compare.py --tasks rte --runs dense pad_neuron --seeds 1 --device cpu \\
        --output_dir outputs/compare_cpu -- --max_train_samples 256 --num_train_epochs 1

Arguments after `--` go to every run_glue.py call (they override the per-task recipe below). Each run writes
`<output_dir>/<task>/<run>/s<seed>/eval_results.json`; finished runs are reused unless `--overwrite`. The
summary goes to `<output_dir>/compare.json` and `compare.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# run name -> (run_glue --variant, extra flags)
RUNS = {
    "dense": ("dense", []),
    "moe": ("moe", []),
    "pad_element": ("pad_moe", ["--pad_granularity", "element", "--pad_dynamic_ratio", "0.5"]),
    "pad_neuron": ("pad_moe", ["--pad_granularity", "neuron", "--pad_dynamic_ratio", "0.5"]),
}
# Per-task recipe (ASSETS.md's dense recipe for MiniLM: batch 32, max length 128, 6 % warm-up, linear schedule).
TASK_RECIPES = {
    "rte": ["--learning_rate", "5e-5", "--num_train_epochs", "10"],
    "mrpc": ["--learning_rate", "1e-4", "--num_train_epochs", "5"],
    "cola": ["--learning_rate", "5e-5", "--num_train_epochs", "5"],
    "sst2": ["--learning_rate", "5e-5", "--num_train_epochs", "3"],
}
MAIN_METRIC = {"cola": "matthews_correlation", "sst2": "accuracy", "mrpc": "f1", "qqp": "f1", "stsb": "pearson",
               "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "cola", "sst2"])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), help=f"any of {list(RUNS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--output_dir", default="outputs/compare")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the GPU recipe)")
    parser.add_argument("--overwrite", action="store_true", help="re-run finished runs")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    for run in args.runs:
        if run not in RUNS:
            raise ValueError(f"--runs: unknown run {run!r}; choose from {list(RUNS)}")
    for task in args.tasks:
        if task not in MAIN_METRIC:
            raise ValueError(f"--tasks: unknown GLUE task {task!r}; choose from {list(MAIN_METRIC)}")
    return args, passthrough


def run_dir(args, task, run, seed):
    return os.path.join(args.output_dir, task, run, f"s{seed}")


def command(args, task, run, seed, passthrough):
    variant, flags = RUNS[run]
    cmd = [sys.executable, os.path.join(HERE, "run_glue.py"), "--task", task, "--variant", variant, *flags,
           "--seed", str(seed), "--output_dir", run_dir(args, task, run, seed), *TASK_RECIPES.get(task, [])]
    if args.device == "cpu":
        cmd.append("--use_cpu")
    if args.bf16:
        cmd.append("--bf16")
    return cmd + passthrough


def summarise(results: list[dict], runs, tasks) -> dict:
    """Per run and task: mean ± std (× 100) of the task's main metric on its first validation split."""
    table = {}
    for run in runs:
        row = {}
        for task in tasks:
            values = [r["main_metric"] for r in results if r["run"] == run and r["task"] == task]
            if values:
                row[task] = {"mean": 100 * statistics.mean(values),
                             "std": 100 * statistics.stdev(values) if len(values) > 1 else 0.0,
                             "n": len(values), "values": values}
        means = [row[t]["mean"] for t in tasks if t in row]
        params = [r["num_parameters"] for r in results if r["run"] == run]
        table[run] = {"tasks": row, "average": statistics.mean(means) if len(means) == len(tasks) else None,
                      "num_parameters": params[0] if params else None,
                      "num_parameters_moe_ffn": next((r.get("num_parameters_moe_ffn") for r in results
                                                      if r["run"] == run), None)}
    return table


def markdown(table: dict, tasks, args) -> str:
    head = ["run", "params (M)", *[f"{t} ({MAIN_METRIC[t]})" for t in tasks], "avg"]
    lines = [f"GLUE dev, seeds {args.seeds}, device {args.device}{' bf16' if args.bf16 else ''}; mean ± std × 100.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, row in table.items():
        cells = [run, f"{row['num_parameters'] / 1e6:.2f}" if row["num_parameters"] else "–"]
        for task in tasks:
            cell = row["tasks"].get(task)
            cells.append(f"{cell['mean']:.1f} ± {cell['std']:.1f} (n={cell['n']})" if cell else "–")
        cells.append(f"{row['average']:.1f}" if row["average"] is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args, passthrough = parse_args(argv)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results = []
    for task in args.tasks:
        for run in args.runs:
            for seed in args.seeds:
                path = os.path.join(run_dir(args, task, run, seed), "eval_results.json")
                cmd = command(args, task, run, seed, passthrough)
                if args.dry_run:
                    print(" ".join(cmd))
                    continue
                if args.overwrite or not os.path.exists(path):
                    start = time.time()
                    print(f"[compare] {task} {run} seed {seed}: {' '.join(cmd)}", flush=True)
                    subprocess.run(cmd, env=env, check=True)
                    print(f"[compare] done in {time.time() - start:.0f} s", flush=True)
                with open(path) as f:
                    result = json.load(f)
                split = next(iter(result["metrics"]))
                results.append({"task": task, "run": run, "seed": seed, "split": split,
                                "main_metric": result["metrics"][split][MAIN_METRIC[task]],
                                "command": cmd[1:], **{k: v for k, v in result.items() if k != "metrics"},
                                "metrics": result["metrics"]})
    if args.dry_run:
        return None
    table = summarise(results, args.runs, args.tasks)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "compare.json"), "w") as f:
        json.dump({"args": vars(args), "passthrough": passthrough, "summary": table, "runs": results}, f, indent=2)
    text = markdown(table, args.tasks, args)
    with open(os.path.join(args.output_dir, "compare.md"), "w") as f:
        f.write(text)
    print(text)
    return table


if __name__ == "__main__":
    main()
