"""lvx vs ring vs ulysses on one cross-attention shape, on the CPU under mpirun.

    mpirun -n 4 python examples/compare_algorithms.py [--lq 256 --lkv 16384 ...]

Every rank builds the same global problem and keeps its shard (even split, the
first ranks one row more); each algorithm's forward+backward is checked against
the float64 reference of the whole problem (``lvxattn.reference``) and timed; rank 0
prints a table of times, bytes moved and blocked time, what each column means, and
which algorithm was fastest. Times on a machine with fewer cores than ranks
(``mpirun --oversubscribe``) measure the cores' sharing as much as the algorithms.
"""

import argparse
import os
import time

import torch
from mpi4py import MPI

import lvxattn
from lvxattn.reference import attention, rel_err
from lvxattn.sharding import even_rows

CORES = os.cpu_count() or 1

COLUMNS = (
    ("fwd+bwd ms", "one forward and backward, median over the repeats, as rank 0 saw it"),
    ("fwd ms / bwd ms", "the library's own time for each phase (last repeat)"),
    ("MiB sent", "bytes all ranks sent in one forward+backward"),
    ("blocked ms", "the longest time a rank waited for data it could not hide behind compute"),
    ("rel err", "||ours - float64 reference|| / ||reference||, worst of O, dQ, dK, dV"),
)


def reference(q, k, v, do):
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    o, _ = attention(qd, kd, vd)
    o.backward(do.double())
    return o.detach(), qd.grad, kd.grad, vd.grad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lq", type=int, default=256)
    ap.add_argument("--lkv", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    P, rank = comm.size, comm.rank
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    B, Lq, Lkv, Hq, Hkv, D = 1, args.lq, args.lkv, args.heads, args.kv_heads, args.head_dim
    q = torch.randn(B, Lq, Hq, D, generator=gen)
    k = torch.randn(B, Lkv, Hkv, D, generator=gen)
    v = torch.randn(B, Lkv, Hkv, D, generator=gen)
    do = torch.randn(B, Lq, Hq, D, generator=gen)
    qs, qe = even_rows(Lq, P, rank)
    ks, ke = even_rows(Lkv, P, rank)
    ref = reference(q, k, v, do) if rank == 0 else None
    if rank == 0:
        print(f"cross-attention B={B} Lq={Lq} Lkv={Lkv} Hq/Hkv={Hq}/{Hkv} D={D} fp32, {P} ranks on the CPU")

    rows = []
    for algorithm in ("lvx", "ring", "ulysses"):
        if algorithm == "ulysses" and (Hq % P or Hkv % P):
            continue
        times = []
        for _ in range(args.repeats):
            ql = q[:, qs:qe].clone().requires_grad_()
            kl = k[:, ks:ke].clone().requires_grad_()
            vl = v[:, ks:ke].clone().requires_grad_()
            comm.Barrier()
            t0 = time.perf_counter()
            o = lvxattn.cross_attention(ql, kl, vl, comm=comm, algorithm=algorithm)
            o.backward(do[:, qs:qe])
            times.append(time.perf_counter() - t0)
        stats = lvxattn.last_stats()
        got = [torch.cat(comm.gather(t.detach(), root=0), 1) if rank == 0 else comm.gather(t.detach(), root=0)
               for t in (o, ql.grad, kl.grad, vl.grad)]
        sent = comm.reduce(stats["forward"]["bytes_sent"] + stats["backward"]["bytes_sent"], root=0)  # sum
        blocked = comm.reduce(stats["forward"]["blocked_s"] + stats["backward"]["blocked_s"], op=MPI.MAX, root=0)
        if rank == 0:
            err = max(rel_err(a, b) for a, b in zip(got, ref))
            rows.append((algorithm, sorted(times)[len(times) // 2] * 1e3, stats["forward"]["total_s"] * 1e3,
                         stats["backward"]["total_s"] * 1e3, sent / 2**20, blocked * 1e3, err))
    if rank == 0:
        print(f"{'algorithm':<10}{'fwd+bwd ms':>12}{'fwd ms':>10}{'bwd ms':>10}{'MiB sent':>11}"
              f"{'blocked ms':>12}{'rel err':>10}  check")
        for name, t, f, b, mib, blk, err in rows:
            print(f"{name:<10}{t:>12.1f}{f:>10.1f}{b:>10.1f}{mib:>11.2f}{blk:>12.1f}{err:>10.1e}  "
                  f"{'ok' if err < 1e-4 else 'FAIL'}")
        width = max(len(name) for name, _ in COLUMNS)
        for name, meaning in COLUMNS:
            print(f"  {name.rjust(width)}: {meaning}")
        if len(rows) > 1:
            ranked = sorted(rows, key=lambda r: r[1])
            best, second = ranked[0], ranked[1]
            ratio = second[1] / best[1]
            verdict = (f"fastest here: {best[0]}, {ratio:.2f}x faster than {second[0]}" if ratio >= 1.02 else
                       f"fastest here: {best[0]} and {second[0]} within 2% of each other (a tie at this size)")
            print(verdict + (" (ranks share cores: see --oversubscribe in the README)" if P > CORES else ""))
            by_bytes = sorted(rows, key=lambda r: r[4])
            least, most = by_bytes[0], by_bytes[-1]
            if least[4] > 0:
                print(f"least data sent: {least[0]}, {most[4] / least[4]:.1f}x less than {most[0]} "
                      "(ranks on one machine copy memory; between machines the bytes cost more time)")
        if any(r[-1] >= 1e-4 for r in rows):
            raise SystemExit("an algorithm disagrees with the reference")


if __name__ == "__main__":
    main()
