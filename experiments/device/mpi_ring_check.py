"""Does this MPI move CUDA buffers? Every rank names the MPI and UCX libraries it loaded and
what lvxattn finds (lvxattn.mpi_device_support), then sends a 64 MiB CUDA tensor to the next
rank and receives the previous rank's (MPI_Isend/MPI_Irecv on device pointers through
mpi4py), checks every byte and prints the best of five exchanges in GB/s; then one lvxattn
call over transport "mpi" shows the path the planner took and its probe's outcome.

    mpirun --mca pml ucx -n 2 python experiments/device/mpi_ring_check.py [--mib 64]

The last line of rank 0 is "SANITY access=<none|evidence|yes> data_ok=<0|1> path=<...>".
Exits non-zero when any rank received altered data.
"""

import argparse
import os
import sys

import torch
from mpi4py import MPI

import lvxattn


def loaded_libraries():
    """The libmpi and UCX libraries mapped into this process."""
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if any(k in path for k in ("libmpi.so", "libucp.so", "libuct_cuda", "libmpi_gtl")):
                found.add(path)
    return sorted(found)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=64)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    r, p = comm.rank, comm.size
    dev = lvxattn.devices.pick_device("cuda", comm)
    support = lvxattn.mpi_device_support()
    lib = MPI.Get_library_version().splitlines()[0]
    print(f"rank {r}/{p} {dev}: {lib}\n  mpi4py {os.path.dirname(MPI.__file__)}\n  loaded {loaded_libraries()}\n"
          f"  lvxattn: {support}", flush=True)
    comm.Barrier()

    n = args.mib << 20
    nxt, prv = (r + 1) % p, (r - 1) % p
    send = torch.full((n,), 17 + r, dtype=torch.uint8, device=dev)
    recv = torch.zeros(n, dtype=torch.uint8, device=dev)
    torch.cuda.synchronize(dev)
    best = float("inf")
    for it in range(6):
        comm.Barrier()
        t0 = MPI.Wtime()
        reqs = [comm.Irecv([recv, MPI.BYTE], source=prv, tag=7), comm.Isend([send, MPI.BYTE], dest=nxt, tag=7)]
        MPI.Request.Waitall(reqs)
        t = MPI.Wtime() - t0
        if it:
            best = min(best, t)
    bad = int((recv != (17 + prv) % 256).sum().item())
    print(f"rank {r}/{p} bytes={n} bad={bad} best {best * 1e3:.3f} ms {n / best / 1e9:.1f} GB/s", flush=True)
    all_ok = comm.allreduce(int(bad == 0), op=MPI.MIN)

    # The library's own choice over "mpi": mpi-direct where the probe (or the variable) says so.
    q = torch.randn(1, 16, 4, 64, device=dev, dtype=torch.float16)
    k = torch.randn(1, 64, 4, 64, device=dev, dtype=torch.float16)
    lvxattn.cross_attention(q, k, k, comm=comm, transport="mpi")
    path = lvxattn.last_stats()["path"]
    probe = lvxattn.mpi_device_support(comm)["probe"]
    accesses = comm.allgather(support["access"])
    if r == 0:
        print(f"lvxattn transport='mpi': path {path}, probe '{probe}'")
        access = "none" if "none" in accesses else ("evidence" if "evidence" in accesses else "yes")
        print(f"SANITY access={access} data_ok={all_ok} path={path}", flush=True)
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
