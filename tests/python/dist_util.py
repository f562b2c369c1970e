"""Helpers for the MPI tests: sub-communicators of every size, uneven splits,
and slicing a global problem into one rank's shard."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def sub_comm(world, size):
    """The first `size` ranks of `world` as a communicator (None on the others)."""
    color = 0 if world.rank < size else None
    from mpi4py import MPI
    comm = world.Split(MPI.UNDEFINED if color is None else 0, world.rank)
    try:
        yield None if comm == MPI.COMM_NULL else comm
    finally:
        if comm != MPI.COMM_NULL:
            comm.Free()
        world.Barrier()


def uneven_split(n, P, zero=None, salt=0):
    """Row counts per rank summing to n, unequal, with rank `zero` owning none."""
    weights = [0 if r == zero else 1 + (r * 3 + salt) % 4 for r in range(P)]
    if sum(weights) == 0:
        weights[0] = 1
    counts = [n * w // sum(weights) for w in weights]
    r = P - 1
    while sum(counts) < n:
        if weights[r]:
            counts[r] += 1
        r = (r - 1) % P
    return counts


def shard(x, counts, rank, dim=1):
    start = sum(counts[:rank])
    return x.narrow(dim, start, counts[rank]).contiguous()


def gather_rows(comm, x, dim=1):
    parts = comm.allgather(x.detach().cpu())
    return torch.cat(parts, dim=dim)
