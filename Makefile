# The two commands of the README: `make demo` and `make test`. Both set everything up
# themselves on a fresh machine: a venv in .venv, torch pinned first (an unpinned torch
# pulls GBs of CUDA), then shrinkc with its test extras.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.shrinkc-installed
PYTEST_ARGS ?=
# The repository root is the package (package-dir shrinkc = "."), so it has an __init__.py.
# With the root as pytest's rootdir, pytest imports that __init__.py as a package named
# after the checkout's directory, which fails when that name is not an identifier
# (mktemp's tmp.XXXX). Rooting pytest at tests/ keeps the package out of collection.
PYTEST := $(PY) -m pytest --rootdir=tests

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
	$(PYTEST) -q -n 2 --dist loadfile $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PYTEST) -q -m slow $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/shrinkc-demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache tests/.pytest_cache
