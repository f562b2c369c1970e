"""Helpers for the MPI tests: sub-communicators of every size, uneven splits,
and slicing a global problem into one rank's shard."""

from __future__ import annotations

import contextlib
import os

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


def errors_against_reference(comm, global_inputs, ranges, o, lse, local_inputs):
    """Relative errors of the gathered o, lse, dq, dk, dv of a distributed call
    against the float64 reference of the whole problem.

    global_inputs: (q, k, v, do) of the whole problem; local_inputs: this rank's
    (q, k, v) shards after backward, holding their gradients."""
    from lvxattn.reference import attention, rel_err
    q, k, v, do = global_inputs
    ql, kl, vl = local_inputs
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    o_ref, lse_ref = attention(qr, kr, vr, ranges)
    o_ref.backward(do.double())
    return {
        "o": rel_err(gather_rows(comm, o), o_ref),
        "lse": rel_err(gather_rows(comm, lse, dim=2), lse_ref),
        "dq": rel_err(gather_rows(comm, ql.grad), qr.grad),
        "dk": rel_err(gather_rows(comm, kl.grad), kr.grad),
        "dv": rel_err(gather_rows(comm, vl.grad), vr.grad),
    }


@contextlib.contextmanager
def lvx_form(form):
    """Forces lvx's form (LVX_LVX_GATHER: ring, gather, overlap or single) on every rank; "" keeps auto."""
    if not form:
        yield
        return
    before = os.environ.get("LVX_LVX_GATHER")
    os.environ["LVX_LVX_GATHER"] = form
    try:
        yield
    finally:
        if before is None:
            del os.environ["LVX_LVX_GATHER"]
        else:
            os.environ["LVX_LVX_GATHER"] = before
