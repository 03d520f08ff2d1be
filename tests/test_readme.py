"""Every ```python block of README.md runs as written, each in a fresh interpreter, with the data folders a user
would set (HF_DYNAMIC_GLUE_DIR / HF_DYNAMIC_TEXT_DIR). The block that loads the main job's model runs in a folder
where a tiny run of the main job's command (2 steps) has written `outputs/glue/mrpc-pad_moe-s42`."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(REPO, "..", "shared"))
MAIN_JOB_OUTPUT = "outputs/glue/mrpc-pad_moe-s42"


def python_blocks() -> list[str]:
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(HF_DYNAMIC_GLUE_DIR=os.path.join(SHARED, "data", "glue"),
               HF_DYNAMIC_TEXT_DIR=os.path.join(SHARED, "data", "text"),
               PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", PYTHONWARNINGS="error::FutureWarning")
    return env


def _run(code_or_args, cwd) -> subprocess.CompletedProcess:
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"failed: {code_or_args}\n--- stderr ---\n{result.stderr[-4000:]}"
    return result


def test_readme_has_the_blocks_it_promises():
    blocks = python_blocks()
    assert len(blocks) >= 4
    assert any(MAIN_JOB_OUTPUT in block for block in blocks)
    assert any("DMSPruner" in block for block in blocks)
    assert any("iterative_mode_partition" in block for block in blocks)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_block_runs(index, tmp_path):
    block = python_blocks()[index]
    if MAIN_JOB_OUTPUT in block:
        # what `make main` leaves behind, from the same command with 2 training steps
        _run([os.path.join(REPO, "examples", "glue", "run_glue.py"), "--task", "mrpc", "--variant", "pad_moe",
              "--pad_granularity", "neuron", "--max_train_samples", "32", "--max_eval_samples", "16", "--max_steps",
              "2", "--per_device_train_batch_size", "8", "--imp_num_batches", "1", "--disable_tqdm", "true",
              "--use_cpu"], tmp_path)
        assert os.path.isfile(tmp_path / MAIN_JOB_OUTPUT / "model.safetensors")
        result = _run(block, tmp_path)
        # the task's label names, not LABEL_0 / LABEL_1
        assert re.search(r"'label': '(not_)?equivalent'", result.stdout), result.stdout
    else:
        _run(block, tmp_path)
