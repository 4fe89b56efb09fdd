# The two commands of the README: `make demo` and `make test`. Both set everything up
# themselves on a fresh machine: a venv in .venv, torch pinned first (an unpinned torch
# pulls GBs of CUDA), then shrinkc with its test extras.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.shrinkc-installed
PYTEST_ARGS ?=

.PHONY: all test test-slow demo venv clean

all: test

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/shrinkc-demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
