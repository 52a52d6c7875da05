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
EXTRAS = $(shell $(VPY) .ci/extras.py test train)

.PHONY: all build demo test test-quick test-min-torch check-dist lint bench info gpu-check clean

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

# The packaging round trip (CI runs it after the tests; about 2 min on 2 shared cores, most of it one CPU-only
# compile): an sdist; a plain isolated `pip wheel` of it must fail and name --no-build-isolation; a wheel built
# from the sdist (GPKERNELS_NO_CUDA=1: the CUDA compile is checked by `build`, and would take minutes more),
# which proves the sdist ships every source; that wheel installed into a fresh venv, imported from outside the
# tree, one op run on the compiled CPU kernels, uninstalled. Installing the sdist itself runs that same build
# (pip builds a wheel from it and installs the wheel), so it is not compiled twice. The fresh venv sees .venv's
# torch through a .pth file (`venv --system-site-packages` from a venv would see the base Python's packages,
# not .venv's).
DIST_DIR := build/check-dist
check-dist: $(DEPS)
	rm -rf $(DIST_DIR) && mkdir -p $(DIST_DIR)
	$(VPY) setup.py -q sdist -d $(DIST_DIR)
	! $(VPY) -m pip wheel -q --no-cache-dir --no-deps -w $(DIST_DIR)/isolated $(DIST_DIR)/gpkernels-*.tar.gz \
		> $(DIST_DIR)/isolated.log 2>&1
	grep -q -- "--no-build-isolation" $(DIST_DIR)/isolated.log
	GPKERNELS_NO_CUDA=1 MAX_JOBS=$${MAX_JOBS:-2} $(VPY) -m pip wheel -q --no-cache-dir --no-build-isolation \
		--no-deps -w $(DIST_DIR) $(DIST_DIR)/gpkernels-*.tar.gz
	$(VPY) -m venv --without-pip $(DIST_DIR)/venv
	$(VPY) -c "import site; print(site.getsitepackages()[0])" \
		> "$$($(DIST_DIR)/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/dot-venv.pth"
	$(VPY) -m pip --python $(DIST_DIR)/venv/bin/python install -q --no-index --no-deps $(DIST_DIR)/gpkernels-*.whl
	cd $(DIST_DIR) && venv/bin/python -c "import os, sys, torch, gpkernels; \
		from gpkernels.backends import native; \
		assert gpkernels.__file__.startswith(os.path.abspath('venv')), gpkernels.__file__; \
		assert native.LOADED, native.LOAD_ERROR; \
		g = torch.randn(4, 3, dtype=torch.float64); \
		got = gpkernels.penalty(g, backend='cpu'); \
		torch.testing.assert_close(got, (g.norm(dim=1) - 1).pow(2).mean()); \
		print('check-dist: installed', gpkernels.__file__, 'penalty', got.item())"
	$(VPY) -m pip --python $(DIST_DIR)/venv/bin/python uninstall -q -y gpkernels
	cd $(DIST_DIR) && ! venv/bin/python -c "import gpkernels" 2> /dev/null

# The lowest supported torch (pyproject.toml, README), on the CPU: a venv with torch==$(MIN_TORCH) (and the triton
# 3.6 it brings), the extension built (CPU kernels) in a tree unpacked from the sdist, and the main test files. Not
# part of `make test`: the venv takes a few minutes to install the first time, the build and tests about 7 more.
# MIN_NUMPY: Triton 3.6's interpreter (the Triton tests on the CPU) fails with numpy 2.4 or newer ("only
# 0-dimensional arrays can be converted to Python scalars", in its tensor.__index__); compiled Triton on a GPU does
# not use numpy there.
MIN_TORCH ?= 2.11.0
MIN_NUMPY ?= numpy<2.4
MIN_VENV := build/venv-torch$(MIN_TORCH)
MIN_TREE := build/tree-torch$(MIN_TORCH)
MIN_TESTS := $(wildcard tests/test_penalty.py tests/test_interpolate.py tests/test_gradient_penalty.py \
	tests/test_ops.py tests/test_errors.py tests/test_backends.py tests/test_exponent.py tests/test_build.py)
test-min-torch:
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q "torch==$(MIN_TORCH)" "$(MIN_NUMPY)" ninja setuptools wheel pytest \
		expecttest
	rm -rf $(MIN_TREE) && mkdir -p $(MIN_TREE)
	$(MIN_VENV)/bin/python setup.py -q sdist -d $(MIN_TREE)
	tar -xzf $(MIN_TREE)/gpkernels-*.tar.gz -C $(MIN_TREE) --strip-components=1
	cd $(MIN_TREE) && GPKERNELS_NO_CUDA=1 MAX_JOBS=$${MAX_JOBS:-2} $(abspath $(MIN_VENV))/bin/python setup.py -q \
		build_ext --inplace
	cd $(MIN_TREE) && $(abspath $(MIN_VENV))/bin/python -m gpkernels info
	cd $(MIN_TREE) && $(abspath $(MIN_VENV))/bin/python -m pytest -q -p no:cacheprovider $(MIN_TESTS)

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
	rm -rf build gpkernels/_C*.so $(EXT_STAMP) *.egg-info dist
