#!/usr/bin/env bash
# Builds the playground and the ctypes shim with plain nvcc (no CMake build) and runs the
# correctness check. Usage: cuda/dev/run_playground.sh [small]   (BUILD=dir to reuse)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-/tmp/lvx_cuda_dev}
mkdir -p "$build"
arch=${ARCH:--gencode=arch=compute_90a,code=sm_90a}
flags="-std=c++17 -O3 --use_fast_math -Xcompiler -fPIC -I../src -I. $arch"
cmake -DLVX_INST_DIR="$build/inst" -P gen_instances.cmake
srcs="cuda_backend.cu elementwise.cu ranges.cu split_kv.cpp tensor_map.cu $(ls "$build"/inst/*.cu) ../src/core/error.cpp ../src/core/backend.cpp"
objs=""
for s in $srcs; do
  o="$build/$(basename "$s" | tr . _).o"
  objs="$objs $o"
  nvcc $flags -c "$s" -o "$o" &
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-8}" ]; do sleep 0.2; done
done
wait
nvcc $flags -c dev/playground.cu -o "$build/playground.o"
nvcc $flags -c dev/shim.cu -o "$build/shim.o"
nvcc $arch -o "$build/playground" "$build/playground.o" $objs -lcudart
nvcc $arch -shared -o "$build/liblvx_cuda_dev.so" "$build/shim.o" $objs -lcudart
if [ "${RUN:-1}" = 1 ]; then "$build/playground" "$@"; fi
if [ "${VARIANTS:-0}" = 1 ]; then
  nvcc $flags -o "$build/variants" dev/variants.cu "$build/split_kv_cpp.o" "$build/error_cpp.o" -lcudart
  "$build/variants"
fi
