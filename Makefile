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

.PHONY: all build demo test test-quick lint bench info gpu-check clean

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

# On a machine with a GPU, in one call (e.g. the device tool's lent H200, whose own python3 holds torch and triton
# and cannot install packages): build with the CUDA kernels required, run the GPU tests (the `gpu` marker: CUDA
# and compiled-Triton cases, sizes, streams, CUDA graphs), then the head and step benchmarks on CUDA. Results go to
# $(GPU_OUT)/<gpu>/ (GPU_OUT=$$OUT under the device tool). About 8 minutes on an H200 with a warm cache.
GPU_PYTHON ?= python3
GPU_OUT ?= benchmarks/results
gpu-check:
	@set -e; $(GPU_PYTHON) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch sees no CUDA device here')"; \
	gpu=$$($(GPU_PYTHON) -c "import torch, re; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))"); \
	out=$(GPU_OUT)/$$gpu; mkdir -p $$out; \
	GPKERNELS_FORCE_CUDA=1 MAX_JOBS=$${MAX_JOBS:-16} $(GPU_PYTHON) setup.py build_ext --inplace > $$out/build.log 2>&1 || { tail -30 $$out/build.log; exit 1; }; \
	$(GPU_PYTHON) -m gpkernels info | tee $$out/info.txt; \
	GPKERNELS_EXPECT_CUDA_BUILD=1 $(GPU_PYTHON) -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee $$out/tests-gpu.log | tail -25; \
	$(GPU_PYTHON) -m gpkernels bench head --device cuda --passes training op-double-backward --dtypes fp32 bf16 \
		--no-compile --repeats 10 --out $$out 2>&1 | tail -30; \
	$(GPU_PYTHON) -m gpkernels bench step --device cuda --critics mlp dcgan32 resnet32 dcgan64 --out $$out 2>&1 | tail -30; \
	echo "gpu-check: results in $$out"

clean:
	rm -rf build gpkernels/_C*.so $(EXT_STAMP) *.egg-info
