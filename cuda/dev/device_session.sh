#!/usr/bin/env bash
# One device call: CMake build of the whole project with the CUDA backend (checks
# cuda/CMakeLists.txt), the GPU pytest file through the public API, the playground
# (+ tile variants) and the SDPA comparison. Logs go to $OUT. Usage: SHA=... cuda/dev/device_session.sh
set -uo pipefail
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-/tmp/lvx_out}
cd "$root"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
if [ "${CMAKE_BUILD:-1}" = 1 ]; then
  start=$(date +%s)
  cmake -S . -B /tmp/lvx_build -DLVX_PYTHON=ON -DLVX_TESTS=OFF -DLVX_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >"$out/cmake.log" 2>&1 &&
    cmake --build /tmp/lvx_build -j16 >>"$out/cmake.log" 2>&1
  echo "cmake build rc=$? in $(( $(date +%s) - start )) s"; tail -3 "$out/cmake.log"
  rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r python/lvxattn /tmp/pkg/ && cp /tmp/lvx_build/_core*.so /tmp/pkg/lvxattn/
  PYTHONPATH=/tmp/pkg timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/python/test_gpu_kernels.py 2>&1 | tee "$out/pytest_gpu.log" | tail -15
fi
(cd cuda && BUILD=/tmp/b JOBS=16 VARIANTS=${VARIANTS:-1} timeout 300 dev/run_playground.sh 2>&1 | tee "$out/playground_variants.log" | grep -v "^\(bf16\|f16\|f32\) .* ok$")
# The sm_80 kernels on the same card (LVX_CUDA_SM90=0), and the SASS of the sm_90a ones.
if [ "${AB:-1}" = 1 ]; then
  LVX_CUDA_SM90=0 /tmp/b/playground | tail -1
  for o in fwd bwd; do cuobjdump -sass /tmp/b/inst_${o}_bf16_d128_cu.o 2>/dev/null | grep -oE "HGMMA\.[0-9A-Za-z]+" | sort | uniq -c; done
fi
if [ "${NCU:-0}" = 1 ]; then
  # Stall reasons of the library backward kernel (first shape), one launch.
  timeout 150 ncu --section SpeedOfLight --section WarpStateStats --section Occupancy --section ComputeWorkloadAnalysis \
    -k regex:attend_bwd_kernel --launch-skip 2 --launch-count 1 /tmp/b/variants >"$out/ncu_bwd.txt" 2>&1
  grep -E "Stall|Throughput|Occupancy|Issue|Registers|Pipe|Warp Cycles" "$out/ncu_bwd.txt" | head -40
fi
timeout 250 python3 experiments/bench_gpu_kernels.py --lib /tmp/b/liblvx_cuda_dev.so --out "$out/gpu_kernels.csv" \
  --reps 15 --sha "${SHA:-unknown}" --label ${LABEL:-ours} 2>&1 | tee "$out/bench.log"
[ "${AB:-1}" = 1 ] && LVX_CUDA_SM90=0 timeout 200 python3 experiments/bench_gpu_kernels.py --lib /tmp/b/liblvx_cuda_dev.so \
  --out "$out/gpu_kernels_mma.csv" --reps 15 --sha "${SHA:-unknown}" --label ours-mma --no-sdpa 2>&1 | tee "$out/bench_mma.log"
