#!/usr/bin/env bash
# Compiles every cuda/ kernel source as CMake would (both targets), in parallel; prints the
# resource report of the attention kernels. Usage: cuda/dev/build_lib.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/lvx_cuda_build}
mkdir -p "$out"
flags="-std=c++17 -O3 --use_fast_math -Xcompiler -fPIC -I../src -I. -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a"
cmake -DLVX_INST_DIR="$out/inst" -P gen_instances.cmake
srcs="cuda_backend.cu elementwise.cu ranges.cu split_kv.cpp tensor_map.cu $(ls "$out"/inst/*.cu)"
for s in $srcs; do
  o="$out/$(basename "$s" | tr . _).o"
  echo "nvcc $s"
  nvcc $flags -Xptxas -v -c "$s" -o "$o" >"$o.log" 2>&1 || { cat "$o.log"; exit 1; } &
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do sleep 0.2; done
done
wait
grep -h -A2 "Compiling entry.*sm_90a" "$out"/*.log | grep -E "registers|spill" | sort | uniq -c | sort -rn | head -40 || true
