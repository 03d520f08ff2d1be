"""The runnable example of docs/slim.md runs as written (in a fresh interpreter)."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_docs_example_runs():
    with open(os.path.join(REPO, "docs", "slim.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    example = [b for b in blocks if "export_width" in b and "import torch" in b]
    assert len(example) == 1
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", example[0]], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["LlamaForCausalLM", "DMSLlamaForCausalLM"]
