#!/usr/bin/env bash
# One call on a lent Hopper GPU (about 6-8 minutes on one H200): the attention kernels
# checked and timed.
#   1. builds the package (CMake, CUDA on) and the kernel playground (plain nvcc), side by side;
#   2. checks both kernel families (sm_90a wgmma/TMA and mma.sync) against float64
#      references, side by side on the one GPU: the playground (cuda/dev/playground.cu),
#      tests/python/test_gpu_kernels.py and the one-process tests of
#      tests/python/test_gpu_masked_values.py, and compute-sanitizer memcheck and
#      racecheck on the playground's small cases at head dims 64 and 96;
#   3. times the public call against SDPA cuDNN and flash (experiments/bench_gpu_kernels.py),
#      then the mma.sync kernels alone on the head-dim 64 and 96 shapes (the "before").
# Logs and CSVs go to $OUT (logs as one archive per phase); the summary at the end says
# what passed. A smoke run first: if the new head dims hang, the rest runs without them.
# Usage: SHA=<git sha> experiments/device/check_kernels.sh   (with .whl/ carried, below)
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-/tmp/lvx_out}
sha=${SHA:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}
cd "$root"
mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/gpus.txt"
# Wheels the machine lacks (it has no network), carried in .whl/: the CPU kernels' CBLAS,
# scipy-openblas32 (pip download --no-deps --only-binary=:all: --python-version 3.12
#   --platform manylinux2014_x86_64 -d .whl scipy-openblas32).
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -c "import scipy_openblas32" 2>/dev/null ||
  echo "note: scipy_openblas32 is not importable (carry .whl/ with its wheel); CMake will look for a system CBLAS"

# ---- 1. builds ----------------------------------------------------------------------
(cd cuda && BUILD=/tmp/b JOBS=8 RUN=0 VARIANTS=0 timeout 300 dev/run_playground.sh >"$out/playground_build.log" 2>&1
 echo "rc=$?" >>"$out/playground_build.log") &
pg_build=$!
nccl_lib=$(python3 -c "import glob,site; print((sorted(glob.glob(site.getsitepackages()[0]+'/nvidia/nccl/lib/libnccl.so*')) or [''])[0])")
[ -n "$nccl_lib" ] || nccl_lib=$(ls /usr/lib/x86_64-linux-gnu/libnccl.so* 2>/dev/null | head -1)
timeout 300 cmake -S . -B /tmp/lvx_build -DLVX_PYTHON=ON -DLVX_TESTS=OFF -DLVX_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" ${nccl_lib:+-DNCCL_LIBRARY=$nccl_lib} >"$out/cmake.log" 2>&1 &&
  timeout 300 cmake --build /tmp/lvx_build -j16 >>"$out/cmake.log" 2>&1
build_rc=$?
stamp "package build rc=$build_rc"; grep -E "error" "$out/cmake.log" | head -5
wait $pg_build
stamp "playground build $(tail -1 "$out/playground_build.log")"; grep -E "error" "$out/playground_build.log" | head -5
rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r python/lvxattn /tmp/pkg/ && cp /tmp/lvx_build/_core*.so /tmp/pkg/lvxattn/
export PYTHONPATH=/tmp/pkg${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import lvxattn, torch; print('lvxattn', lvxattn.__version__, 'cuda', lvxattn.cuda_built(), 'torch', torch.__version__)"
pkg_ok=$?  # without the package, the playground steps still run

# Logs travel in one archive per phase (at most 8 files come back from a lent machine,
# also when the call is stopped early).
pack() { (cd "$out" && ls *.log *.txt >/dev/null 2>&1 && tar czf "logs_$1.tgz" $(ls *.log *.txt) && rm -f *.log *.txt); }
pack build

# ---- 2. correctness, both kernel families, side by side ------------------------------
# A quick first run of the new head dims: if it hangs, the rest runs with the sm_90a
# kernels for D = 128 only (LVX_CUDA_SM90=128), so that the call still ends in time.
on=1
timeout 60 /tmp/b/playground small dims=64,96 dtypes=bf16 >"$out/playground_smoke.log" 2>&1
smoke=$?
stamp "smoke (playground small, D = 64, 96, bf16) rc=$smoke: $(tail -1 "$out/playground_smoke.log")"
if [ $smoke = 124 ] || [ $smoke -gt 128 ]; then on=128; echo "the sm_90a kernels at D = 64/96 hung or crashed: LVX_CUDA_SM90=128 from here"; fi
san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
pids=()
for sm90 in $on 0; do
  LVX_CUDA_SM90=$sm90 timeout 200 /tmp/b/playground >"$out/playground_sm90_$sm90.log" 2>&1 &
  pids+=($!)
  [ $pkg_ok = 0 ] || continue
  LVX_CUDA_SM90=$sm90 timeout 220 python3 -m pytest -q -p no:cacheprovider -m gpu tests/python/test_gpu_kernels.py \
    >"$out/test_gpu_kernels_sm90_$sm90.log" 2>&1 &
  pids+=($!)
  LVX_CUDA_SM90=$sm90 timeout 220 python3 -m pytest -q -p no:cacheprovider -m gpu tests/python/test_gpu_masked_values.py \
    >"$out/test_gpu_masked_sm90_$sm90.log" 2>&1 &
  pids+=($!)
done
if [ -n "$san" ] && [ $on = 1 ]; then
  for tool in memcheck racecheck; do
    timeout 200 "$san" --tool $tool /tmp/b/playground small dims=64,96 dtypes=bf16,f16 >"$out/sanitizer_$tool.log" 2>&1 &
    pids+=($!)
  done
else
  echo "no compute-sanitizer found" | tee "$out/sanitizer_memcheck.log" >"$out/sanitizer_racecheck.log"
fi
wait "${pids[@]}"
stamp "correctness done"
summary() {
  echo "==== summary (sha $sha; first family LVX_CUDA_SM90=$on)"
  echo "smoke: rc=$smoke $(tail -1 "$out/playground_smoke.log")"
  for sm90 in $on 0; do
    echo "playground LVX_CUDA_SM90=$sm90: $(tail -1 "$out/playground_sm90_$sm90.log")"
    grep -E "FAIL" "$out/playground_sm90_$sm90.log" | head -8
    for t in kernels masked; do
      f=$out/test_gpu_${t}_sm90_$sm90.log
      echo "pytest $t LVX_CUDA_SM90=$sm90: $(grep -E "passed|failed|error" "$f" 2>/dev/null | tail -1)"
      grep -E "^FAILED" "$f" 2>/dev/null | head -6
    done
  done
  echo "memcheck: $(grep -E "ERROR SUMMARY" "$out/sanitizer_memcheck.log" 2>/dev/null | tail -1) / $(tail -1 "$out/sanitizer_memcheck.log" 2>/dev/null)"
  echo "racecheck: $(grep -E "RACECHECK SUMMARY" "$out/sanitizer_racecheck.log" 2>/dev/null | tail -1) / $(tail -1 "$out/sanitizer_racecheck.log" 2>/dev/null)"
}
summary >"$out/summary.txt"
pack check

# ---- 3. speed: the public call against SDPA, alone on the GPU -------------------------
[ $pkg_ok = 0 ] && LVX_CUDA_SM90=$on timeout 200 python3 experiments/bench_gpu_kernels.py --out "$out/gpu_kernels.csv" --sha "$sha" \
  --reps-ms 150 >"$out/bench.log" 2>&1
stamp "bench rc=$?"
[ $pkg_ok = 0 ] && LVX_CUDA_SM90=128 timeout 60 python3 experiments/bench_gpu_kernels.py --out "$out/gpu_kernels_mma_d64_d96.csv" \
  --sha "$sha" --reps-ms 100 --label mma --no-sdpa \
  --shapes "1,16,16,1024,65536,64,bf16;1,16,16,256,65536,64,bf16;1,16,16,1024,65536,96,bf16;1,16,16,256,65536,96,fp16" \
  >"$out/bench_mma.log" 2>&1
stamp "bench (mma.sync at D = 64, 96) rc=$?"
tar xzf "$out/logs_check.tgz" -C /tmp summary.txt 2>/dev/null && cat /tmp/summary.txt
grep -vE "^wrote" "$out/bench.log" 2>/dev/null | tail -70
grep -E " mma |failed" "$out/bench_mma.log" 2>/dev/null
pack bench
stamp "done"
