#!/usr/bin/env python
"""Cost of `import hf_dynamic` beyond what it must subclass (transformers' BERT and Llama modeling modules and
`TrainerCallback`). Target: at most 1 s. Each measurement runs in a fresh interpreter.

    python bench/import_time.py [--repeats 5]

Writes bench/results/import_time_<machine>.json and .md.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import write_results  # noqa: E402

PREREQUISITES = (
    "import transformers.models.bert.modeling_bert, transformers.models.llama.modeling_llama; "
    "from transformers import TrainerCallback"
)
PROBE = (
    "import time; {pre}; t = time.perf_counter(); import hf_dynamic; "
    "print(time.perf_counter() - t)"
)


def measure(repeats):
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", PROBE.format(pre=PREREQUISITES)], capture_output=True,
                             text=True, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--machine", default="cpu", help="label for the results file (cpu / gpu)")
    args = parser.parse_args()
    times = measure(args.repeats)
    result = {
        "benchmark": "import_time",
        "machine": f"{args.machine}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "seconds": times,
        "median_s": statistics.median(times),
        "target_s": 1.0,
    }
    markdown = (
        "| what | median s | runs | target |\n|---|---|---|---|\n"
        f"| `import hf_dynamic` after its prerequisites | {result['median_s']:.3f} | {len(times)} | ≤ 1 s |\n"
        f"\nMachine: {result['machine']}. Command: `python bench/import_time.py --repeats {args.repeats}`.\n"
    )
    write_results("import_time", args.machine, result, markdown)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
