#!/usr/bin/env bash
# Stall reasons and throughputs of the sm_90a kernels (one launch each, first bench
# shape), and their SASS. Logs go to $OUT. Usage: cuda/dev/ncu_sm90.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/lvx_out}
cd "$(dirname "$0")/../.."
(cd cuda && BUILD=/tmp/b JOBS=16 RUN=0 VARIANTS=0 dev/run_playground.sh >/dev/null 2>&1) || echo build failed
for o in fwd bwd; do cuobjdump -sass /tmp/b/${o}_bf16_d128_cu.o > "$out/sass_$o.txt" 2>&1; done
for k in ${KERNELS:-attend_fwd_sm90 attend_bwd_sm90}; do
  timeout 200 ncu --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,regex:sm__inst_executed_pipe_.*\.avg\.pct_of_peak_sustained_active" \
    -k regex:$k --launch-skip 3 --launch-count 1 python3 experiments/bench_gpu_kernels.py \
    --lib /tmp/b/liblvx_cuda_dev.so --out /tmp/x.csv --reps 2 --no-sdpa >"$out/ncu_$k.txt" 2>&1
  echo "== $k"; grep -E "Duration|stalled|pipe_.*pct" "$out/ncu_$k.txt" | awk '$NF+0 > 0.05' | sort -k3 -g -r | head -40
done
