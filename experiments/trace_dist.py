"""Where a distributed forward+backward spends its GPU time: a torch.profiler (CUPTI)
trace of a few calls per transport, reduced per rank to kernel time by kind, idle gaps
(per stream, and of the whole GPU with the operations on either side) and host time
before the first GPU operation of each phase.

    mpirun -n 4 python3 experiments/trace_dist.py --shape 4096x65536x16x16x128:fp16 \\
        --algorithm lvx --out /tmp/trace
    mpirun -n 2 python3 experiments/trace_dist.py --shape 1024x131072x16x16x128:fp16 \\
        --transport mpi-direct,nccl --timed 10 --out /tmp/trace

Calls are made as bench_dist.py times them: a barrier and a device sync before the
forward and before the backward. Per transport: --warmup calls, then --timed calls
without the profiler (rank 0 prints the medians over every rank's calls), then --calls
calls under it. Writes one gzipped Chrome trace per transport and rank
(``trace_<algorithm>_<transport>_P<P>_rank<r>.json.gz``: chrome://tracing or Perfetto)
and prints the summary; nothing here is a timed test. With LVX_TRANSPORT_TRACE=1 the
MPI transports also print each transfer's host milestones on stderr.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import statistics
import time

import torch
from mpi4py import MPI

import lvxattn
from bench_dist import make_inputs, parse_shape, sync
from common import new_results_path
from lvxattn.devices import pick_device


def busy_union(intervals):
    """Total length of the union of [start, end) intervals, and the gaps between them."""
    total, gaps, cur_s, cur_e = 0.0, [], None, None
    for s, e in sorted(intervals):
        if cur_e is None:
            cur_s, cur_e = s, e
        elif s > cur_e:
            total += cur_e - cur_s
            gaps.append((cur_e, s))
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total, gaps


def kind_of(name: str) -> str:
    n = name.lower()
    for key in ("attend_bwd", "attend_fwd", "combine", "nccl", "fill", "convert", "row_dot", "merge",
                "add", "memcpy", "memset"):
        if key in n:
            return key
    return "other"


def gpu_gaps(inside, gap_us):
    """The whole GPU's idle gaps longer than gap_us (us) among events sorted by start:
    (length, the operation before, the operation after)."""
    gaps, cur_e, prev = [], None, None
    for g in inside:
        s, e = g["ts"], g["ts"] + g["dur"]
        if cur_e is not None and s - cur_e > gap_us:
            gaps.append((s - cur_e, prev, g["name"]))
        if cur_e is None or e > cur_e:
            cur_e, prev = e, g["name"]
    return gaps


def summarize(events, r, gap_us):
    phases = [e for e in events if e.get("ph") == "X" and e.get("name") in ("lvx_forward", "lvx_backward")
              and e.get("cat") == "user_annotation"]
    gpu = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                 key=lambda g: g["ts"])
    lines = []
    for ph in phases:
        s, e = ph["ts"], ph["ts"] + ph["dur"]
        inside = [g for g in gpu if s <= g["ts"] <= e]
        by_stream = collections.defaultdict(list)
        for g in inside:
            by_stream[g["args"].get("stream", -1)].append((g["ts"], g["ts"] + g["dur"]))
        first = min((g["ts"] for g in inside), default=e)
        last = max((g["ts"] + g["dur"] for g in inside), default=s)
        by_kind = collections.Counter()
        count = collections.Counter()
        for g in inside:
            by_kind[kind_of(g["name"])] += g["dur"]
            count[kind_of(g["name"])] += 1
        busy, _ = busy_union([(g["ts"], g["ts"] + g["dur"]) for g in inside])
        lines.append(f"  rank {r} {ph['name']}: host span {ph['dur'] / 1e3:.3f} ms, host before first GPU op "
                     f"{(first - s) / 1e3:.3f} ms, after last {(e - last) / 1e3:.3f} ms, GPU busy {busy / 1e3:.3f} ms")
        for stream, iv in sorted(by_stream.items(), key=lambda x: str(x[0])):
            sbusy, gaps = busy_union(iv)
            big = sorted(gaps, key=lambda g: g[0] - g[1])[:5]
            lines.append(f"    stream {stream}: {len(iv)} ops, busy {sbusy / 1e3:.3f} ms, "
                         f"{len(gaps)} gaps totalling {sum(b - a for a, b in gaps) / 1e3:.3f} ms; largest (us): "
                         + ", ".join(f"{b - a:.0f}@+{(a - s) / 1e3:.2f}ms" for a, b in big))
        lines.append("    kernel ms by kind: " + ", ".join(f"{k} {v / 1e3:.3f} ({count[k]})"
                                                          for k, v in by_kind.most_common()))
        gaps = gpu_gaps(inside, gap_us)
        lines.append(f"    whole GPU idle > {gap_us:.0f} us: {len(gaps)} gaps, {sum(g[0] for g in gaps):.0f} us")
        lines += [f"      {g:6.0f} us after {a[:60]!r} before {b[:60]!r}" for g, a, b in gaps]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=parse_shape, default=parse_shape("4096x65536x16x16x128:fp16"),
                    help="LqxLkvxHqxHkvxD:dtype (global lengths)")
    ap.add_argument("--algorithm", default="lvx")
    ap.add_argument("--transport", default="auto", help="comma-separated: auto, mpi, nccl, mpi-direct, mpi-staged")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: to try the script")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--timed", type=int, default=0, help="calls timed without the profiler (medians printed)")
    ap.add_argument("--calls", type=int, default=2, help="calls under the profiler")
    ap.add_argument("--gap-us", type=float, default=15.0, help="whole-GPU idle gaps longer than this are listed")
    ap.add_argument("--out", help="folder of the traces (default: a new one under experiments/results/new/)")
    args = ap.parse_args()

    comm = MPI.COMM_WORLD
    P, r = comm.size, comm.rank
    device = pick_device(args.device, comm)
    args.out = args.out or comm.bcast(new_results_path("trace", ext="") if r == 0 else None, root=0)
    os.makedirs(args.out, exist_ok=True)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)

    for transport in args.transport.split(","):
        q, k, v, do = make_inputs(device, args.shape, P, r)

        def call():
            q.grad = k.grad = v.grad = None
            comm.Barrier()
            sync(device)
            t0 = time.perf_counter()
            with torch.profiler.record_function("lvx_forward"):
                o = lvxattn.cross_attention(q, k, v, comm=comm, algorithm=args.algorithm, transport=transport)
                sync(device)
            t1 = time.perf_counter()
            comm.Barrier()
            sync(device)
            t2 = time.perf_counter()
            with torch.profiler.record_function("lvx_backward"):
                o.backward(do)
                sync(device)
            t3 = time.perf_counter()
            return t1 - t0, t3 - t2

        try:
            for _ in range(args.warmup):
                call()
        except (RuntimeError, ValueError) as e:  # a transport this communicator cannot run: every rank alike
            if r == 0:
                print(f"{transport}: skipped ({e})", flush=True)
            continue
        timed = comm.gather([call() for _ in range(args.timed)], root=0)
        stats = lvxattn.last_stats()
        walls = []
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(args.calls):
                walls.append(call())
        path = os.path.join(args.out, f"trace_{args.algorithm}_{transport}_P{P}_rank{r}.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
        with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
            g.write(f.read())
        os.remove(path)

        lines = [f"rank {r}: P={P} {args.algorithm} over {transport} (path {stats.get('path')}, "
                 f"form {stats.get('lvx_form')}) shape={args.shape} profiled fwd/bwd ms per call: "
                 + ", ".join(f"{a * 1e3:.3f}/{b * 1e3:.3f}" for a, b in walls)]
        lines += summarize(events, r, args.gap_us)
        text = "\n".join(lines)
        if r == 0 and args.timed:
            f = [c[0] for rank_calls in timed for c in rank_calls]
            b = [c[1] for rank_calls in timed for c in rank_calls]
            print(f"{transport}: {args.timed} calls without the profiler, every rank's: forward median "
                  f"{statistics.median(f) * 1e3:.3f} ms (min {min(f) * 1e3:.3f}), backward median "
                  f"{statistics.median(b) * 1e3:.3f} ms (min {min(b) * 1e3:.3f})", flush=True)
        for rank_text in comm.gather(text, root=0) or []:
            print(rank_text, flush=True)


if __name__ == "__main__":
    main()
