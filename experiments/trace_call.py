"""Where the wall time of one forward+backward goes beyond its kernels: a torch.profiler trace
(CPU and CUDA) of the public call ``lvxattn.cross_attention`` and of SDPA (cuDNN), timed as
``bench_gpu_kernels.py`` times them (an L2 flush before each call, as triton's ``do_bench``
does), with per call: the GPU span from the first to the last GPU activity, the kernels' busy
time, the idle gaps in between (and the host's runtime call at each gap's start), and the CUDA
runtime calls by name (count and host time), to find host synchronizations, allocations and
launch gaps; and the GPU's mean SM clock and power over the traced calls (gpu_state.py), to
compare the two at known clocks.

Usage (one GPU)::

    python experiments/trace_call.py --shapes "1,16,16,8192,32768,128,fp16;1,16,16,4096,65536,128,bf16" \
        --out /tmp/traces

Shapes are ``B,Hq,Hkv,Lq,Lkv,D,dtype`` as in ``bench_gpu_kernels.py``. Prints one block per
shape and implementation; with ``--out``, writes the Chrome traces (gzip) there. Times are
microseconds of the profiler's clock (host and device activities on one time base, per the
Kineto trace format).
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import sys
import tempfile

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gpu_kernels import make_inputs, parse_shapes, public_closures, sdpa_closures  # noqa: E402
from gpu_state import GpuState, describe  # noqa: E402

GPU_CATS = ("kernel", "gpu_memset", "gpu_memcpy")


def trace(fn, calls: int, flush: torch.Tensor):
    """Chrome-trace events of `calls` calls of fn, each after an L2 flush and marked by a
    'call' range, and what the GPU ran at meanwhile (gpu_state.GpuState.summary())."""
    from torch.profiler import ProfilerActivity, profile, record_function
    for _ in range(3):
        flush.zero_()
        fn()
    torch.cuda.synchronize()
    with GpuState(period_s=0.005) as gpu, profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            flush.zero_()
            with record_function("call"):
                fn()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    prof.export_chrome_trace(path)
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    os.unlink(path)
    return events, gpu.summary()


def summarize(events, label: str, state: dict):
    calls = sorted((e for e in events if e.get("name") == "call" and e.get("cat") == "user_annotation"),
                   key=lambda e: e["ts"])
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATS), key=lambda e: e["ts"])
    runtime = [e for e in events if e.get("cat") == "cuda_runtime" or e.get("cat") == "cuda_driver"]
    # A GPU activity belongs to the call whose host range launched it (correlation id → the
    # runtime call's time stamp).
    launch_ts = {e["args"].get("correlation"): e["ts"] for e in runtime if "args" in e}
    lines = []
    for i, c in enumerate(calls):
        c0, c1 = c["ts"], c["ts"] + c["dur"]
        mine = [g for g in gpu if c0 <= launch_ts.get(g.get("args", {}).get("correlation"), -1) <= c1]
        if not mine:
            continue
        span0, span1 = mine[0]["ts"], max(g["ts"] + g["dur"] for g in mine)
        busy = sum(g["dur"] for g in mine)
        gaps = []
        end = mine[0]["ts"] + mine[0]["dur"]
        for g in mine[1:]:
            if g["ts"] - end > 5:
                host = [r for r in runtime if c0 <= r["ts"] <= g["ts"] and r["ts"] + r["dur"] >= end]
                gaps.append((g["ts"] - end, g["name"][:40], ",".join(sorted({r["name"] for r in host}))[:60]))
            end = max(end, g["ts"] + g["dur"])
        rt = collections.Counter()
        rt_us = collections.Counter()
        for r in runtime:
            if c0 <= r["ts"] <= c1:
                rt[r["name"]] += 1
                rt_us[r["name"]] += r["dur"]
        lines.append(f"  call {i}: host {c1 - c0:9.1f} us; GPU span {span1 - span0:9.1f} us, busy {busy:9.1f} us, "
                     f"{len(mine)} activities; idle {span1 - span0 - busy:8.1f} us")
        for dur, name, host in sorted(gaps, reverse=True)[:4]:
            lines.append(f"      gap {dur:8.1f} us before {name} (host in: {host or '-'})")
        if i == len(calls) - 1:
            lines.append("    runtime calls of this call (count, host us): " +
                         "; ".join(f"{n} {rt[n]} {rt_us[n]:.0f}" for n in sorted(rt, key=lambda n: -rt_us[n])[:8]))
    print(f"{label} [{describe(state) or 'GPU state not measured'}]\n" + "\n".join(lines), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", required=True, help="'B,Hq,Hkv,Lq,Lkv,D,dtype;...'")
    ap.add_argument("--calls", type=int, default=3, help="calls traced per shape and implementation")
    ap.add_argument("--out", help="folder for the Chrome traces (gzip)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("trace_call.py needs a CUDA GPU", file=sys.stderr)
        return 2
    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")  # as do_bench
    for shape in parse_shapes(args.shapes):
        text = ",".join(map(str, shape))
        q, k, v, dout, scale = make_inputs(shape)
        impls = {"ours": public_closures(q, k, v, dout, scale)[1],
                 "cudnn": sdpa_closures(q, k, v, dout, scale, SDPBackend.CUDNN_ATTENTION)[1]}
        for name, fn in impls.items():
            events, state = trace(fn, args.calls, flush)
            summarize(events, f"{text} {name} forward+backward", state)
            if args.out:
                os.makedirs(args.out, exist_ok=True)
                tag = text.replace(",", "_")
                with gzip.open(os.path.join(args.out, f"trace_{tag}_{name}.json.gz"), "wt") as f:
                    json.dump({"traceEvents": events}, f)
        del q, k, v, dout
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
