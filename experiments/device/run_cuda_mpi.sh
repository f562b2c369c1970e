#!/usr/bin/env bash
# One call on a lent GPU machine (ranks share its GPU when only one is lent): a CUDA-aware
# MPI from the wheels in .whl/ (tools/cuda_aware_mpi.sh: Open MPI 5, UCX with CUDA
# transports, mpi4py, pytest-mpi), lvxattn built against it with CUDA on, then
#   sanity    a ring of 64 MiB CUDA buffers through mpi4py (data checked, GB/s), the MPI and
#             UCX libraries each rank loaded, lvxattn's detection and probe (P = 2, 3);
#   direct    the GPU test matrix over mpi-direct, the mixed-awareness test and the probe
#             test (tests/python/test_gpu_distributed.py) at P = 2 and 3;
#   staged    the host-staged (mpi-staged) cases and the other GPU tests at P = 2;
#   choice    the CPU tests of the transport choice (test_transport_choice.py) at P = 3;
#   bench     lvx and ring forward+backward on the five shapes of the 4-GPU table over
#             mpi-direct and mpi-staged at P = 2 (NCCL where ranks have their own GPUs);
#   devtype   ranks on different device types (one on the CPU, the others on the GPU) in a
#             fresh process, then the mixed-awareness and probe tests, at P = 2 and 3, with
#             UCX's native backtrace on a fatal signal;
#   profile   a GPU timeline (experiments/trace_dist.py) of lvx forward+backward at
#             P = 2 for PROFILE_SHAPES over mpi-direct and NCCL, with the transport's job
#             trace (LVX_TRANSPORT_TRACE=1): where mpi-direct loses time against NCCL.
# STEPS=quick (about 3 minutes with the set-up): "devtype staged choice", a re-check of the
# device-type, mixed-awareness, staged and transport-choice tests. The set-up always runs
# (a fresh machine has no build). Where the sanity ring found that MPI cannot move CUDA
# buffers, the direct step and the mpi-direct benchmark rows are left out (they cannot pass).
# Every step has a time limit and the whole a deadline (BUDGET_S, default 540 s); a failing
# step does not stop the next. Logs and CSVs go to $OUT (logs as one archive: at most 8
# files come back). Usage (from the repository root; .whl/ holds the wheels):
#   experiments/device/run_cuda_mpi.sh                 # STEPS="sanity direct staged choice bench"
#   STEPS=quick experiments/device/run_cuda_mpi.sh     # the re-check (BUDGET_S=240 is enough)
# Settings: OUT, STEPS, BUDGET_S, SHAPES, ALGORITHMS, REPEATS, WARMUP, PROFILE_SHAPES, WHEELS (.whl), PY (python3), GIT_SHA,
# CUDAMPI_PREFIX, BUILD_DIR, CMAKE_ARGS (passed to the build), MPIRUN_EXTRA (more mpirun flags).
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-/tmp/lvx_cudampi_out}
steps=${STEPS:-sanity direct staged choice bench}
[ "$steps" = quick ] && steps="devtype staged choice"
prefix=${CUDAMPI_PREFIX:-/tmp/cudampi}
build=${BUILD_DIR:-/tmp/lvx_cudampi_build}
pkg=/tmp/lvx_cudampi_pkg
wheels=${WHEELS:-.whl}
py=${PY:-python3}
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))
cd "$root"
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
export LVX_GIT_SHA=${GIT_SHA:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}

# step NAME LIMIT_S CMD...: runs CMD with its output in NAME.log, within LIMIT_S and what is
# left before the deadline (20 s kept for the archive); prints its exit status and time.
step() {
  local name=$1 limit=$2 left start rc
  shift 2
  left=$(( deadline - $(date +%s) - 20 ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then say "step $name: skipped (deadline)"; return 99; fi
  start=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  say "step $name: rc=$rc in $(( $(date +%s) - start )) s (limit $limit s)"
  return $rc
}
# The pytest counts of a log ("12 passed, 3 skipped"), once per run (rank 0's line).
counts() {
  grep -aE "[0-9]+ (passed|failed|error|skipped)" "$out/$1.log" | sed 's/\x1b\[[0-9;]*m//g; s/ in [0-9.]*s.*//' | sort | uniq -c |
    sed 's/^ *\([0-9]*\) /  ranks: \1, /' | head -3 | tee -a "$summary"
}

say "== $(date -u +%FT%TZ) git $LVX_GIT_SHA on $(hostname)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee -a "$summary"
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
say "python $($py -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)')"
say "nvcc: $(nvcc --version | tail -1); system mpirun: $(command -v mpirun || echo none)"

# ---- the MPI and the build (the build is 1-2 min at -j16) ---------------------------------
step setup 300 bash tools/cuda_aware_mpi.sh --prefix "$prefix" --wheels "$wheels" --python "$py" --with-tests \
  --build "$build" --jobs 16
grep -aE "^  (mpirun|mpicc|UCX|mpi4py|built)|lvxattn: (CUDA|NCCL)" "$out/setup.log" | tee -a "$summary"
if [ ! -f "$prefix/env.sh" ] || ! ls "$build"/_core*.so >/dev/null 2>&1; then
  say "setup failed: see setup.log"; tail -30 "$out/setup.log"
else
  # shellcheck disable=SC1091
  source "$prefix/env.sh"
  rm -rf "$pkg" && mkdir -p "$pkg" && cp -r python/lvxattn "$pkg/" && cp "$build"/_core*.so "$build"/_build_info.py "$pkg/lvxattn/"
  export PYTHONPATH=$pkg:$PYTHONPATH
  say "lvxattn: $($py -c 'import lvxattn; print(lvxattn.__file__, lvxattn.available_transports())')"
  say "_core links: $(ldd "$build"/_core*.so | grep -E 'libmpi|libucp' | tr -s ' \t' ' ' | tr '\n' ';')"
  MPIRUN="$LVX_MPIRUN --oversubscribe --bind-to none -x NCCL_NVLS_ENABLE -x PYTHONUNBUFFERED -x LVX_GIT_SHA ${MPIRUN_EXTRA:-}"
  PYTEST="$py -m pytest -q -rsfE -p no:cacheprovider -o faulthandler_timeout=90 --with-mpi"
  GPU_TESTS=tests/python/test_gpu_distributed.py

  if [[ " $steps " == *" sanity "* ]]; then
    for n in 2 3; do
      step sanity_n$n 60 $MPIRUN -n $n $py experiments/device/mpi_ring_check.py
      grep -aE "^rank|^  |SANITY|lvxattn transport" "$out/sanity_n$n.log" | head -24 | tee -a "$summary"
    done
    # Where the ring moved intact data but lvxattn found no evidence, the matrix still tests
    # the direct path, with the variable (and the summary says so).
    if grep -aq "SANITY access=none data_ok=1" "$out/sanity_n2.log" 2>/dev/null; then
      say "DETECTION MISSED: MPI moved CUDA buffers but lvxattn found no evidence; LVX_MPI_CUDA_AWARE=1 from here"
      export LVX_MPI_CUDA_AWARE=1
      MPIRUN="$MPIRUN -x LVX_MPI_CUDA_AWARE"
    fi
    if ! grep -aq "SANITY .*data_ok=1" "$out/sanity_n2.log" 2>/dev/null; then
      say "NO CUDA-AWARE MPI: the ring of CUDA buffers failed; the direct step and mpi-direct rows are left out"
      steps=${steps// direct/}
      steps=${steps//direct /}
      direct_ok=0
    fi
  fi

  if [[ " $steps " == *" devtype "* ]]; then
    # First in a fresh process (nothing ran before it), then after the probe and the mixed cases.
    for n in 2 3; do
      step devtype_n$n 90 $MPIRUN -n $n -x UCX_HANDLE_ERRORS=bt $PYTEST -m "mpi and gpu" $GPU_TESTS -k "different_device_types"
      counts devtype_n$n
      step mixed_n$n 90 $MPIRUN -n $n -x UCX_HANDLE_ERRORS=bt $PYTEST -m "mpi and gpu" $GPU_TESTS -k "probe or mixed or different_device_types"
      counts mixed_n$n
      grep -aE "^(FAILED|ERROR)|Caught signal|Segmentation" "$out/devtype_n$n.log" "$out/mixed_n$n.log" | sort -u | head -8 | tee -a "$summary"
    done
  fi

  if [[ " $steps " == *" direct "* ]]; then
    for n in 2 3; do
      step direct_n$n 130 $MPIRUN -n $n $PYTEST -m "mpi and gpu" $GPU_TESTS -k "mpi-direct or mixed or probe"
      counts direct_n$n
      grep -aE "^(FAILED|ERROR)|^SKIPPED.*(MPI does not|no evidence)" "$out/direct_n$n.log" | sort -u | head -8 | tee -a "$summary"
    done
  fi

  if [[ " $steps " == *" staged "* ]]; then
    step staged_n2 100 $MPIRUN -n 2 -x UCX_HANDLE_ERRORS=bt $PYTEST -m "mpi and gpu" $GPU_TESTS -k "not mpi-direct and not mixed and not probe"
    counts staged_n2
    grep -aE "^(FAILED|ERROR)|Caught signal|Segmentation" "$out/staged_n2.log" | sort -u | head -8 | tee -a "$summary"
  fi

  if [[ " $steps " == *" choice "* ]]; then
    step choice_n3 60 $MPIRUN -n 3 $PYTEST -m mpi tests/python/test_transport_choice.py
    counts choice_n3
    grep -aE "^(FAILED|ERROR)" "$out/choice_n3.log" | sort -u | head -8 | tee -a "$summary"
  fi

  if [[ " $steps " == *" profile "* ]]; then
    for shape in ${PROFILE_SHAPES:-1024x131072x16x16x128:fp16}; do
      step "profile_${shape%%:*}" 120 $MPIRUN -n 2 -x LVX_TRANSPORT_TRACE=1 $py experiments/trace_dist.py \
        --shape "$shape" --transport mpi-direct,nccl --timed 10 --out "$out/profile_${shape%%:*}"
      grep -av "^lvx-trace" "$out/profile_${shape%%:*}.log" | head -120 | tee -a "$summary"
      grep -a "^lvx-trace" "$out/profile_${shape%%:*}.log" | tail -16 | tee -a "$summary"
      (cd "$out" && tar czf "profile_${shape%%:*}.tgz" "profile_${shape%%:*}" && rm -rf "profile_${shape%%:*}")
    done
  fi

  if [[ " $steps " == *" bench "* ]]; then
    # The 4-GPU table's five shapes (global sizes), the target's first; P = 2 on one GPU holds them.
    SHAPES=${SHAPES:-4096x65536x16x16x128:fp16,1024x131072x16x16x128:fp16,8192x32768x16x16x128:fp16,2048x262144x16x16x128:fp16,2048x131072x32x8x128:bf16}
    transports=mpi-direct,mpi-staged
    [ "${direct_ok:-1}" = 0 ] && transports=mpi-staged
    [ "$NGPU" -ge 2 ] && transports=$transports,nccl
    step bench_n2 200 $MPIRUN -n 2 $py experiments/bench_dist.py --device cuda --shapes "$SHAPES" \
      --algorithms ${ALGORITHMS:-lvx,ring} --transport $transports --repeats ${REPEATS:-5} --warmup ${WARMUP:-2} \
      --csv "$out/dist_gpu_cudampi.csv" --tag "P=2 cudampi $NGPU GPU"
    sed -n '/^NVIDIA\|^P /,$p' "$out/bench_n2.log" | tail -32 | tee -a "$summary"
    if [ "$NGPU" -ge 3 ] && [ $(( deadline - $(date +%s) )) -gt 120 ]; then
      step bench_n$NGPU 150 $MPIRUN -n $NGPU $py experiments/bench_dist.py --device cuda \
        --shapes "${SHAPES%%,*}" --algorithms lvx,ring --transport $transports --repeats 5 \
        --csv "$out/dist_gpu_cudampi.csv" --tag "P=$NGPU cudampi"
      tail -12 "$out/bench_n$NGPU.log" | tee -a "$summary"
    fi
  fi
fi

# MPI's version string ends in a NUL byte, which would make the summary a binary file.
tr -d '\000' <"$summary" >"$summary.tmp" && mv "$summary.tmp" "$summary"
# At most 8 files come back from a lent machine: the logs travel as one archive.
(cd "$out" && tar czf logs.tgz ./*.log && rm -f ./*.log)
say "== done at $(date -u +%T); files: $(ls "$out" | tr '\n' ' ')"
