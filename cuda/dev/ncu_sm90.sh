#!/usr/bin/env bash
# Stall reasons, pipe use and memory traffic of the sm_90a kernels (one launch each, per
# shape), and their SASS. Logs go to $OUT.
# Usage: [KERNELS="attend_fwd_sm90 attend_bwd_sm90"] [SHAPES="B,Hq,Hkv,Lq,Lkv,D,dtype;..."] [PUBLIC=1]
#        [SOURCE=1] [SDPA=1] [SECTIONS="ComputeWorkloadAnalysis ..."] [PY=python3] cuda/dev/ncu_sm90.sh
# By default the step kernels run through the dev shim (fp32 dK/dV read and written back:
# a middle ring step); PUBLIC=1 profiles the installed package's public call instead (one
# step: dK/dV written once, in the storage dtype), with the Python PY. SOURCE=1 takes
# warp-state samples per SASS instruction instead of the counters: the per-instruction
# CSV (gzipped) and its summary by cuda/dev/ncu_source_summary.py. SDPA=1 runs torch SDPA's
# cuDNN backend beside ours, so that KERNELS can name its kernels too (e.g. flash_bprop,
# flash_fprop: the same counters for cuDNN's kernels on the same shape). SECTIONS: Nsight
# Compute sections printed beside the counters (ComputeWorkloadAnalysis: the pipes' use,
# MUFU's among them as XU).
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/lvx_out}
cd "$(dirname "$0")/../.."
lib=()
if [ "${PUBLIC:-0}" != 1 ]; then
  (cd cuda && BUILD=/tmp/b JOBS=16 RUN=0 VARIANTS=0 dev/run_playground.sh >/dev/null 2>&1) || echo build failed
  lib=(--lib /tmp/b/liblvx_cuda_dev.so)
fi
# Tensor pipe, issue, L2 (incl. the dQ reduce-adds: lts red sectors), DRAM; stall reasons.
metrics="gpu__time_duration.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"
metrics="$metrics,sm__inst_executed.avg.per_cycle_active,lts__t_sectors_op_red.sum,lts__t_sectors_op_read.sum"
metrics="$metrics,lts__t_sectors_op_write.sum,lts__throughput.avg.pct_of_peak_sustained_elapsed"
metrics="$metrics,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,dram__bytes_write.sum"
metrics="$metrics,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
py=${PY:-python3}
sdpa=(--no-sdpa)
[ "${SDPA:-0}" = 1 ] && sdpa=(--no-flash)
sections=()
for sec in ${SECTIONS:-}; do sections+=(--section "$sec"); done
IFS=';' read -r -a shapes <<<"${SHAPES:-1,16,16,1024,16384,128,bf16}"
for k in ${KERNELS:-attend_fwd_sm90 attend_bwd_sm90}; do
  for s in "${shapes[@]}"; do
    tag="${k}_$(echo "$s" | tr ',' '_')${PUBLIC:+_public}"
    if [ "${SOURCE:-0}" = 1 ]; then
      timeout 240 ncu --section SourceCounters --section WarpStateStats --import-source no -k regex:$k \
        --launch-skip 3 --launch-count 1 -f -o "/tmp/ncu_src_$tag" "$py" experiments/bench_gpu_kernels.py \
        "${lib[@]}" --out /tmp/x.csv --reps-ms 5 --shapes "$s" "${sdpa[@]}" >"$out/ncu_src_$tag.log" 2>&1
      echo "== $k $s (warp-state samples) rc=$?"
      ncu --import "/tmp/ncu_src_$tag.ncu-rep" --page source --csv --print-source sass >"$out/ncu_source_$tag.csv" \
        2>>"$out/ncu_src_$tag.log"
      "$py" cuda/dev/ncu_source_summary.py "$out/ncu_source_$tag.csv" >"$out/ncu_source_$tag.txt" 2>&1
      head -75 "$out/ncu_source_$tag.txt"
      gzip -f "$out/ncu_source_$tag.csv"
      continue
    fi
    f="$out/ncu_$tag.txt"
    timeout 200 ncu --metrics "$metrics" "${sections[@]}" -k regex:$k --launch-skip 3 --launch-count 1 "$py" \
      experiments/bench_gpu_kernels.py "${lib[@]}" --out /tmp/x.csv --reps-ms 5 --shapes "$s" "${sdpa[@]}" >"$f" 2>&1
    echo "== $k $s"
    grep -E "duration|hmma|inst_executed|lts__|dram__" "$f" | awk '{print "  ", $1, $(NF-1), $NF}'
    # the sections' tables (pipe use and the like): their lines of "name unit value"
    [ ${#sections[@]} -gt 0 ] && grep -E "^ +[A-Z][A-Za-z0-9 ./()-]+ +[a-z%/]* +[0-9.,]+$" "$f" | grep -v -E "^ +(gpu__|sm__|lts__|dram__)" | sed 's/^ */   /'
    grep -E "stalled" "$f" | awk '$NF+0 > 0.1 {print "  ", $1, $NF}' | sort -k2 -g -r | head -8
  done
done
