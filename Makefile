# From nothing to a demo or the full test suite: each target creates .venv, installs torch and the
# demo/test dependencies, and builds the extension (CUDA kernels too when nvcc and a CUDA torch are here).
PYTHON ?= python3
TORCH_SPEC ?= torch==2.14.1
VENV := .venv
VPY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
# CI must compile the .cu sources wherever nvcc is present (a GPU is not needed to compile them).
EXPECT_CUDA_BUILD := $(if $(GPKERNELS_NO_CUDA),0,$(if $(shell command -v nvcc),1,0))
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h)
EXT_STAMP := gpkernels/.built

.PHONY: all build demo test bench info clean

all: build

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(DEPS): $(VPY) Makefile
	$(VPY) -m pip install --quiet "$(TORCH_SPEC)" ninja setuptools wheel pytest numpy expecttest matplotlib pot scikit-learn tqdm
	touch $@

$(EXT_STAMP): $(DEPS) $(SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(VPY) setup.py build_ext --inplace
	touch $@

build: $(EXT_STAMP)

info: build
	$(VPY) -m gpkernels info

demo: build
	$(VPY) -m gpkernels demo
	$(VPY) -m gpkernels.train --dataset 8gaussians --regularizer gp --steps 300 --width 128 --out runs/demo --overwrite

test: build
	GPKERNELS_EXPECT_CUDA_BUILD=$(EXPECT_CUDA_BUILD) $(VPY) -m pytest -q tests

bench: build
	$(VPY) benchmarks/bench_head.py --quick --threads 1
	$(VPY) benchmarks/bench_penalty.py --quick --threads 1
	$(VPY) benchmarks/bench_step.py --quick --threads 1

clean:
	rm -rf build gpkernels/_C*.so $(EXT_STAMP) *.egg-info
