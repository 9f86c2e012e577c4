# graphattn: two commands on a fresh machine.
#   make demo   runs the registered examples at demo size (builds everything first)
#   make test   runs the test suite (builds everything first)
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)

.PHONY: setup demo test test-slow bench gpu-check lint clean

setup: $(STAMP)

$(STAMP): $(SOURCES)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
	  || $(BIN)/pip install torch==2.13.0
	$(BIN)/pip install "setuptools>=69" wheel ninja
	$(BIN)/pip install --no-build-isolation -e ".[all,dev]"
	@touch $(STAMP)

demo: setup
	$(BIN)/graphattn demo

test: setup
	$(BIN)/python -m pytest -m "not slow" -q -p no:cacheprovider --timeout=900

test-slow: setup
	$(BIN)/python -m pytest -m slow -q -p no:cacheprovider

bench: setup
	$(BIN)/graphattn bench attention
	$(BIN)/graphattn bench tokens
	$(BIN)/graphattn bench geometry
	$(BIN)/graphattn bench machine

# On a machine with a GPU and a CUDA build of torch (its own python, no .venv): build the CUDA
# kernels in place, test them and time them against PyG (the GPU section of BENCHMARKS.md).
gpu-check:
	$(PY) setup.py build_ext --inplace
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -q -p no:cacheprovider tests/ops/test_cuda.py
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/attention_cuda.py

lint: setup
	$(BIN)/ruff check graphattn tests benchmarks examples setup.py

clean:
	rm -rf build *.egg-info graphattn/_C*.so $(STAMP)
