"""An installed lvxattn, checked from outside the source tree: a 2-rank forward and
backward (uneven shards, GQA, an interleaved-image mask) against the float64
reference, on the installation the running Python imports.

    mpirun -n 2 <venv>/bin/python tests/install/check_install.py [--expect-prefix <venv>] [--expect-transport nccl]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from mpi4py import MPI

import lvxattn
from lvxattn import devices, masks, sharding
from lvxattn.reference import attention, rel_err


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--expect-prefix", help="lvxattn must be imported from below this folder")
    ap.add_argument("--expect-transport", action="append", default=[], help="must be in available_transports()")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank, P = comm.rank, comm.size
    where = os.path.realpath(lvxattn.__file__)
    if args.expect_prefix and not where.startswith(os.path.realpath(args.expect_prefix) + os.sep):
        raise SystemExit(f"lvxattn was imported from {where}, not from below {args.expect_prefix}")
    missing = [t for t in args.expect_transport if t not in lvxattn.available_transports()]
    if missing:
        raise SystemExit(f"transports {missing} missing: this build has {lvxattn.available_transports()}")
    problems = lvxattn.build_info()["problems"]
    if problems:
        raise SystemExit("python -m lvxattn info reports: " + "; ".join(problems))

    device = devices.pick_device(args.device, comm) if args.device == "cuda" else torch.device("cpu")
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    B, Lq, Lkv, Hq, Hkv, D = 2, 37, 301, 8, 2, 64
    gen = torch.Generator().manual_seed(0)
    q, do = (torch.randn(B, Lq, Hq, D, generator=gen) for _ in range(2))
    k, v = (torch.randn(B, Lkv, Hkv, D, generator=gen) for _ in range(2))
    ranges = masks.interleaved_ranges(B, Lq, Lkv, num_images=4, style="all_previous")
    q_counts = [Lq - 10 * (P - 1)] + [10] * (P - 1)           # uneven on purpose
    kv_counts = sharding.even_counts(Lkv, P)
    q0, kv0 = sum(q_counts[:rank]), sum(kv_counts[:rank])
    ql = q[:, q0:q0 + q_counts[rank]].to(device, dtype).requires_grad_()
    kl = k[:, kv0:kv0 + kv_counts[rank]].to(device, dtype).requires_grad_()
    vl = v[:, kv0:kv0 + kv_counts[rank]].to(device, dtype).requires_grad_()
    o = lvxattn.cross_attention(ql, kl, vl, comm=comm, algorithm="lvx",
                                q_ranges=ranges[:, q0:q0 + q_counts[rank]].to(device))
    o.backward(do[:, q0:q0 + q_counts[rank]].to(device, dtype))

    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    o_ref, _ = attention(qr, kr, vr, ranges)
    o_ref.backward(do.double())
    gather = lambda t: torch.cat(comm.allgather(t.detach().cpu()), dim=1)  # noqa: E731
    errors = {"o": rel_err(gather(o), o_ref), "dq": rel_err(gather(ql.grad), qr.grad),
              "dk": rel_err(gather(kl.grad), kr.grad), "dv": rel_err(gather(vl.grad), vr.grad)}
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    if rank == 0:
        print(f"lvxattn from {os.path.dirname(where)}: {P} ranks, transports {lvxattn.available_transports()}, "
              + ", ".join(f"{k} {e:.1e}" for k, e in errors.items()) + f" (tolerance {tol:g})")
    bad = {k: e for k, e in errors.items() if not e < tol}
    if bad:
        raise SystemExit(f"rank {rank}: errors above {tol}: {bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
