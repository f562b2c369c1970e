"""Host time of one cross_attention call, piece by piece, per rank (medians of --calls).

    mpirun -n 2 python experiments/device/call_overhead.py --device cuda --transport nccl,mpi-direct

Times the front door's parts on tiny inputs (so that the device work is negligible):
Python's checks, the problem, the context lookup, the plan (collective: one or two
allgathers), a bare 64-byte MPI allgather for comparison, and whole forward and
forward+backward calls (device-synchronized). Then rank 0 prints the functions with the
most own time over --calls forward+backward calls (cProfile). Used to find the per-call
cost that a stream-ordered transport hides and MPI exposes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

import torch
from mpi4py import MPI

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import lvxattn  # noqa: E402
from lvxattn import api  # noqa: E402
from lvxattn.devices import pick_device  # noqa: E402


def median_us(xs):
    return 1e6 * statistics.median(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--transport", default="auto", help="comma-separated")
    ap.add_argument("--rows", type=int, default=128, help="query and KV rows per rank")
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    device = pick_device(args.device, comm)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = torch.randn(1, args.rows, 2, 64, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(1, args.rows, 2, 64, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(1, args.rows, 2, 64, device=device, dtype=dtype, requires_grad=True)
    do = torch.randn_like(q)
    small, gathered = bytearray(64), bytearray(64 * comm.size)
    for transport in args.transport.split(","):
        parts = {name: [] for name in ("checks", "problem", "context", "plan", "allgather64", "forward", "fwd+bwd")}
        for i in range(args.calls + 5):
            comm.Barrier()
            sync()
            t0 = time.perf_counter()
            qq, kk, vv, rr = api._tensor_checks(q, k, v, None)
            t1 = time.perf_counter()
            problem = api._problem(qq, kk, "lvx", None, rr)
            t2 = time.perf_counter()
            ctx = api.context_for(comm, q.device, transport)
            t3 = time.perf_counter()
            ctx.plan(problem)
            t4 = time.perf_counter()
            comm.Allgather(small, gathered)
            t5 = time.perf_counter()
            comm.Barrier()
            sync()
            t6 = time.perf_counter()
            o = lvxattn.cross_attention(q, k, v, comm=comm, algorithm="lvx", transport=transport)
            sync()
            t7 = time.perf_counter()
            o.backward(do)
            sync()
            t8 = time.perf_counter()
            if i >= 5:
                for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t7 - t6, t8 - t6)):
                    parts[name].append(dt)
        path = lvxattn.last_stats().get("path")
        line = f"rank {comm.rank} {transport} ({path}): " + ", ".join(f"{n} {median_us(v):.1f}" for n, v in parts.items())
        for r in range(comm.size):
            if r == comm.rank:
                print(line + " us", flush=True)
            comm.Barrier()
        prof = cProfile.Profile()
        for _ in range(50):
            comm.Barrier()
            prof.enable()
            o = lvxattn.cross_attention(q, k, v, comm=comm, algorithm="lvx", transport=transport)
            o.backward(do)
            sync()
            prof.disable()
        if comm.rank == 0:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
            print(f"rank 0 {transport}: cProfile of 50 forward+backward calls, by own time\n" + out.getvalue(), flush=True)


if __name__ == "__main__":
    main()
