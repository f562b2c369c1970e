#!/usr/bin/env bash
# One call on one lent H200 (about 8 minutes): the attention kernels checked, and timed
# against an older build of the package.
#   1. builds, in parallel: this tree's package (CMake, CUDA on, sm_90a only), the kernel
#      playground and the racecheck probe (plain nvcc), and, niced, the older tree's
#      package from .ab/old.tar.gz (made by experiments/device/ab_prepare.sh; sm_90a only),
#      and so each tree of AB_EXTRA;
#   2. a smoke run of the playground (a hang there stops the sm_90a kernels for the rest),
#      then both kernel families (LVX_CUDA_SM90=1 and 0) side by side on the GPU: the
#      playground (cuda/dev/playground.cu, float64 references), tests/python/
#      test_gpu_kernels.py and test_gpu_masked_values.py in one process (MPI-marked tests
#      skip), the playground again with the persistent backward on 3 blocks
#      (LVX_CUDA_BWD_BLOCKS=3), both GPU test files under mpirun -n 2 (ranks share the GPU),
#      compute-sanitizer memcheck on the playground's small cases (head dims 64,
#      96, 128; bf16, fp16) and racecheck on the same, one process per head dim, and on
#      cuda/dev/racecheck_probe.cu (which protocols the tool models); synccheck on the
#      small cases in bf16 (the forward's named-barrier turns, the producers' barriers);
#   3. speed, the GPU alone: experiments/bench_ab.py, the public call of the older build
#      against this tree's, alternating rounds (D = 128 shapes of issue 19, D = 64 and 96,
#      three masked D = 128 shapes: 'latest5', 'prev5', 'random'; AB_SHAPES=... replaces
#      the list), with each build's kernel times per call. AB_EXTRA="LABEL=TARBALL ..."
#      (tarballs from 'ab_prepare.sh COMMIT LABEL', their sha in the .sha file beside them)
#      adds further builds to the same rounds, each timed against the older build too.
# Logs go to $OUT as one archive per phase, the A/B table as ab.csv; summary.txt (also
# printed at the end) says what passed.
# QUICK=1 (about 4 minutes): the sm_90a family only, the playground (also on 3 persistent
# backward blocks) and test_gpu_kernels.py, no masked-value tests, MPI or sanitizers; the
# A/B on AB_SHAPES (a default short list) in AB_ROUNDS rounds (default 3, QUICK 2).
# AB_ONLY=1 (builds and the A/B, about 1.5 minutes plus the rounds): no correctness run;
# for trees whose kernels a full check has passed at the same sha.
# Usage (the wheels the machine lacks in .whl/: scipy-openblas32, pytest-mpi; .ab/ from
# ab_prepare.sh; both carried):  SHA=<git sha> [QUICK=1] bash experiments/device/check_kernels.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-/tmp/lvx_out}
since=$(mktemp)  # files this call writes under $out are newer (pack below)
sha=${SHA:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}
old_tar=${AB_OLD:-$root/.ab/old.tar.gz}
old_sha=$(cat "$(dirname "$old_tar")/old.sha" 2>/dev/null || echo old)
cd "$root"
mkdir -p "$out" /tmp/ab
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/gpus.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -c "import scipy_openblas32" 2>/dev/null ||
  echo "note: scipy_openblas32 is not importable (carry .whl/ with its wheel); CMake will look for a system CBLAS"
python3 -c "import pytest_mpi" 2>/dev/null ||
  echo "note: pytest-mpi is not importable; tests/python/conftest.py skips the MPI-marked tests without it"

# ---- 1. builds ----------------------------------------------------------------------
pybind_dir=$(python3 -m pybind11 --cmakedir)
nccl_lib=$(python3 -c "import glob,site; print((sorted(glob.glob(site.getsitepackages()[0]+'/nvidia/nccl/lib/libnccl.so*')) or [''])[0])")
[ -n "$nccl_lib" ] || nccl_lib=$(ls /usr/lib/x86_64-linux-gnu/libnccl.so* 2>/dev/null | head -1)
# build_pkg NAME SOURCE_DIR JOBS LOG: CMake build in /tmp/ab/build_NAME, the package in /tmp/ab/pkg_NAME.
build_pkg() {
  local name=$1 src=$2 jobs=$3 log=$4
  timeout 330 cmake -S "$src" -B /tmp/ab/build_$name -DLVX_PYTHON=ON -DLVX_TESTS=OFF -DLVX_CUDA=ON \
    -DCMAKE_BUILD_TYPE=Release -DLVX_CUDA_ARCHS=90a -Dpybind11_DIR="$pybind_dir" ${nccl_lib:+-DNCCL_LIBRARY=$nccl_lib} \
    >"$log" 2>&1 && timeout 330 cmake --build /tmp/ab/build_$name -j"$jobs" >>"$log" 2>&1 || { echo "rc=1" >>"$log"; return 1; }
  rm -rf /tmp/ab/pkg_$name && mkdir -p /tmp/ab/pkg_$name && cp -r "$src/python/lvxattn" /tmp/ab/pkg_$name/ &&
    cp /tmp/ab/build_$name/_core*.so /tmp/ab/pkg_$name/lvxattn/ &&
    # the build's generated module (trees before the install work have none)
    { [ ! -f /tmp/ab/build_$name/_build_info.py ] || cp /tmp/ab/build_$name/_build_info.py /tmp/ab/pkg_$name/lvxattn/; } &&
    echo "rc=0" >>"$log"
}
export pybind_dir nccl_lib
build_pkg new "$root" 8 "$out/build_new.log" &
new_pid=$!
[ "${AB_ONLY:-0}" = 1 ] || (cd cuda && BUILD=/tmp/b JOBS=6 RUN=0 VARIANTS=0 timeout 330 dev/run_playground.sh >"$out/build_playground.log" 2>&1
 echo "rc=$?" >>"$out/build_playground.log"
 nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -o /tmp/b/racecheck_probe dev/racecheck_probe.cu \
   >>"$out/build_playground.log" 2>&1) &
pg_pid=$!
# build_tar NAME TARBALL: the tree of a tarball from ab_prepare.sh, extracted in
# /tmp/ab/NAME_src and built, niced, in the background (its pid in ab_pids).
ab_pids=()
build_tar() {
  local name=$1 tar=$2
  rm -rf /tmp/ab/${name}_src && mkdir -p /tmp/ab/${name}_src && tar xzf "$tar" -C /tmp/ab/${name}_src ||
    { echo "rc=1 ($tar not extracted)" >/tmp/ab/build_$name.log; return 1; }
  # Older trees name both targets in their CMakeLists; this machine needs sm_90a only.
  sed -i 's/-gencode=arch=compute_80,code=sm_80//' /tmp/ab/${name}_src/cuda/CMakeLists.txt
  nice -n 10 bash -c "$(declare -f build_pkg); build_pkg $name /tmp/ab/${name}_src 8 /tmp/ab/build_$name.log" &
  ab_pids+=($!)
}
old_ok=0
extra=()  # AB_EXTRA's builds started, as LABEL@SHA (SHA empty without a .sha file)
if [ -f "$old_tar" ]; then
  build_tar old "$old_tar"
  old_ok=1
  for item in ${AB_EXTRA:-}; do
    label=${item%%=*} tar=${item#*=}
    if [[ $item != *=* || ! $label =~ ^[A-Za-z0-9_.-]+$ || " old new ${extra[*]%%@*} " == *" $label "* ]]; then
      echo "AB_EXTRA: '$item' skipped (LABEL=TARBALL; a label of letters, digits, '_', '.', '-', not old, new or a repeat)"
    elif [ ! -f "$tar" ]; then
      echo "AB_EXTRA: no $tar: '$label' not timed"
    elif build_tar "$label" "$tar"; then
      extra+=("$label@$(cat "${tar%.tar.gz}.sha" 2>/dev/null)")
    else
      echo "AB_EXTRA: $tar not extracted: '$label' not timed"
    fi
  done
else
  echo "no $old_tar (run experiments/device/ab_prepare.sh and carry .ab): no A/B timing"
fi
wait $new_pid
stamp "package build: $(tail -1 "$out/build_new.log")"; grep -E "error" "$out/build_new.log" | head -5
wait $pg_pid
[ "${AB_ONLY:-0}" = 1 ] ||
  { stamp "playground build: $(grep -E '^rc=' "$out/build_playground.log")"; grep -E "error" "$out/build_playground.log" | head -5; }
export PYTHONPATH=/tmp/ab/pkg_new${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import lvxattn, torch; print('lvxattn', lvxattn.__version__, 'cuda', lvxattn.cuda_built(), 'torch', torch.__version__)"
pkg_ok=$?  # without the package, the playground steps still run

# Logs travel in archives, one per phase (a lent machine returns a few files only).
# This call's *.log and *.txt (written since the mark `since`) into one archive; the .log go.
pack() {
  (cd "$out" && mapfile -t f < <(find . -maxdepth 1 -type f \( -name '*.log' -o -name '*.txt' \) -newer "$since" | sort) &&
    [ ${#f[@]} -gt 0 ] && tar czf "logs_$1.tgz" "${f[@]}" && rm -f ./*.log)
}

# ---- 2. correctness, both kernel families, side by side ------------------------------
on=1
deadline=$((t0 + ${DEADLINE:-505}))  # the A/B rounds fit in what is left of it
ab_only=${AB_ONLY:-0}
if [ "$ab_only" = 1 ]; then
  echo "AB_ONLY=1: no correctness run" | tee "$out/playground_smoke.log"
  smoke=0
else
  timeout 60 /tmp/b/playground small dims=64,96,128 dtypes=bf16 >"$out/playground_smoke.log" 2>&1
  smoke=$?
fi
stamp "smoke (playground small, bf16) rc=$smoke: $(tail -1 "$out/playground_smoke.log")"
if [ $smoke = 124 ] || [ $smoke -gt 128 ]; then on=0; echo "the sm_90a kernels hung or crashed: LVX_CUDA_SM90=0 from here"; fi
san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
fams="1 0"
[ $on = 0 ] && fams=0
quick=${QUICK:-0}
if [ "$quick" = 1 ]; then
  [ $on = 1 ] && fams=1
  : "${AB_SHAPES:=1,16,16,256,32768,128,bf16;1,16,16,1024,16384,128,bf16;1,16,16,1024,65536,64,bf16;1,16,16,4096,65536,128,bf16;1,16,16,1024,65536,128,bf16,latest5}"
fi
[ "$ab_only" = 1 ] && fams=""
pids=()
for sm90 in $fams; do
  LVX_CUDA_SM90=$sm90 timeout 200 /tmp/b/playground >"$out/playground_sm90_$sm90.log" 2>&1 &
  pids+=($!)
  if [ $sm90 = 1 ]; then  # the persistent backward on 3 blocks: each walks many KV blocks
    LVX_CUDA_SM90=1 LVX_CUDA_BWD_BLOCKS=3 timeout 200 /tmp/b/playground >"$out/playground_bwd3.log" 2>&1 &
    pids+=($!)
  fi
  [ $pkg_ok = 0 ] || continue
  for t in kernels $([ "$quick" = 1 ] || echo masked_values); do
    LVX_CUDA_SM90=$sm90 timeout 330 python3 -m pytest -q -p no:cacheprovider -m gpu -rf "tests/python/test_gpu_$t.py" \
      >"$out/test_gpu_${t}_sm90_$sm90.log" 2>&1 &
    pids+=($!)
  done
done
# The distributed GPU tests on 2 ranks sharing the GPU (host-staged MPI), the device-type
# mismatch included (it crashed in the planner's message on this machine's build).
if [ $pkg_ok = 0 ] && [ "$quick" != 1 ] && [ "$ab_only" != 1 ]; then
  timeout 330 mpirun --allow-run-as-root --oversubscribe --bind-to none -n 2 -x PYTHONPATH -x NCCL_NVLS_ENABLE \
    python3 -m pytest -q -p no:cacheprovider --with-mpi -m "mpi and gpu" -rf tests/python/test_gpu_distributed.py \
    tests/python/test_gpu_masked_values.py \
    >"$out/test_gpu_distributed_n2.log" 2>&1 &
  pids+=($!)
fi
if [ "$quick" = 1 ] || [ "$ab_only" = 1 ]; then
  echo "QUICK=1 or AB_ONLY=1: no sanitizers" | tee "$out/sanitizer_memcheck.log"
elif [ -n "$san" ]; then
  LVX_CUDA_SM90=$on LVX_CUDA_BWD_BLOCKS=2 timeout 220 "$san" --tool memcheck /tmp/b/playground small dims=64,96,128 dtypes=bf16,f16 \
    >"$out/sanitizer_memcheck.log" 2>&1 &
  pids+=($!)
  for d in 64 96 128; do
    LVX_CUDA_SM90=$on timeout 220 "$san" --tool racecheck --print-limit 400 /tmp/b/playground small dims=$d dtypes=bf16,f16 \
      >"$out/sanitizer_racecheck_d$d.log" 2>&1 &
    pids+=($!)
  done
  timeout 120 "$san" --tool racecheck --print-limit 400 /tmp/b/racecheck_probe >"$out/sanitizer_racecheck_probe.log" 2>&1 &
  pids+=($!)
  LVX_CUDA_SM90=$on LVX_CUDA_BWD_BLOCKS=2 timeout 220 "$san" --tool synccheck /tmp/b/playground small dims=64,96,128 dtypes=bf16 \
    >"$out/sanitizer_synccheck.log" 2>&1 &
  pids+=($!)
else
  echo "no compute-sanitizer found" | tee "$out/sanitizer_memcheck.log"
fi
[ ${#pids[@]} = 0 ] || wait "${pids[@]}"
stamp "correctness done"
summary() {
  echo "==== summary (sha $sha; first family LVX_CUDA_SM90=$on)"
  if [ "$ab_only" = 1 ]; then echo "AB_ONLY=1: no correctness run"; return; fi
  echo "smoke: rc=$smoke $(tail -1 "$out/playground_smoke.log")"
  for sm90 in $fams; do
    echo "playground LVX_CUDA_SM90=$sm90: $(tail -1 "$out/playground_sm90_$sm90.log")"
    grep -E -A1 "FAIL$" "$out/playground_sm90_$sm90.log" | head -12
    [ $sm90 = 1 ] && echo "playground LVX_CUDA_BWD_BLOCKS=3: $(tail -1 "$out/playground_bwd3.log")" &&
      grep -E -A1 "FAIL$" "$out/playground_bwd3.log" | head -12
    for t in kernels $([ "$quick" = 1 ] || echo masked_values); do
      f=$out/test_gpu_${t}_sm90_$sm90.log
      echo "pytest $t LVX_CUDA_SM90=$sm90: $(grep -E "passed|failed|error" "$f" 2>/dev/null | tail -1)"
      grep -E "^FAILED" "$f" 2>/dev/null | head -6
    done
  done
  if [ "$quick" = 1 ]; then echo "QUICK=1: no masked-value tests, MPI tests or sanitizers"; return; fi
  f=$out/test_gpu_distributed_n2.log
  echo "pytest gpu_distributed + masked_values n=2: $(grep -aE "passed|failed|error" "$f" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | sort | uniq -c | head -2 | tr '\n' ' ')"
  grep -aE "^FAILED|Segmentation" "$f" 2>/dev/null | head -6
  echo "memcheck: $(grep -E "ERROR SUMMARY" "$out/sanitizer_memcheck.log" 2>/dev/null | tail -1) / $(tail -1 "$out/sanitizer_memcheck.log" 2>/dev/null)"
  for d in 64 96 128; do
    f=$out/sanitizer_racecheck_d$d.log
    echo "racecheck D=$d: $(grep -E "RACECHECK SUMMARY" "$f" 2>/dev/null | tail -1) / $(tail -1 "$f" 2>/dev/null)"
    # reports by kind and kernel (of the first access named)
    grep -E "^========= (Error|Warning): Race" "$f" 2>/dev/null |
      sed -E 's/^========= (Error|Warning): Race reported between (Read|Write) access at (void )?/\1 /; s/\+0x[0-9a-f]+$//; s/\((lvx::cuda::[A-Za-z]+Params|const int).*//' |
      sort | uniq -c | head -8
  done
  echo "synccheck: $(grep -E "ERROR SUMMARY" "$out/sanitizer_synccheck.log" 2>/dev/null | tail -1) / $(tail -1 "$out/sanitizer_synccheck.log" 2>/dev/null)"
  f=$out/sanitizer_racecheck_probe.log
  echo "racecheck probe: $(grep -E "RACECHECK SUMMARY" "$f" 2>/dev/null | tail -1)"
  for k in plain tma expect_tx named_bar lane0_only no_wait; do
    echo "  probe_$k: $(grep -cE "^========= (Error|Warning): Race reported .*probe_$k\b" "$f" 2>/dev/null) reports; $(grep -E "^probe_$k " "$f" 2>/dev/null)"
  done
}
summary >"$out/summary.txt"
cat "$out/summary.txt"
pack check

# ---- 3. speed: the older build against this tree, the GPU alone ----------------------
if [ $old_ok = 1 ]; then
  wait "${ab_pids[@]}"
  builds=()  # bench_ab.py's --build arguments, one per AB_EXTRA build that built
  for item in "old@$old_sha" "${extra[@]}"; do
    label=${item%%@*} tree_sha=${item#*@}
    cp /tmp/ab/build_$label.log "$out/"
    [ $label = old ] && what="older package" || what="package $label"
    stamp "$what build (${tree_sha:-unknown sha}): $(tail -1 "$out/build_$label.log")"; grep -E "error" "$out/build_$label.log" | head -5
    if [ $label != old ] && grep -q "^rc=0" "$out/build_$label.log"; then
      builds+=(--build "$label=/tmp/ab/pkg_$label${tree_sha:+@$tree_sha}")
    fi
  done
  nb=$((2 + ${#builds[@]} / 2))
  left=$((deadline - $(date +%s)))
  [ $left -lt 60 ] && echo "no time left for the A/B bench ($left s to the deadline)"
  if [ $pkg_ok = 0 ] && [ $left -ge 60 ] && grep -q "^rc=0" "$out/build_old.log"; then
    stamp "A/B bench: up to 3 rounds in $left s"
    # PYTHONPATH without this tree's package: each worker puts its own build first.
    PYTHONPATH=/tmp/site LVX_CUDA_SM90=$on timeout $((left + 30)) python3 experiments/bench_ab.py \
      --a "old=/tmp/ab/pkg_old" --b "new=/tmp/ab/pkg_new" --sha-a "$old_sha" --sha-b "$sha" --rounds ${AB_ROUNDS:-$([ "$quick" = 1 ] && echo 2 || echo 3)} \
      "${builds[@]}" --budget-s $((left - 5)) --worker-timeout $((left / nb)) --reps-ms 100 \
      ${AB_SHAPES:+--shapes "$AB_SHAPES"} --out "$out/ab.csv" >"$out/bench_ab.log" 2>&1
    stamp "A/B bench rc=$?"
    grep -vE "^round " "$out/bench_ab.log" | head -$((15 * nb + 30))
  fi
fi
pack bench
stamp "done"
