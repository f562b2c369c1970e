"""A GPU timeline of distributed cross-attention calls, per rank (torch.profiler, CUPTI).

    mpirun -n 2 python experiments/device/profile_dist.py --shape 1024x131072x16x16x128:fp16 \\
        --algorithm lvx --transport mpi-direct,nccl --out $OUT

For each transport: warm-up calls, --timed calls timed as bench_dist.py times them
(barrier and device sync before the forward and before the backward), then --iters such
calls under the profiler. Each rank writes its Chrome trace
(``trace_<transport>_r<rank>.json.gz``: chrome://tracing or Perfetto) and prints, per
profiled forward and backward, the host time, the GPU busy time (union of kernels and
copies on every stream), the idle gaps longer than --gap-us with the operations on
either side, and the time per kernel name. Used to find
where a transport loses time against another (the planner's choice is printed too).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from collections import defaultdict

import torch
from mpi4py import MPI

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import lvxattn  # noqa: E402
from bench_dist import make_inputs, parse_shape  # noqa: E402
from lvxattn.devices import pick_device  # noqa: E402


def gpu_events(trace):
    """(start_us, end_us, name, category) of the device's kernels, copies and memsets."""
    out = []
    for ev in trace.get("traceEvents", []):
        cat = str(ev.get("cat", "")).lower()
        if ev.get("ph") == "X" and cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            out.append((float(ev["ts"]), float(ev["ts"]) + float(ev.get("dur", 0)), ev.get("name", "?"), cat))
    return sorted(out)


def marks(trace):
    """(start_us, end_us, name) of the host ranges this script opened (fwd<i>, bwd<i>)."""
    out = []
    for ev in trace.get("traceEvents", []):
        name = str(ev.get("name", ""))
        if ev.get("ph") == "X" and ev.get("cat") == "user_annotation" and name[:3] in ("fwd", "bwd") \
                and name[3:].isdigit():
            out.append((float(ev["ts"]), float(ev["ts"]) + float(ev.get("dur", 0)), name))
    return sorted(out)


def summarize(trace, gap_us, rank, label):
    """Per range: host time, GPU busy time and the GPU's idle gaps from the range's start
    to its last device operation, with the operations on either side of each gap."""
    evs = gpu_events(trace)
    lines = []
    for t0, t1, name in marks(trace):
        inside = [e for e in evs if e[0] >= t0 and e[0] < t1]
        if not inside:
            continue
        busy, gaps, cur_s, cur_e, prev = 0.0, [], None, None, None
        for s, e, n, c in inside:
            if cur_e is None or s > cur_e:
                if cur_e is not None:
                    busy += cur_e - cur_s
                    if s - cur_e > gap_us:
                        gaps.append((s - cur_e, prev, n))
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
            prev = n
        busy += cur_e - cur_s
        per = defaultdict(float)
        for s, e, n, c in inside:
            per[(c, n[:70])] += e - s
        lines.append(f"rank {rank} {label} {name}: host {t1 - t0:.0f} us, first device op at +{inside[0][0] - t0:.0f} us, "
                     f"last ends at +{cur_e - t0:.0f} us, busy {busy:.0f} us, {len(gaps)} gaps > {gap_us:.0f} us "
                     f"totalling {sum(g[0] for g in gaps):.0f} us")
        for g, a, b in gaps:
            lines.append(f"    gap {g:7.0f} us after {a[:60]!r} before {b[:60]!r}")
        for (c, n), d in sorted(per.items(), key=lambda kv: -kv[1])[:8]:
            lines.append(f"    {d:8.0f} us  {c:10s} {n}")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1024x131072x16x16x128:fp16", help="LqxLkvxHqxHkvxD:dtype (global)")
    ap.add_argument("--algorithm", default="lvx")
    ap.add_argument("--transport", default="mpi-direct,nccl", help="comma-separated")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--timed", type=int, default=10, help="unprofiled calls timed before the profiled ones")
    ap.add_argument("--iters", type=int, default=3, help="profiled calls")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: to try the script")
    ap.add_argument("--gap-us", type=float, default=15.0)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    device = pick_device(args.device, comm)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    shape = parse_shape(args.shape)
    os.makedirs(args.out, exist_ok=True)
    for transport in args.transport.split(","):
        q, k, v, do = make_inputs(device, shape, comm.size, comm.rank)

        def step(i, timed, ms):
            """One forward and one backward as bench_dist times them (barrier and device
            sync before each), under record_function ranges fwd<i> and bwd<i>."""
            q.grad = k.grad = v.grad = None
            comm.Barrier()
            sync()
            t0 = time.perf_counter()
            with torch.profiler.record_function(f"fwd{i}"):
                o = lvxattn.cross_attention(q, k, v, comm=comm, algorithm=args.algorithm, transport=transport)
                sync()
            t1 = time.perf_counter()
            comm.Barrier()
            sync()
            t2 = time.perf_counter()
            with torch.profiler.record_function(f"bwd{i}"):
                o.backward(do)
                sync()
            t3 = time.perf_counter()
            if timed:
                ms.append((1e3 * (t1 - t0), 1e3 * (t3 - t2)))

        ms = []
        try:
            for i in range(args.warmup + args.timed):
                step(i, i >= args.warmup, ms)
        except (RuntimeError, ValueError) as e:
            if comm.rank == 0:
                print(f"{transport}: skipped ({e})", flush=True)
            continue
        st = lvxattn.last_stats()
        worst = comm.allreduce(ms, op=MPI.SUM)  # every rank's list, concatenated
        if comm.rank == 0:
            f = sorted(m[0] for m in worst)
            b = sorted(m[1] for m in worst)
            print(f"{transport}: {args.timed} timed calls unprofiled, every rank: forward median {f[len(f) // 2]:.3f} ms "
                  f"(min {f[0]:.3f}), backward median {b[len(b) // 2]:.3f} ms (min {b[0]:.3f})", flush=True)
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:
            for i in range(args.iters):
                step(i, False, ms)
        path = os.path.join(args.out, f"trace_{transport}_r{comm.rank}.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
        with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
            g.write(f.read())
        os.remove(path)
        lines = [f"rank {comm.rank} {transport}: path {st.get('path')}, form {st.get('lvx_form')}"] + summarize(trace, args.gap_us, comm.rank, transport)
        for r in range(comm.size):
            if r == comm.rank:
                print("\n".join(lines), flush=True)
            comm.Barrier()


if __name__ == "__main__":
    main()
