"""Where every benchmark writes its results: bench/results/<name>_<machine>.json and .md."""

import json
import os

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
