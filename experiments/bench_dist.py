"""Distributed benchmark: algorithms × shapes × transports at the communicator's size.

    mpirun -n 4 python experiments/bench_dist.py --device cuda --shapes 4096x65536x16x16x128:fp16 \\
        --algorithms lvx,ring --transport nccl,mpi-direct,mpi-staged --csv experiments/results/dist_gpu.csv

Every rank holds an even contiguous shard of both sequences (``lvxattn.sharding``:
the first ranks one row more). Each (shape,
algorithm, transport) is warmed up, then forward and backward are timed separately
over --repeats iterations (a barrier and a device sync before each; the time of an
iteration is the slowest rank's). Rank 0 prints medians with bytes sent, compute
and blocked time per rank (from lvxattn.last_stats), the rate of a ring step (the
largest bytes a rank sends in a phase over the phase's time: bytes per step over
time per step), and appends CSV rows with the device, transport and path that ran,
P, date and git sha. A transport the planner refuses on this communicator (NCCL for
ranks sharing a GPU, mpi-direct without a CUDA-aware MPI) is skipped with its reason.
With several transports, the end of the table compares them per shape and algorithm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(__file__))
import lvxattn  # noqa: E402
from lvxattn.devices import pick_device  # noqa: E402
from lvxattn.sharding import even_rows  # noqa: E402
from common import metadata, new_results_path, print_table, refuse_committed, write_csv  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_shape(text):
    """LqxLkvxHqxHkvxD[:dtype] (global lengths)."""
    dims, _, dtype = text.partition(":")
    lq, lkv, hq, hkv, d = (int(x) for x in dims.split("x"))
    return lq, lkv, hq, hkv, d, dtype or "fp32"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_inputs(device, shape, P, r):
    """This rank's even shard of random q, k, v (leaves needing grad) and dO."""
    lq, lkv, hq, hkv, d, dtype_name = shape
    dtype = DTYPES[dtype_name]
    q0, q1 = even_rows(lq, P, r)
    k0, k1 = even_rows(lkv, P, r)
    gen = torch.Generator(device=device).manual_seed(1 + r)
    q = torch.randn(1, q1 - q0, hq, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(1, k1 - k0, hkv, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(1, k1 - k0, hkv, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    do = torch.randn(1, q1 - q0, hq, d, device=device, dtype=dtype, generator=gen)
    return q, k, v, do


def bench_one(comm, device, algorithm, transport, shape, repeats, warmup):
    q, k, v, do = make_inputs(device, shape, comm.size, comm.rank)
    fwd, bwd, stats = [], [], None
    for it in range(warmup + repeats):
        q.grad = k.grad = v.grad = None
        comm.Barrier()
        sync(device)
        t0 = time.perf_counter()
        o = lvxattn.cross_attention(q, k, v, comm=comm, algorithm=algorithm, transport=transport)
        sync(device)
        t1 = time.perf_counter()
        f_stats = lvxattn.last_stats()["forward"]
        comm.Barrier()
        sync(device)
        t2 = time.perf_counter()
        o.backward(do)
        sync(device)
        t3 = time.perf_counter()
        if it >= warmup:
            fwd.append(comm.allreduce(t1 - t0, op=MPI.MAX))
            bwd.append(comm.allreduce(t3 - t2, op=MPI.MAX))
            stats = lvxattn.last_stats()
            stats["forward"] = f_stats
    return fwd, bwd, stats


def compare(rows):
    """Per (shape, algorithm): forward+backward time of each path relative to mpi-direct."""
    by = {}
    for r in rows:
        by.setdefault((r["Lq"], r["Lkv"], r["Hq"], r["Hkv"], r["dtype"], r["algorithm"]), {})[r["path"]] = r["fwdbwd_ms"]
    out = []
    for key, paths in by.items():
        if "mpi-direct" not in paths or len(paths) < 2:
            continue
        d = paths["mpi-direct"]
        line = {"shape": "{}x{}x{}x{}:{}".format(*key[:5]), "algorithm": key[5], "mpi-direct_ms": d}
        for other in ("mpi-staged", "nccl"):
            if other in paths:
                line[f"{other}_ms"] = paths[other]
                line[f"{other}/direct"] = paths[other] / d
        out.append(line)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--algorithms", default="lvx,ring,ulysses",
                    help="comma-separated; lvx/FORM forces lvx's form: ring, gather, overlap or single "
                         "(LVX_LVX_GATHER)")
    ap.add_argument("--transport", default="auto", help="comma-separated: auto, mpi, nccl, mpi-direct, mpi-staged")
    ap.add_argument("--shapes", default="512x32768x8x8x64:fp32",
                    help="comma-separated LqxLkvxHqxHkvxD[:dtype], global lengths")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per rank (0: torch's default)")
    ap.add_argument("--csv", help="output CSV, appended to (default: a new file under experiments/results/new/)")
    ap.add_argument("--tag", default="", help="free text stored in the CSV (e.g. the machine kind)")
    args = ap.parse_args()

    comm = MPI.COMM_WORLD
    P, rank = comm.size, comm.rank
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device, comm)
    refuse_committed(args.csv)   # on every rank, before any collective
    meta = metadata(args.device)
    rows = []
    for shape_text in args.shapes.split(","):
        shape = parse_shape(shape_text)
        lq, lkv, hq, hkv, d, dtype_name = shape
        for requested in args.algorithms.split(","):
            algorithm, _, form = requested.partition("/")
            if algorithm == "ulysses" and (hq % P or hkv % P):
                continue
            for transport in args.transport.split(","):
                if form:
                    os.environ["LVX_LVX_GATHER"] = form
                try:
                    fwd, bwd, stats = bench_one(comm, device, algorithm, transport, shape, args.repeats, args.warmup)
                except lvxattn.LvxError as e:  # the planner refuses it the same on every rank
                    if rank == 0:
                        print(f"skipped {transport} for {shape_text} {requested}: {e}")
                    continue
                finally:
                    if form:
                        del os.environ["LVX_LVX_GATHER"]
                rows.append(measure_row(comm, meta, args, P, shape, stats, fwd, bwd))
    if rank == 0:
        print(f"{meta['device']} ×{P}, git {meta['git_sha']}")
        print_table(rows, ["P", "path", "algorithm", "lvx_form", "dtype", "Lq", "Lkv", "Hq", "Hkv", "D", "fwd_ms",
                           "bwd_ms", "fwdbwd_ms", "max_rank_mib_sent", "fwd_step_GBps", "bwd_step_GBps",
                           "fwd_blocked_ms", "bwd_blocked_ms", "blocked_frac", "tflops_total"])
        ratios = compare(rows)
        if ratios:
            print("forward+backward relative to mpi-direct (> 1: mpi-direct is faster)")
            print_table(ratios, list(dict.fromkeys(k for r in ratios for k in r)))
        path = args.csv or new_results_path(f"dist_{args.device}")
        write_csv(path, rows)
        print(f"wrote {path}")


def measure_row(comm, meta, args, P, shape, stats, fwd, bwd):
    """One CSV row: medians, the slowest rank's bytes, compute and blocked time, and the
    rate of a ring step per phase (a rank's bytes sent in the phase over its time)."""
    lq, lkv, hq, hkv, d, dtype_name = shape
    f, b = stats["forward"], stats["backward"]
    sent = comm.allreduce(f["bytes_sent"] + b["bytes_sent"], op=MPI.MAX)
    sent_f = comm.allreduce(f["bytes_sent"], op=MPI.MAX)
    sent_b = comm.allreduce(b["bytes_sent"], op=MPI.MAX)
    blocked_f = comm.allreduce(f["blocked_s"], op=MPI.MAX)
    blocked_b = comm.allreduce(b["blocked_s"], op=MPI.MAX)
    compute_f = comm.allreduce(f["compute_s"], op=MPI.MAX)
    compute_b = comm.allreduce(b["compute_s"], op=MPI.MAX)
    fm, bm = statistics.median(fwd), statistics.median(bwd)
    flops = 4.0 * hq * lq * lkv * d
    return {
        **meta, "tag": args.tag, "P": P, "device_kind": args.device,
        "transport": stats["transport"], "path": stats.get("path", ""), "algorithm": stats["algorithm"],
        "lvx_form": stats.get("lvx_form", ""),
        "Lq": lq, "Lkv": lkv, "Hq": hq, "Hkv": hkv, "D": d, "dtype": dtype_name,
        "fwd_ms": fm * 1e3, "bwd_ms": bm * 1e3, "fwdbwd_ms": (fm + bm) * 1e3,
        "fwd_blocked_ms": blocked_f * 1e3, "bwd_blocked_ms": blocked_b * 1e3,
        "fwd_compute_ms": compute_f * 1e3, "bwd_compute_ms": compute_b * 1e3,
        "blocked_frac": (blocked_f + blocked_b) / max(fm + bm, 1e-12),
        "max_rank_mib_sent": sent / 2**20,
        "fwd_steps": f.get("steps", 0), "bwd_steps": b.get("steps", 0),
        "fwd_step_GBps": sent_f / max(fm, 1e-12) / 1e9, "bwd_step_GBps": sent_b / max(bm, 1e-12) / 1e9,
        "tflops_total": 3.5 * flops / (fm + bm) / 1e12,
        "repeats": args.repeats,
    }


if __name__ == "__main__":
    main()
