"""Where the peak device memory of one training step of the layer stack goes.

Runs one forward+backward of the stack of ``bench_recompute.py`` (same flags) at one
visual length, with torch's allocator history on, then replays the history: it
prints the peak, and the blocks alive at the peak grouped by the source line that
allocated them (the innermost frame in this project's code). Memory the library
allocates itself (cudaMalloc: ring workspaces and accumulators) is not torch's and
is not in these numbers: it is printed apart (the context's ``buffer_bytes``).

    python experiments/profile_memory.py --mode no-recompute --length 262144
    mpirun -n 4 python experiments/profile_memory.py --mode recompute --length 262144
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import torch
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_recompute  # noqa: E402  (same model, flags and step)

OURS = ("lvxattn", "experiments")


def site_of(frames: list[dict]) -> str:
    """The innermost frame in the package (else in experiments/), else the innermost frame."""
    for part in OURS:
        for f in frames:
            if part in f.get("filename", ""):
                return f"{os.path.basename(f['filename'])}:{f['line']} {f['name']}"
    if frames:
        f = frames[0]
        return f"{os.path.basename(f.get('filename', '?'))}:{f.get('line', 0)} {f.get('name', '?')}"
    return "(no python frame)"


def peak_breakdown(snapshot: dict, device: int) -> tuple[int, dict[str, int], int]:
    """(peak bytes, bytes alive at the peak per allocation site, baseline bytes) from the trace.

    Blocks alive when the trace started are counted from the snapshot's segments."""
    live: dict[int, tuple[int, str]] = {}
    trace = snapshot["device_traces"][device]
    traced = {e["addr"] for e in trace if e["action"] == "alloc"}
    for seg in snapshot["segments"]:
        if seg.get("device", device) != device:
            continue
        for block in seg["blocks"]:
            if block["state"] == "active_allocated" and block["address"] not in traced:
                live[block["address"]] = (block["size"], "(alive before the step)")
    baseline = sum(s for s, _ in live.values())
    total, peak, at_peak = baseline, baseline, dict(live)
    for e in trace:
        if e["action"] == "alloc":
            live[e["addr"]] = (e["size"], site_of(e.get("frames", [])))
            total += e["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif e["action"] == "free_requested" and e["addr"] in live:
            total -= live.pop(e["addr"])[0]
    groups: dict[str, int] = defaultdict(int)
    for size, site in at_peak.values():
        groups[site] += size
    return peak, dict(groups), baseline


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("recompute", "no-recompute"), default="no-recompute")
    p.add_argument("--length", type=int, default=262144, help="visual tokens per rank")
    p.add_argument("--top", type=int, default=15)
    args, rest = p.parse_known_args(argv)
    bargs = bench_recompute.parse_args(rest)
    comm = MPI.COMM_WORLD
    device = bench_recompute.devices.pick_device("cuda", comm)
    bench = bench_recompute.Bench(bargs, comm, device)
    model = bench.build(recompute=(args.mode == "recompute"))
    bench.step(model, min(args.length, 4096))  # warm-up: cuBLAS handles, library contexts
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    step_s, peak_reported, saved = bench.step(model, args.length)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak, groups, baseline = peak_breakdown(snapshot, device.index or 0)
    library = comm.allreduce(bench_recompute.lvxattn.context_for(comm, device).buffer_bytes, op=MPI.MAX)
    if comm.rank == 0:
        gb = 2.0**30
        tokens = args.length
        print(f"{args.mode}, {tokens} visual tokens/rank, {comm.size} rank(s): step {step_s:.3f} s")
        print(f"  torch peak (allocator) {peak_reported / gb:.2f} GiB, replayed {peak / gb:.2f} GiB "
              f"({peak / tokens / 1024:.1f} KiB/token); saved for backward {saved / gb:.2f} GiB "
              f"({saved / tokens / 1024:.1f} KiB/token); alive before the step {baseline / gb:.2f} GiB; "
              f"library buffers {library / gb:.2f} GiB")
        print(f"  alive at the peak, by allocation site (top {args.top}):")
        for site, size in sorted(groups.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"    {size / gb:8.2f} GiB  {size / tokens / 1024:7.1f} KiB/token  {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
