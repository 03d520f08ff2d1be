"""The runnable example of docs/slim.md runs as written (executed in-process: the imports are already loaded)."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_docs_example_runs(capsys):
    with open(os.path.join(REPO, "docs", "slim.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    example = [b for b in blocks if "export_width" in b and "import torch" in b]
    assert len(example) == 1
    exec(compile(example[0], "docs/slim.md", "exec"), {"__name__": "__docs_example__"})
    assert capsys.readouterr().out.split()[:2] == ["LlamaForCausalLM", "DMSLlamaForCausalLM"]
