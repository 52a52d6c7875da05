# From nothing to a demo or the full test suite: each target creates .venv, installs torch and the
# dependencies that pyproject.toml's extras list (test, train), and builds the extension (CUDA kernels too
# when nvcc and a CUDA torch are here). Every command is `python -m gpkernels COMMAND`; these targets run them.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.14.1
VENV := .venv
VPY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
# CI must compile the .cu sources wherever nvcc is present (a GPU is not needed to compile them).
EXPECT_CUDA_BUILD := $(if $(GPKERNELS_NO_CUDA),0,$(if $(shell command -v nvcc),1,0))
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h)
EXT_STAMP := gpkernels/.built
# The extras' requirements, read from pyproject.toml (one list of what is used, there).
EXTRAS = $(shell $(VPY) -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print(' '.join(sorted(set(r for k in ('test', 'train') for r in d['optional-dependencies'][k]))))")

.PHONY: all build demo test test-quick lint bench info clean

all: build

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(DEPS): $(VPY) Makefile pyproject.toml
	$(VPY) -m pip install --quiet "$(TORCH_SPEC)" ninja setuptools wheel
	$(VPY) -m pip install --quiet $(EXTRAS)
	touch $@

$(EXT_STAMP): $(DEPS) $(SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(VPY) setup.py build_ext --inplace
	touch $@

build: $(EXT_STAMP)

info: build
	$(VPY) -m gpkernels info

demo: build
	$(VPY) -m gpkernels demo
	$(VPY) -m gpkernels train --dataset 8gaussians --regularizer gp --steps 300 --width 128 --out runs/demo --overwrite

# The whole suite (slow tests included), as CI runs it.
test: build
	GPKERNELS_EXPECT_CUDA_BUILD=$(EXPECT_CUDA_BUILD) $(VPY) -m pytest -q tests

# Everything but the tests marked slow (a few minutes less), for the edit-test loop.
test-quick: build
	$(VPY) -m pytest -q -m "not slow" tests

lint: $(DEPS)
	$(VPY) -m ruff check .

bench: build
	$(VPY) -m gpkernels bench head --quick --threads 1
	$(VPY) -m gpkernels bench penalty --quick --threads 1
	$(VPY) -m gpkernels bench step --quick --threads 1

clean:
	rm -rf build gpkernels/_C*.so $(EXT_STAMP) *.egg-info
