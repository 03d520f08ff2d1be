"""Where every benchmark writes its results: bench/results/<name>_<machine>.json and .md."""

import json
import os
import platform

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write_results(name, machine, result, markdown):
    """Write ``result`` (JSON-serialisable) and its ``markdown`` table; return the common path stem."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stem = os.path.join(RESULTS_DIR, f"{name}_{machine}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(markdown)
    return stem


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux; ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
