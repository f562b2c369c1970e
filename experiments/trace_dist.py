"""Where one distributed forward+backward spends its GPU time: a torch.profiler
(CUPTI) trace of a few calls, reduced per rank to kernel time by kind, idle gaps on
the compute stream, and host time before the first kernel of each phase.

    mpirun -n 4 python3 experiments/trace_dist.py --shape 4096x65536x16x16x128:fp16 \
        --algorithm lvx --out /tmp/trace

Writes one Chrome trace per rank (open in chrome://tracing or Perfetto) and prints
the summary; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=parse_shape, default=parse_shape("4096x65536x16x16x128:fp16"),
                    help="LqxLkvxHqxHkvxD:dtype (global lengths)")
    ap.add_argument("--algorithm", default="lvx")
    ap.add_argument("--transport", default="auto")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--out", help="folder of the traces (default: a new one under experiments/results/new/)")
    args = ap.parse_args()

    comm = MPI.COMM_WORLD
    P, r = comm.size, comm.rank
    device = pick_device("cuda", comm)
    args.out = args.out or comm.bcast(new_results_path("trace", ext="") if r == 0 else None, root=0)
    q, k, v, do = make_inputs(device, args.shape, P, r)

    def call():
        q.grad = k.grad = v.grad = None
        comm.Barrier()
        sync(device)
        t0 = time.perf_counter()
        with torch.profiler.record_function("lvx_forward"):
            o = lvxattn.cross_attention(q, k, v, comm=comm, algorithm=args.algorithm, transport=args.transport)
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

    for _ in range(args.warmup):
        call()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    walls = []
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(args.calls):
            walls.append(call())
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"trace_{args.algorithm}_P{P}_rank{r}.json")
    prof.export_chrome_trace(path)

    with open(path) as f:
        events = json.load(f)["traceEvents"]
    phases = [e for e in events if e.get("ph") == "X" and e.get("name") in ("lvx_forward", "lvx_backward")
              and e.get("cat") == "user_annotation"]
    gpu = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    lines = [f"rank {r}: P={P} {args.algorithm} shape={args.shape} wall fwd/bwd ms per call: "
             + ", ".join(f"{a * 1e3:.3f}/{b * 1e3:.3f}" for a, b in walls)]
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
        lines.append(f"  {ph['name']}: host span {ph['dur'] / 1e3:.3f} ms, host before first GPU op "
                     f"{(first - s) / 1e3:.3f} ms, after last {(e - last) / 1e3:.3f} ms")
        for stream, iv in sorted(by_stream.items(), key=lambda x: str(x[0])):
            busy, gaps = busy_union(iv)
            big = sorted(gaps, key=lambda g: g[0] - g[1])[:5]
            lines.append(f"    stream {stream}: {len(iv)} ops, busy {busy / 1e3:.3f} ms, "
                         f"{len(gaps)} gaps totalling {sum(b - a for a, b in gaps) / 1e3:.3f} ms; largest (us): "
                         + ", ".join(f"{b - a:.0f}@+{(a - s) / 1e3:.2f}ms" for a, b in big))
        lines.append("    kernel ms by kind: " + ", ".join(f"{k} {v / 1e3:.3f} ({count[k]})"
                                                          for k, v in by_kind.most_common()))
    text = "\n".join(lines)
    for rank_text in comm.gather(text, root=0) or []:
        print(rank_text, flush=True)


if __name__ == "__main__":
    main()
