#!/usr/bin/env bash
# The project's own harness (not a user tool): one call on a lent multi-GPU machine
# with no internet. It installs the package the way the README tells a user on such
# a machine (`pip install --no-build-isolation .` with no other flags, into the Python
# environment that has the preinstalled torch, mpi4py and h5py: python3's own where
# python3 is itself a virtual environment, else a venv that sees the system's packages;
# MPI, CUDA and NCCL are found by the build), checks the install (`python -m lvxattn info`, 2 ranks against
# the float64 reference with the NCCL transport present), runs the GPU tests on 1, 2
# and all GPUs, then the distributed benchmarks (P = 1, 2, N; every transport), the
# recompute scale run, the peak-memory breakdown, the GPU sweep and the GPU soak
# test. Logs and CSVs go to $OUT. Steps are independent: one failing does not stop
# the rest. A step list without "build" reuses an install an earlier call on the same
# machine left there. Usage:
#   STEPS="build test bench kernels recompute mllama memprofile sweep soak" experiments/device/run_gpus.sh
# ('table': the kernel step's SDPA comparison alone; 'trace': host gaps and runtime calls of
# one forward+backward, trace_call.py; 'host': host time per public call, host_overhead.py;
# 'ncusrc': warp-state samples per SASS
# instruction of the backward kernel, NCU_SHAPES / NCU_KERNEL; 'ncu': counters and pipe use of
# NCU_KERNEL's kernels, ours or with NCU_SDPA=1 cuDNN's, on NCU_SHAPES)
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-/tmp/lvx_out}
steps=${STEPS:-build test bench recompute}
cd "$root"
mkdir -p "$out"
# Files this call writes under $out are newer than this mark; the logs' archive takes only
# those (an $out an earlier call wrote to keeps its files out of this call's archive).
since=$(mktemp)
NGPU=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee "$out/gpus.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
MPIRUN="mpirun --oversubscribe --bind-to none -x PYTHONPATH -x NCCL_NVLS_ENABLE -x PYTHONUNBUFFERED"
# README, Installing, "A machine without internet": where python3 is itself a virtual
# environment, a venv made from it (even with --system-site-packages) sees its base
# interpreter's packages, not torch, so the package goes into python3's environment;
# otherwise into a venv that sees the system's packages.
if python3 -c "import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)"; then
  VENV=$(python3 -c "import sys; print(sys.prefix)")
  PY=$(python3 -c "import sys; print(sys.executable)")
  own_venv=0
else
  VENV=/tmp/lvx_venv
  PY=$VENV/bin/python
  own_venv=1
fi
echo "installing into $VENV ($PY)"

if [[ " $steps " == *" build "* ]] || ! "$PY" -c "import lvxattn._core" 2>/dev/null; then
  # Exactly the user's commands. Without build isolation and without ninja the build runs
  # through Makefiles, one file at a time unless CMAKE_BUILD_PARALLEL_LEVEL says otherwise.
  start=$(date +%s)
  if [ "$own_venv" = 1 ]; then
    rm -rf "$VENV"
    python3 -m venv --system-site-packages "$VENV" 2>/dev/null || python3 -m venv --system-site-packages --without-pip "$VENV"
  fi
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$PY" -m pip install -v --no-build-isolation . >"$out/build.log" 2>&1
  echo "pip install rc=$? in $(( $(date +%s) - start )) s"
  grep -E -- "-- +(lvxattn|CPU|CUDA|MPI|NCCL) |rror|Successfully installed" "$out/build.log" | head -20
fi
"$PY" -m lvxattn info; echo "lvxattn info rc=$?"
# The user's check from that install: 2 ranks (1 on a one-GPU machine: NCCL needs a GPU per rank),
# bf16 on GPUs, against the float64 reference; the NCCL transport must be there.
timeout 200 $MPIRUN -n $(( NGPU < 2 ? 1 : 2 )) "$PY" tests/install/check_install.py --device cuda --expect-transport nccl \
  --expect-prefix "$VENV"; echo "install check rc=$?"

if [[ " $steps " == *" test "* ]]; then
  timeout ${TEST_TIMEOUT:-200} "$PY" -m pytest -q -x -p no:cacheprovider -m gpu tests/python/test_gpu_kernels.py \
    >"$out/test_gpu_kernels.log" 2>&1
  echo "gpu kernel tests rc=$?"; grep -E "passed|failed|Error" "$out/test_gpu_kernels.log" | sort | uniq -c | head -5
  # The sm_80 (mma.sync) kernels on the same card.
  LVX_CUDA_SM90=0 timeout ${TEST_TIMEOUT:-200} "$PY" -m pytest -q -x -p no:cacheprovider -m gpu tests/python/test_gpu_kernels.py \
    >"$out/test_gpu_kernels_sm80.log" 2>&1
  echo "gpu kernel tests (LVX_CUDA_SM90=0) rc=$?"; grep -E "passed|failed|Error" "$out/test_gpu_kernels_sm80.log" | sort | uniq -c | head -5
  for n in ${TEST_RANKS:-$NGPU 2 1}; do
    timeout ${TEST_TIMEOUT:-200} $MPIRUN -n $n "$PY" -m pytest -q -x -p no:cacheprovider -o faulthandler_timeout=45 --with-mpi -m "mpi and gpu" \
      tests/python/test_gpu_distributed.py >"$out/test_gpu_dist_n$n.log" 2>&1
    echo "gpu distributed tests n=$n rc=$?"; grep -E "passed|failed|Error" "$out/test_gpu_dist_n$n.log" | sort | uniq -c | head -5
  done
  # NaN/Inf outside the rows' intervals: both kernel families in one process, then lvx,
  # ring and ulysses at 1-3 ranks (ranks share the GPUs through host-staged MPI).
  for sm90 in 1 0; do
    LVX_CUDA_SM90=$sm90 timeout ${TEST_TIMEOUT:-200} "$PY" -m pytest -q -p no:cacheprovider -m gpu \
      tests/python/test_gpu_masked_values.py >"$out/test_gpu_masked_sm90_$sm90.log" 2>&1
    echo "gpu masked-value tests (LVX_CUDA_SM90=$sm90) rc=$?"; grep -E "passed|failed" "$out/test_gpu_masked_sm90_$sm90.log" | tail -3
  done
  for n in ${MASKED_RANKS:-1 2 3}; do
    timeout ${TEST_TIMEOUT:-200} $MPIRUN -n $n "$PY" -m pytest -q -p no:cacheprovider -o faulthandler_timeout=45 --with-mpi -m "mpi and gpu" \
      tests/python/test_gpu_masked_values.py >"$out/test_gpu_masked_n$n.log" 2>&1
    echo "gpu masked-value tests n=$n rc=$?"; grep -E "passed|failed" "$out/test_gpu_masked_n$n.log" | sort | uniq -c | head -5
  done
fi

if [[ " $steps " == *" bench "* ]]; then
  SHAPES=${SHAPES:-4096x65536x16x16x128:fp16,1024x131072x16x16x128:fp16,8192x32768x16x16x128:fp16,2048x262144x16x16x128:fp16,2048x131072x32x8x128:bf16}
  csv="$out/dist_gpu.csv"
  for n in ${BENCH_RANKS:-1 2 $NGPU}; do
    timeout 240 $MPIRUN -n $n "$PY" experiments/bench_dist.py --device cuda --shapes "$SHAPES" \
      --algorithms ${BENCH_ALGS:-lvx,ring} --transport nccl --repeats ${REPEATS:-7} --csv "$csv" --tag "P=$n" 2>&1 | tail -20
  done
  # A/B in the same call: the communication stream at normal priority (the default is high).
  [ "${PRIORITY_AB:-0}" = 1 ] && timeout 240 $MPIRUN -n $NGPU -x LVX_COMM_PRIORITY=normal "$PY" experiments/bench_dist.py \
    --device cuda --shapes "$SHAPES" --algorithms lvx,ring --transport nccl --repeats ${REPEATS:-7} --csv "$csv" \
    --tag "P=$NGPU comm-priority=normal" 2>&1 | tail -12
  [ "${EXTRA:-1}" = 1 ] && timeout 200 $MPIRUN -n $NGPU "$PY" experiments/bench_dist.py --device cuda --shapes "$SHAPES" \
    --algorithms ulysses --transport nccl --repeats 5 --csv "$csv" 2>&1 | tail -7
  [ "${MPI_BENCH:-1}" = 1 ] && timeout 200 $MPIRUN -n $NGPU "$PY" experiments/bench_dist.py --device cuda \
    --shapes ${MPI_SHAPES:-4096x65536x16x16x128:fp16,2048x131072x32x8x128:bf16} --algorithms ${MPI_ALGS:-lvx,ring} --transport mpi \
    --repeats 5 --csv "$csv" 2>&1 | tail -8
fi

RECOMPUTE_ARGS=${RECOMPUTE_ARGS:---text-len 512 --start 262144 --granularity 131072 --trial-timeout 60}
if [[ " $steps " == *" ncu "* ]]; then
  # Counters (tensor pipe, issue, L2 incl. the dQ reduce-adds, DRAM, stall reasons) and
  # NCU_SECTIONS (default: the pipes' use) of NCU_KERNEL's kernels on NCU_SHAPES, one
  # launch each; NCU_SDPA=1 runs SDPA's cuDNN backend too, so that NCU_KERNEL can name
  # its kernels (flash_fprop, flash_bprop).
  PY="$PY" PUBLIC=1 SDPA="${NCU_SDPA:-0}" SECTIONS="${NCU_SECTIONS-ComputeWorkloadAnalysis}" \
    KERNELS="${NCU_KERNEL:-attend_fwd_sm90 attend_bwd_sm90}" OUT="$out" \
    SHAPES="${NCU_SHAPES:-1,16,16,1024,65536,64,bf16}" cuda/dev/ncu_sm90.sh 2>&1 | tee "$out/ncu_counters.txt"
fi

if [[ " $steps " == *" trace "* ]]; then
  # Per-rank GPU timelines of one shape (torch.profiler): kernel time by kind, idle gaps.
  for n in ${TRACE_RANKS:-1 $NGPU}; do
    for alg in ${TRACE_ALGS:-lvx}; do
      timeout 180 $MPIRUN -n $n "$PY" experiments/trace_dist.py --shape ${TRACE_SHAPE:-4096x65536x16x16x128:fp16} \
        --algorithm $alg --out "$out/trace" 2>&1 | grep -v "^\[W" | tail -40
    done
  done
fi

if [[ " $steps " == *" memprofile "* ]]; then
  for mode in no-recompute recompute; do
    timeout 120 "$PY" experiments/profile_memory.py --mode $mode --length ${PROFILE_LEN:-262144} \
      $RECOMPUTE_ARGS 2>&1 | tail -20 | tee "$out/profile_memory_$mode.txt"
  done
fi

if [[ " $steps " == *" recompute "* ]]; then
  for n in ${RECOMPUTE_RANKS:-1 $NGPU}; do
    timeout ${RECOMPUTE_TIMEOUT:-200} $MPIRUN -n $n "$PY" experiments/bench_recompute.py $RECOMPUTE_ARGS \
      --csv "$out/bench_recompute.csv" --trials-csv "$out/bench_recompute_trials.csv" 2>&1 | tail -8
  done
fi

if [[ " $steps " == *" mllama "* ]]; then
  # transformers' Mllama through lvxattn: GPU tests (one process), then the training-step benchmark.
  timeout ${TEST_TIMEOUT:-200} "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/python/test_mllama.py \
    >"$out/test_mllama_gpu.log" 2>&1
  echo "mllama gpu tests rc=$?"; grep -E "passed|failed|Error" "$out/test_mllama_gpu.log" | sort | uniq -c | head -5
  for n in ${MLLAMA_RANKS:-1}; do
    timeout ${MLLAMA_TIMEOUT:-420} $MPIRUN -n $n "$PY" experiments/bench_mllama.py --csv "$out/bench_mllama.csv" \
      $MLLAMA_ARGS >"$out/bench_mllama_n$n.log" 2>&1
    echo "bench_mllama n=$n rc=$?"; tail -12 "$out/bench_mllama_n$n.log"
  done
fi

if [[ " $steps " == *" sweep "* ]]; then
  LVX_CACHE_DIR="$out/cache" timeout $(( ${SWEEP_LIMIT:-200} + 120 )) $MPIRUN -n $NGPU -x LVX_CACHE_DIR="$out/cache" \
    "$PY" experiments/sweep.py experiments/configs/gpu.toml --device cuda --time-limit ${SWEEP_LIMIT:-200} \
    --csv "$out/sweep_gpu.csv" >"$out/sweep_gpu.log" 2>&1
  echo "sweep rc=$?"; tail -30 "$out/sweep_gpu.log"
fi

if [[ " $steps " == *" kernels "* ]]; then
  # The step kernels: playground (float64 reference) for both kernel families, then the
  # public call's times against torch SDPA (flash, cuDNN) on one GPU.
  (cd cuda && BUILD=/tmp/b JOBS=16 RUN=0 VARIANTS=0 dev/run_playground.sh >"$out/playground_build.log" 2>&1)
  for sm90 in 1 0; do
    LVX_CUDA_SM90=$sm90 timeout 120 /tmp/b/playground >"$out/playground_sm90_$sm90.log" 2>&1
    echo "playground LVX_CUDA_SM90=$sm90 rc=$?: $(tail -1 "$out/playground_sm90_$sm90.log")"
  done
fi
if [[ " $steps " == *" kernels "* || " $steps " == *" table "* ]]; then
  # TABLE_SHAPES: other shapes ('B,Hq,Hkv,Lq,Lkv,D,dtype;...'); TABLE_ARGS: more options
  # (e.g. "--rounds 3 --no-flash").
  timeout ${TABLE_LIMIT:-420} "$PY" experiments/bench_gpu_kernels.py --out "$out/gpu_kernels.csv" --reps-ms 150 \
    --kernel-times --sha "${SHA:-unknown}" ${TABLE_SHAPES:+--shapes "$TABLE_SHAPES"} ${TABLE_ARGS:-} 2>&1 | tail -70
fi
if [[ " $steps " == *" kernels "* ]]; then
  LVX_CUDA_SM90=0 timeout 200 "$PY" experiments/bench_gpu_kernels.py --out "$out/gpu_kernels_mma.csv" --reps-ms 100 \
    --sha "${SHA:-unknown}" --label ours-mma --no-sdpa 2>&1 | grep ours-mma
fi

if [[ " $steps " == *" ncusrc "* ]]; then
  # Warp-state samples per SASS instruction of one kernel of the public call (NCU_KERNEL,
  # default the sm_90a backward; one launch per shape of NCU_SHAPES).
  PY="$PY" PUBLIC=1 SOURCE=1 KERNELS="${NCU_KERNEL:-attend_bwd_sm90}" OUT="$out" \
    SHAPES="${NCU_SHAPES:-1,16,16,4096,65536,128,bf16;1,16,16,256,32768,128,bf16}" cuda/dev/ncu_sm90.sh
fi

if [[ " $steps " == *" ncu "* ]]; then
  # Counters (tensor pipe, issue, L2 incl. the dQ reduce-adds, DRAM, stall reasons) and
  # NCU_SECTIONS (default: the pipes' use) of NCU_KERNEL's kernels on NCU_SHAPES, one
  # launch each; NCU_SDPA=1 runs SDPA's cuDNN backend too, so that NCU_KERNEL can name
  # its kernels (flash_fprop, flash_bprop).
  PY="$PY" PUBLIC=1 SDPA="${NCU_SDPA:-0}" SECTIONS="${NCU_SECTIONS-ComputeWorkloadAnalysis}" \
    KERNELS="${NCU_KERNEL:-attend_fwd_sm90 attend_bwd_sm90}" OUT="$out" \
    SHAPES="${NCU_SHAPES:-1,16,16,1024,65536,64,bf16}" cuda/dev/ncu_sm90.sh 2>&1 | tee "$out/ncu_counters.txt"
fi

if [[ " $steps " == *" trace "* ]]; then
  # Where a forward+backward's wall time goes beyond its kernels (host gaps, runtime calls),
  # ours against cuDNN, timed as the SDPA table times them.
  "$PY" experiments/trace_call.py --out "$out/traces" \
    --shapes "${TRACE_SHAPES:-1,16,16,8192,32768,128,fp16;1,16,16,4096,65536,128,bf16;1,16,16,1024,16384,128,bf16}" \
    2>&1 | tee "$out/trace_call.txt"
  # one archive: at most 8 files come back from a lent machine
  [ -d "$out/traces" ] && (cd "$out" && tar czf traces.tgz traces && rm -rf traces)
fi

if [[ " $steps " == *" host "* ]]; then
  # Host time per public call and its parts, on shapes small enough to be host-bound.
  for shape in ${HOST_SHAPES:-1,2,2,64,1024,128,bf16 1,16,16,256,2048,128,bf16}; do
    "$PY" experiments/host_overhead.py --shape "$shape" 2>&1 | tee -a "$out/host_overhead.txt"
  done
fi

if [[ " $steps " == *" soak "* ]]; then
  timeout 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/python/test_reliability.py -k soak_gpu 2>&1 | tail -3
fi

# At most 8 files come back from a lent machine: this call's logs travel as one archive
# (*.log and *.txt written since the mark; either kind may be absent).
(cd "$out" && mapfile -t logs < <(find . -maxdepth 1 -type f \( -name '*.log' -o -name '*.txt' \) -newer "$since" | sort) &&
  [ ${#logs[@]} -gt 0 ] && tar czf logs.tgz "${logs[@]}" && rm -f "${logs[@]}")
rm -f "$since"
